"""Salted password hashes and static-token digests (standard library only).

A password is stored as ``scrypt$n=16384,r=8,p=1$<salt>$<hash>`` (base64
salt and hash), the KDF parameters kept with each entry so that they can be
raised later without invalidating existing users.  PBKDF2-HMAC-SHA256
entries (``pbkdf2-sha256$i=600000$<salt>$<hash>``) are read too, for
files produced by other tools.  Static bearer tokens are 256-bit random
strings: a plain SHA-256 digest is enough for them (nothing to brute-force),
and it keeps their check fast.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

# scrypt cost: n=2**14, r=8, p=1 is the interactive-login setting of the
# scrypt paper (Percival 2009); 50-60 ms and 16 MiB per check on the
# development machine (benchmarks/auth_cost.py).  OWASP asks for n=2**17,
# ~8 times that; checks share a budget of KDF time (auth/throttle.py), so the
# default stays lower and `stow-passwd user --scrypt-log2-n 17` raises it per user.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# Entries with a higher cost than this are refused when the file is read:
# a hostile or mistaken file must not make one login take minutes or GiBs.
MAX_SCRYPT_MEMORY_BYTES = 256 * 1024 * 1024
MAX_PBKDF2_ITERATIONS = 10_000_000
# What OWASP's 2023 password storage cheat sheet gives for PBKDF2-HMAC-SHA256.
PBKDF2_ITERATIONS = 600_000
TOKEN_BYTES = 32


class BadHashEntry(ValueError):
    """A stored password hash that cannot be used."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as e:
        raise BadHashEntry(f"not base64: {text!r}") from e


def _scrypt_memory(n: int, r: int, p: int) -> int:
    # hashlib.scrypt needs 128*n*r for V plus 128*r*p for B; leave slack.
    return 128 * r * (n + p + 2) + 1024 * 1024


def hash_password(
    password: bytes, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P
) -> str:
    """A new salted scrypt hash of ``password``, in the stored form."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, maxmem=_scrypt_memory(n, r, p), dklen=HASH_BYTES
    )
    return f"scrypt$n={n},r={r},p={p}${_b64(salt)}${_b64(digest)}"


def _params(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not value.isdigit():
            raise BadHashEntry(f"bad parameter {item!r}")
        out[name] = int(value)
    return out


def check_hash_entry(encoded: str) -> None:
    """Raise ``BadHashEntry`` unless ``encoded`` is a usable stored hash."""
    _parse(encoded)


def _parse(encoded: str) -> tuple[str, dict[str, int], bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 4:
        raise BadHashEntry("expected scheme$parameters$salt$hash")
    scheme, params_text, salt_text, digest_text = parts
    params = _params(params_text)
    salt, digest = _unb64(salt_text), _unb64(digest_text)
    if not salt or not digest:
        raise BadHashEntry("empty salt or hash")
    if scheme == "scrypt":
        if set(params) != {"n", "r", "p"}:
            raise BadHashEntry("scrypt needs n, r and p")
        n, r, p = params["n"], params["r"], params["p"]
        if n < 2 or n & (n - 1) or r < 1 or p < 1:
            raise BadHashEntry("scrypt n must be a power of 2 above 1, r and p at least 1")
        if _scrypt_memory(n, r, p) > MAX_SCRYPT_MEMORY_BYTES:
            raise BadHashEntry("scrypt parameters need too much memory")
    elif scheme == "pbkdf2-sha256":
        if set(params) != {"i"} or not 1 <= params["i"] <= MAX_PBKDF2_ITERATIONS:
            raise BadHashEntry("pbkdf2-sha256 needs i (iterations) in a sane range")
    else:
        raise BadHashEntry(f"unknown hash scheme {scheme!r}")
    return scheme, params, salt, digest


def verify_password(password: bytes, encoded: str) -> bool:
    """Whether ``password`` matches the stored ``encoded`` hash (constant-time compare)."""
    scheme, params, salt, expected = _parse(encoded)
    if scheme == "scrypt":
        n, r, p = params["n"], params["r"], params["p"]
        actual = hashlib.scrypt(
            password, salt=salt, n=n, r=r, p=p, maxmem=_scrypt_memory(n, r, p), dklen=len(expected)
        )
    else:
        actual = hashlib.pbkdf2_hmac("sha256", password, salt, params["i"], dklen=len(expected))
    return hmac.compare_digest(actual, expected)


def kdf_parameters(encoded: str) -> str:
    """The scheme and KDF parameters of a stored hash, e.g. ``scrypt$n=16384,r=8,p=1``.

    Two entries with the same parameters cost the same to check.
    """
    scheme, params, _salt, _digest = _parse(encoded)
    return f"{scheme}${','.join(f'{name}={value}' for name, value in sorted(params.items()))}"


DEFAULT_KDF_PARAMETERS = f"scrypt$n={SCRYPT_N},p={SCRYPT_P},r={SCRYPT_R}"


@functools.cache
def dummy_hash(parameters: str = DEFAULT_KDF_PARAMETERS) -> str:
    """A hash of no real password with the given ``kdf_parameters``.

    Checked for an unknown user name, so that a miss costs as much as a wrong
    password and the timing does not tell which user names exist; the caller
    picks the parameters of its most expensive entry (docs/CONFORMANCE.md §10).
    """
    scheme, _, text = parameters.partition("$")
    params = _params(text)
    salt = secrets.token_bytes(SALT_BYTES)
    if scheme == "scrypt":
        n, r, p = params["n"], params["r"], params["p"]
        digest = hashlib.scrypt(
            b"no such user",
            salt=salt,
            n=n,
            r=r,
            p=p,
            maxmem=_scrypt_memory(n, r, p),
            dklen=HASH_BYTES,
        )
        return f"scrypt$n={n},r={r},p={p}${_b64(salt)}${_b64(digest)}"
    if scheme == "pbkdf2-sha256":
        digest = hashlib.pbkdf2_hmac("sha256", b"no such user", salt, params["i"], HASH_BYTES)
        return f"pbkdf2-sha256$i={params['i']}${_b64(salt)}${_b64(digest)}"
    raise BadHashEntry(f"unknown hash scheme {scheme!r}")


def new_token() -> str:
    """A fresh static bearer token: 256 random bits, URL-safe (RFC 6750 token68, no dots)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: bytes) -> str:
    """The stored form of a static token: its SHA-256, hex."""
    return hashlib.sha256(token).hexdigest()
