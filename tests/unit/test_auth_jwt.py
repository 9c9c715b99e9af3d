"""JWTVerifier: PyJWT against a PEM key or a JWKS file; exp, aud, iss, signature, algorithm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.auth_material import (
    AUDIENCE,
    ISSUER,
    claims,
    ec_key,
    jwks_json,
    public_pem,
    rsa_key,
    sign,
)
from twisted_stow.auth.grants import Grant
from twisted_stow.auth.jwt_verify import BadJWTConfig, InvalidJWT, JWTVerifier

KEY = ec_key()
OTHER_KEY = ec_key()


@pytest.fixture
def verifier(tmp_path: Path) -> JWTVerifier:
    key_file = tmp_path / "jwt.pem"
    key_file.write_bytes(public_pem(KEY))
    return JWTVerifier.from_files(
        key_file=key_file, jwks_file=None, audience=AUDIENCE, issuer=ISSUER
    )


def test_valid_token_gives_subject_and_scopes(verifier: JWTVerifier) -> None:
    """sub is the name; stow: scopes are the grant."""
    token = sign(claims(sub="ct-scanner", scope="stow:aet:CT1 other"), KEY)
    identity = verifier.verify(token)
    assert identity.name == "ct-scanner"
    assert identity.grant == Grant(aets=frozenset({"CT1"}), workflows=frozenset())
    assert identity.method == "jwt"


def test_scp_list_is_read_too(verifier: JWTVerifier) -> None:
    """A scope list under scp (as Azure AD sends) gives the grant as well."""
    token = sign(claims(scope=None, scp=["stow:workflow:wf1"]), KEY)
    assert verifier.verify(token).grant == Grant(aets=frozenset(), workflows=frozenset({"wf1"}))


@pytest.mark.parametrize(
    ("payload", "key", "reason"),
    [
        (claims(exp=1), KEY, "expired"),
        (claims(aud="another-service"), KEY, "wrong audience"),
        (claims(iss="https://evil.test"), KEY, "wrong issuer"),
        (claims(), OTHER_KEY, "bad signature"),
        (claims(exp=None), KEY, "missing claim"),
        (claims(aud=None), KEY, "missing claim"),
        (claims(sub=None), KEY, "missing claim"),
        (claims(nbf=2**40), KEY, "not yet valid"),
        (claims(sub="evil\nstored 9 of 9 parts"), KEY, "printable"),
    ],
    ids=[
        "expired",
        "audience",
        "issuer",
        "signature",
        "no-exp",
        "no-aud",
        "no-sub",
        "nbf",
        "sub-nl",
    ],
)
def test_refused(verifier: JWTVerifier, payload: dict[str, Any], key: Any, reason: str) -> None:
    """Each broken token is refused with a reason that names the problem."""
    with pytest.raises(InvalidJWT, match=reason):
        verifier.verify(sign(payload, key))


def test_expired_within_leeway_is_accepted(verifier: JWTVerifier) -> None:
    """Ten seconds past exp is tolerated clock skew (LEEWAY_SECONDS = 30)."""
    import time

    verifier.verify(sign(claims(exp=int(time.time()) - 10), KEY))


def test_alg_none_and_hmac_confusion_refused(verifier: JWTVerifier, tmp_path: Path) -> None:
    """alg=none, and HS256 signed with the public key's PEM as the secret, are refused."""
    unsigned = jwt.encode(claims(), None, algorithm="none")
    with pytest.raises(InvalidJWT):
        verifier.verify(unsigned)
    pem = public_pem(KEY)
    # PyJWT refuses to HMAC with a PEM key; forge the token by hand as an attacker would.
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = (
        b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        + b"."
        + b64(json.dumps(claims()).encode())
    )
    forged = signing_input + b"." + b64(hmac.new(pem, signing_input, hashlib.sha256).digest())
    with pytest.raises(InvalidJWT):
        verifier.verify(forged.decode())


def test_garbage_refused(verifier: JWTVerifier) -> None:
    """Not a JWT at all: refused, not crashed."""
    for token in ("a.b.c", "None", "..."):
        with pytest.raises(InvalidJWT):
            verifier.verify(token)


def test_jwks_picks_the_key_by_kid(tmp_path: Path) -> None:
    """With a JWKS of an EC and an RSA key, each token verifies with its kid's key only."""
    rsa = rsa_key()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(jwks_json({"ec-1": KEY, "rsa-1": rsa}))
    verifier = JWTVerifier.from_files(
        key_file=None, jwks_file=jwks, audience=AUDIENCE, issuer=ISSUER
    )
    assert verifier.verify(sign(claims(sub="a"), KEY, kid="ec-1")).name == "a"
    assert verifier.verify(sign(claims(sub="b"), rsa, algorithm="RS256", kid="rsa-1")).name == "b"
    with pytest.raises(InvalidJWT):
        verifier.verify(sign(claims(), KEY, kid="rsa-1"))
    with pytest.raises(InvalidJWT, match="no key"):
        verifier.verify(sign(claims(), KEY, kid="unknown"))


def test_algorithm_not_configured_is_refused(tmp_path: Path) -> None:
    """An RS256 token against a verifier configured for ES256 only."""
    rsa = rsa_key()
    key_file = tmp_path / "rsa.pem"
    key_file.write_bytes(public_pem(rsa))
    verifier = JWTVerifier.from_files(
        key_file=key_file, jwks_file=None, audience=AUDIENCE, issuer=ISSUER, algorithms=["ES256"]
    )
    with pytest.raises(InvalidJWT):
        verifier.verify(sign(claims(), rsa, algorithm="RS256"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"algorithms": ["HS256"]},
        {"algorithms": ["none"]},
        {"algorithms": []},
        {"audience": ""},
        {"issuer": ""},
    ],
)
def test_unsafe_configuration_refused(kwargs: dict[str, Any]) -> None:
    """Symmetric or no algorithms, and a missing audience or issuer, are configuration errors."""
    options: dict[str, Any] = {"audience": AUDIENCE, "issuer": ISSUER, **kwargs}
    with pytest.raises(BadJWTConfig):
        JWTVerifier({None: KEY.public_key()}, **options)


def test_bad_key_files(tmp_path: Path) -> None:
    """A key file that is not a PEM public key, or a JWKS that is not one: BadJWTConfig."""
    junk = tmp_path / "junk"
    junk.write_text("hello")
    for kwargs in ({"key_file": junk, "jwks_file": None}, {"key_file": None, "jwks_file": junk}):
        with pytest.raises(BadJWTConfig):
            JWTVerifier.from_files(audience=AUDIENCE, issuer=ISSUER, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(BadJWTConfig):
        JWTVerifier.from_files(
            key_file=tmp_path / "missing", jwks_file=None, audience=AUDIENCE, issuer=ISSUER
        )
