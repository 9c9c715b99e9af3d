"""Throwaway keys, tokens and certificates for the authentication and TLS tests.

Made with ``cryptography`` and PyJWT at test time; nothing secret is checked in.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.launcher import LOOPBACK_ANY_PORT, Twistd
from twisted_stow.auth.files import entry_with_grant, write_atomically
from twisted_stow.auth.grants import EVERYTHING
from twisted_stow.auth.passwords import hash_password, token_digest

AUDIENCE = "twisted-stow-test"
ISSUER = "https://idp.test"


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: Any) -> bytes:
    data: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def jwks_json(keys: dict[str, Any]) -> str:
    """A JWKS document of the public halves of ``keys`` (kid → private key)."""
    entries = []
    for kid, key in keys.items():
        algorithm = (
            jwt.algorithms.ECAlgorithm
            if isinstance(key, ec.EllipticCurvePrivateKey)
            else jwt.algorithms.RSAAlgorithm
        )
        entry = json.loads(algorithm.to_jwk(key.public_key()))
        entry["kid"] = kid
        entries.append(entry)
    return json.dumps({"keys": entries})


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for the test audience and issuer, one hour left; overrides win."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "jwt-user",
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": now,
        "exp": now + 3600,
        "scope": "openid stow:aet:* stow:workflow:*",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(
    payload: dict[str, Any], key: Any, *, algorithm: str = "ES256", kid: str | None = None
) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it.

    Returns (ca_cert, server_key, server_cert) PEM paths: the client trusts
    the CA, and verifies the server's IP address against the certificate.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "twisted-stow test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec_key()
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, key_path, cert_path = (
        directory / "ca.pem",
        directory / "server.key",
        directory / "server.pem",
    )
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    return ca_path, key_path, cert_path


# What `stow-passwd user --scrypt-log2-n 17` writes: the dearest cost it allows.
DEAR_SCRYPT_N = 2**17


def dear_password_twistd(directory: Path, *, password: bytes, token: bytes) -> Twistd:
    """A started ``twistd -n stow`` on 127.0.0.1 whose users file holds alice with ``password``
    at scrypt n=2^17, and whose tokens file holds ``token`` (both granted everything)."""
    users, tokens = directory / "users.json", directory / "tokens.json"
    alice = {"password": hash_password(password, n=DEAR_SCRYPT_N)}
    write_atomically(users, {"alice": entry_with_grant(alice, EVERYTHING)})
    write_atomically(
        tokens, {"uploader": entry_with_grant({"sha256": token_digest(token)}, EVERYTHING)}
    )
    server = Twistd(
        directory / "store",
        "--listen",
        LOOPBACK_ANY_PORT,
        "--users",
        str(users),
        "--tokens",
        str(tokens),
    )
    server.ports(1)  # started, or stopped and DidNotStart raised
    return server
