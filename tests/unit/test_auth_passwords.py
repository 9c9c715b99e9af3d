"""Salted password hashes and token digests (auth/passwords.py)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from twisted_stow.auth.passwords import (
    BadHashEntry,
    check_hash_entry,
    hash_password,
    new_token,
    token_digest,
    verify_password,
)

# Cheap scrypt parameters keep these tests fast; the defaults are exercised once.
CHEAP = {"n": 2**4, "r": 8, "p": 1}


def test_default_hash_verifies_and_rejects() -> None:
    """A default scrypt hash accepts its password and refuses another; parameters are stored."""
    encoded = hash_password(b"s3cret")
    assert encoded.startswith("scrypt$n=16384,r=8,p=1$")
    assert verify_password(b"s3cret", encoded)
    assert not verify_password(b"s3cret ", encoded)


def test_same_password_gets_a_new_salt_each_time() -> None:
    """Two hashes of one password differ (salted) and both verify."""
    first, second = hash_password(b"pw", **CHEAP), hash_password(b"pw", **CHEAP)
    assert first != second
    assert verify_password(b"pw", first) and verify_password(b"pw", second)


def test_hash_holds_no_clear_password() -> None:
    """The stored form does not contain the password, plain or base64."""
    encoded = hash_password(b"plainly-visible", **CHEAP)
    assert "plainly-visible" not in encoded
    assert base64.b64encode(b"plainly-visible").decode() not in encoded


def test_parameters_are_read_from_each_entry() -> None:
    """An entry with other scrypt parameters verifies with them."""
    encoded = hash_password(b"pw", n=2**5, r=4, p=2)
    assert encoded.split("$")[1] == "n=32,r=4,p=2"
    assert verify_password(b"pw", encoded)


def test_pbkdf2_entries_are_read() -> None:
    """A pbkdf2-sha256 entry written by another tool verifies."""
    salt = b"0123456789abcdef"
    digest = hashlib.pbkdf2_hmac("sha256", b"pw", salt, 1000)
    b64 = base64.b64encode
    encoded = f"pbkdf2-sha256$i=1000${b64(salt).decode()}${b64(digest).decode()}"
    assert verify_password(b"pw", encoded)
    assert not verify_password(b"wrong", encoded)


@pytest.mark.parametrize(
    "encoded",
    [
        "plaintext",
        "md5$i=1$c2FsdA==$aGFzaA==",
        "scrypt$n=16384,r=8$c2FsdA==$aGFzaA==",
        "scrypt$n=1000,r=8,p=1$c2FsdA==$aGFzaA==",
        "scrypt$n=1048576,r=64,p=1$c2FsdA==$aGFzaA==",
        "scrypt$n=16,r=8,p=1$not base64!$aGFzaA==",
        "scrypt$n=16,r=8,p=1$$aGFzaA==",
        "pbkdf2-sha256$i=0$c2FsdA==$aGFzaA==",
        "pbkdf2-sha256$i=x$c2FsdA==$aGFzaA==",
    ],
)
def test_unusable_entries_are_refused(encoded: str) -> None:
    """Unknown schemes, missing/absurd parameters and bad base64 raise BadHashEntry."""
    with pytest.raises(BadHashEntry):
        check_hash_entry(encoded)


def test_tokens_are_random_urlsafe_and_stored_as_sha256() -> None:
    """new_token: 43 URL-safe characters without dots; the digest is SHA-256 hex."""
    token = new_token()
    assert len(token) == 43 and "." not in token and token != new_token()
    assert token_digest(token.encode()) == hashlib.sha256(token.encode()).hexdigest()
