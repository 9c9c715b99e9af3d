"""JSON Web Tokens (RFC 7519) verified with PyJWT against a configured key.

The key is a PEM public key file (``--jwt-key``) or a JWKS file (``--jwks``,
RFC 7517; the token's ``kid`` picks the key).  Every token must carry
``exp``, ``iss``, ``aud`` and ``sub``; ``iss`` and ``aud`` must be the
configured ones, and the signature algorithm one of the configured
asymmetric algorithms (never ``none``, never HMAC with a public key).  The
principal's name is ``sub``; its grant comes from the ``scope`` claim
(a space-separated string, RFC 8693 §4.2, or a list under ``scp``):
``stow:aet:NAME``, ``stow:workflow:ID``, ``*`` for all (grants.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ..core.config import DEFAULT_JWT_ALGORITHMS
from .grants import Identity, grant_from_scopes

# The server's default (core.config), also when the verifier is built directly.
DEFAULT_ALGORITHMS = DEFAULT_JWT_ALGORITHMS
# Asymmetric only: the configured key is public, so HS* would let anyone
# holding it sign tokens (the classic algorithm-confusion attack).
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# Clock skew tolerated on exp/nbf/iat between the issuer and this server.
LEEWAY_SECONDS = 30
REQUIRED_CLAIMS = ("exp", "iss", "aud", "sub")


class BadJWTConfig(ValueError):
    """The key or JWKS file, or an option, cannot be used."""


class InvalidJWT(Exception):
    """A token that is refused; the message is the reason, safe to log (no token in it)."""


def _reason(error: jwt.PyJWTError) -> str:
    table: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
        (jwt.ExpiredSignatureError, "expired"),
        (jwt.InvalidAudienceError, "wrong audience"),
        (jwt.InvalidIssuerError, "wrong issuer"),
        (jwt.InvalidSignatureError, "bad signature"),
        (jwt.ImmatureSignatureError, "not yet valid"),
        (jwt.MissingRequiredClaimError, "missing claim"),
        (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    )
    for kind, text in table:
        if isinstance(error, kind):
            return f"{text} ({error})" if kind is jwt.MissingRequiredClaimError else text
    return f"invalid token ({type(error).__name__})"


class JWTVerifier:
    """Verifies a token and returns the ``Identity`` it proves."""

    def __init__(
        self,
        keys: dict[str | None, Any],
        *,
        audience: str,
        issuer: str,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
    ) -> None:
        """``keys``: key id → key object; the None id is used for tokens without ``kid``."""
        bad = [a for a in algorithms if a not in ALLOWED_ALGORITHMS]
        if bad or not algorithms:
            raise BadJWTConfig(
                f"JWT algorithms must be among {', '.join(sorted(ALLOWED_ALGORITHMS))}; "
                f"got {', '.join(bad) or 'none'}"
            )
        if not audience or not issuer:
            raise BadJWTConfig("JWTs need a configured audience and issuer")
        self._keys = keys
        self.audience = audience
        self.issuer = issuer
        self.algorithms = tuple(algorithms)

    @classmethod
    def from_files(
        cls,
        *,
        key_file: Path | None,
        jwks_file: Path | None,
        audience: str,
        issuer: str,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
    ) -> JWTVerifier:
        """From a PEM public key file, or a JWKS file, or both."""
        keys: dict[str | None, Any] = {}
        if jwks_file is not None:
            keys.update(_load_jwks(jwks_file))
        if key_file is not None:
            keys[None] = _load_pem(key_file)
        if not keys:
            raise BadJWTConfig("no JWT key configured")
        return cls(keys, audience=audience, issuer=issuer, algorithms=algorithms)

    def verify(self, token: str) -> Identity:
        """The identity in ``token``; ``InvalidJWT`` with a loggable reason otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise InvalidJWT(_reason(e)) from None
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            key = self._keys.get(None)
        if key is None and len(self._keys) == 1 and kid is None:
            key = next(iter(self._keys.values()))
        if key is None:
            raise InvalidJWT(f"no key for kid {kid!r}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.PyJWTError as e:
            raise InvalidJWT(_reason(e)) from None
        except (TypeError, ValueError):
            # PyJWT raises these when the key's type does not fit the
            # token's (allowed) algorithm, e.g. ES256 with an RSA key's kid.
            raise InvalidJWT("the key does not fit the token's algorithm") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or not subject.isprintable():
            # It becomes the principal's name in log lines and workflow
            # requests: no control characters (log injection).
            raise InvalidJWT("sub is not a non-empty printable string")
        return Identity(subject, grant_from_scopes(_scopes(claims)), "jwt")


def _scopes(claims: dict[str, Any]) -> list[str]:
    scopes: list[str] = []
    scope = claims.get("scope")
    if isinstance(scope, str):
        scopes += scope.split()
    scp = claims.get("scp")
    if isinstance(scp, list):
        scopes += [s for s in scp if isinstance(s, str)]
    elif isinstance(scp, str):
        scopes += scp.split()
    return scopes


def _load_pem(path: Path) -> Any:
    try:
        return load_pem_public_key(path.read_bytes())
    except OSError as e:
        raise BadJWTConfig(f"{path}: {e.strerror or e}") from e
    except (ValueError, TypeError) as e:
        raise BadJWTConfig(f"{path}: not a PEM public key ({e})") from e


def _load_jwks(path: Path) -> dict[str | None, Any]:
    try:
        jwks = jwt.PyJWKSet.from_json(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise BadJWTConfig(f"{path}: {e.strerror or e}") from e
    except (jwt.PyJWTError, ValueError, json.JSONDecodeError) as e:
        raise BadJWTConfig(f"{path}: not a usable JWKS ({e})") from e
    keys: dict[str | None, Any] = {}
    for jwk in jwks.keys:
        if jwk.key_id is None and len(jwks.keys) > 1:
            raise BadJWTConfig(f"{path}: a JWKS of several keys needs a kid on each")
        keys[jwk.key_id] = jwk.key
    return keys
