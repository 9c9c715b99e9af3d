"""core/digests.py: RFC 9530 Content-Digest, Want-Content-Digest and Content-MD5, vs hashlib."""

from __future__ import annotations

import base64
import hashlib

import pytest

from twisted_stow.core.digests import (
    MAX_FIELD_CHARS,
    MAX_MEMBERS,
    DigestFieldError,
    content_digests,
    digest_field,
    parse_dictionary,
    part_digests,
    wanted_algorithm,
)

DATA = b"the bytes a client hashed"


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def test_content_digest_with_both_algorithms_and_parameters() -> None:
    """sha-256 and sha-512 members (parameters skipped, unknown algorithms ignored)."""
    field = (
        f"sha-256=:{b64(hashlib.sha256(DATA).digest())}:;x=1, unixsum=:AAA=:, "
        f"sha-512=:{b64(hashlib.sha512(DATA).digest())}:"
    )
    claims = content_digests([field])
    assert [(c.hash_name, c.value) for c in claims] == [
        ("sha256", hashlib.sha256(DATA).digest()),
        ("sha512", hashlib.sha512(DATA).digest()),
    ]


def test_several_field_lines_are_one_dictionary_and_the_last_key_wins() -> None:
    """RFC 9110 §5.3 and RFC 8941 §3.2: lines joined, a repeated key takes its last value."""
    first, last = hashlib.sha256(b"a").digest(), hashlib.sha256(DATA).digest()
    (claim,) = content_digests([f"sha-256=:{b64(first)}:", f"sha-256=:{b64(last)}:"])
    assert claim.value == last


@pytest.mark.parametrize(
    "field",
    [
        "sha-256",  # Boolean true: not a byte sequence
        "sha-256=:AAAA:",  # wrong length for sha-256
        "sha-256=:not base64!:",
        "sha-256=:AAAA",  # unterminated
        "SHA-256=:AAAA:",  # keys are lower case
        "sha-256=:AAAA:,",  # trailing comma
        "sha-256=:AAAA: sha-512=:AAAA:",  # no comma
    ],
)
def test_malformed_content_digest_raises(field: str) -> None:
    """Anything that is not a dictionary of byte sequences of the right length is refused."""
    with pytest.raises(DigestFieldError):
        content_digests([field])


def test_bounds_in_characters_and_members() -> None:
    """A field past MAX_FIELD_CHARS or MAX_MEMBERS raises before it is decoded."""
    with pytest.raises(DigestFieldError, match="characters"):
        parse_dictionary("a=1, " * (MAX_FIELD_CHARS // 5 + 1))
    with pytest.raises(DigestFieldError, match="members"):
        parse_dictionary(", ".join(f"k{i}=1" for i in range(MAX_MEMBERS + 1)))


def test_part_headers_give_digest_and_md5_claims() -> None:
    """A part's Content-Digest and Content-MD5 both become claims (MD5 per RFC 1864)."""
    headers = [
        ("content-type", "application/dicom"),
        ("content-md5", b64(hashlib.md5(DATA).digest())),
        ("content-digest", f"sha-512=:{b64(hashlib.sha512(DATA).digest())}:"),
    ]
    claims = part_digests(headers)
    assert [(c.hash_name, c.source) for c in claims] == [
        ("sha512", "Content-Digest sha-512"),
        ("md5", "Content-MD5"),
    ]
    assert claims[1].value == hashlib.md5(DATA).digest()
    with pytest.raises(DigestFieldError):
        part_digests([("content-md5", "short")])


def test_mismatch_reason_names_the_digest_and_both_values() -> None:
    """The reason of a failed check says which field and what each side hashed to."""
    (claim,) = content_digests([f"sha-256=:{b64(hashlib.sha256(b'x').digest())}:"])
    reason = claim.mismatch(hashlib.sha256(DATA).digest())
    assert reason.startswith("Content-Digest sha-256 mismatch")
    assert b64(hashlib.sha256(DATA).digest()) in reason


@pytest.mark.parametrize(
    ("field", "wanted"),
    [
        ("sha-256=1, sha-512=3", "sha-512"),
        ("sha-512=3, sha-256=3", "sha-256"),  # a tie: sha-256
        ("sha-512=0, md5=10", None),  # 0 is "not acceptable"; md5 is not ours
        ("sha-256=:AAAA:", None),  # not an integer
        ("garbage(", None),  # malformed: ignored
    ],
)
def test_want_content_digest_preference(field: str, wanted: str | None) -> None:
    """The highest preference among ours, sha-256 on a tie, None if none is acceptable."""
    assert wanted_algorithm([field]) == wanted


def test_digest_field_round_trips() -> None:
    """What we emit in Content-Digest parses back to the same digest."""
    digest = hashlib.sha256(DATA).digest()
    (claim,) = content_digests([digest_field("sha-256", digest)])
    assert claim.value == digest
