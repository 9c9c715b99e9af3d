"""Integrity fields: ``Content-Digest``, ``Want-Content-Digest`` (RFC 9530) and ``Content-MD5``.

Pure parsing and formatting, standard library only.  ``Content-Digest`` is an
RFC 8941 Dictionary whose members are Byte Sequences (``sha-256=:<base64>:``);
``Want-Content-Digest`` is a Dictionary of Integers 0-10 (RFC 9530 §4).  Both
are parsed in one left-to-right pass that looks at each character once, and
are bounded (characters, members) before anything is decoded, so a hostile
field costs no more than its length.  ``Content-MD5`` (RFC 1864) is the
base64 of the 16-byte MD5 of the content.

The digests are over the bytes of the content as sent: for a request body
after any content coding (RFC 9530 §2, Content-Digest covers the content,
which is the encoded representation), for a part the bytes between its
header block and the next delimiter.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# RFC 9530 algorithm keys we verify → hashlib names (§5: sha-256 and sha-512
# are the "Active" ones; md5, sha, unixsum... are deprecated and ignored).
ALGORITHMS: Mapping[str, str] = {"sha-256": "sha256", "sha-512": "sha512"}
# Digest lengths in bytes: a value of another length cannot match.
_DIGEST_BYTES: Mapping[str, int] = {"sha256": 32, "sha512": 64, "md5": 16}
# The longest field accepted, in characters: two digests with parameters fit
# in a few hundred; past this the field is refused unparsed (RFC 8941 §3 lets
# a parser limit sizes).
MAX_FIELD_CHARS = 4096
# Members of one Dictionary: RFC 8941 §3.2 asks parsers to support at least
# 1024; a digest field has a handful, so fewer keeps the work trivially bounded.
MAX_MEMBERS = 32
# Want-Content-Digest preferences are 0-10 (RFC 9530 §4).
MAX_PREFERENCE = 10

_KEY_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz*")
_KEY_REST = _KEY_FIRST | frozenset("0123456789_-.")
_BASE64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


class DigestFieldError(ValueError):
    """A digest field that is not valid Structured Field syntax (or too large)."""


@dataclass(frozen=True, slots=True)
class ExpectedDigest:
    """A digest a client claims: the hashlib name, the value, and the field it came from."""

    hash_name: str  # "sha256", "sha512", "md5"
    value: bytes
    source: str  # for reasons: "Content-Digest sha-256", "Content-MD5"

    def mismatch(self, actual: bytes) -> str:
        """The reason naming the digest, for a failure (0xC000) or a warning."""
        return (
            f"{self.source} mismatch: the client sent "
            f"{base64.b64encode(self.value).decode()}, the bytes received hash to "
            f"{base64.b64encode(actual).decode()}"
        )


def parse_dictionary(text: str) -> list[tuple[str, str | bytes]]:
    """An RFC 8941 §4.2.2 Dictionary whose values are Byte Sequences or Integers.

    Returns (key, value) pairs, the last of a repeated key winning (§3.2);
    parameters are skipped (RFC 9530 defines none).  Inner lists, strings,
    tokens and decimals are not digest syntax and raise ``DigestFieldError``.
    """
    if len(text) > MAX_FIELD_CHARS:
        raise DigestFieldError(f"longer than {MAX_FIELD_CHARS} characters")
    members: dict[str, str | bytes] = {}
    i, n = _skip(text, 0, " "), len(text)
    while i < n:
        if len(members) >= MAX_MEMBERS:
            raise DigestFieldError(f"more than {MAX_MEMBERS} members")
        key, i = _key(text, i)
        value: str | bytes = "1"  # a bare key is Boolean true (§4.2.2)
        if i < n and text[i] == "=":
            value, i = _value(text, i + 1)
        i = _skip_parameters(text, i)
        members.pop(key, None)
        members[key] = value
        i = _skip(text, i, " \t")
        if i == n:
            break
        if text[i] != ",":
            raise DigestFieldError(f"expected ',' at character {i}")
        i = _skip(text, i + 1, " \t")
        if i == n:
            raise DigestFieldError("trailing comma")
    return list(members.items())


def _skip(text: str, i: int, spaces: str) -> int:
    while i < len(text) and text[i] in spaces:
        i += 1
    return i


def _key(text: str, i: int) -> tuple[str, int]:
    if i >= len(text) or text[i] not in _KEY_FIRST:
        raise DigestFieldError(f"expected a lower-case key at character {i}")
    start = i
    i += 1
    while i < len(text) and text[i] in _KEY_REST:
        i += 1
    return text[start:i], i


def _value(text: str, i: int) -> tuple[str | bytes, int]:
    """A Byte Sequence (``:base64:``) as bytes, or an Integer as its digits."""
    if i < len(text) and text[i] == ":":
        end = text.find(":", i + 1)
        if end < 0:
            raise DigestFieldError("unterminated byte sequence")
        encoded = text[i + 1 : end]
        if not _BASE64.issuperset(encoded):
            raise DigestFieldError("a byte sequence holds a character outside base64")
        try:
            return base64.b64decode(encoded, validate=True), end + 1
        except binascii.Error as e:
            raise DigestFieldError(f"invalid base64: {e}") from None
    start = i
    if i < len(text) and text[i] == "-":
        i += 1
    digits = i
    while i < len(text) and text[i].isdigit() and i - digits < 15:  # §3.3.1: 15 digits
        i += 1
    if i == digits:
        raise DigestFieldError(f"expected a byte sequence or an integer at character {start}")
    return text[start:i], i


def _skip_parameters(text: str, i: int) -> int:
    """Parameters (``;key=value``) carry nothing for digests: skipped, still checked."""
    while i < len(text) and text[i] == ";":
        _, i = _key(text, _skip(text, i + 1, " "))
        if i < len(text) and text[i] == "=":
            _, i = _value(text, i + 1)
    return i


def content_digests(values: Sequence[str]) -> list[ExpectedDigest]:
    """The digests of ``Content-Digest`` field lines we can verify (sha-256, sha-512).

    Several field lines are one Dictionary (RFC 9110 §5.3).  Unknown
    algorithms are ignored (RFC 9530 §2: a recipient may ignore what it does
    not support); a member that is not a byte sequence of the algorithm's
    length is an error, since the client evidently meant that algorithm.
    """
    found: list[ExpectedDigest] = []
    for key, value in parse_dictionary(", ".join(values)):
        hash_name = ALGORITHMS.get(key)
        if hash_name is None:
            continue
        if not isinstance(value, bytes) or len(value) != _DIGEST_BYTES[hash_name]:
            raise DigestFieldError(
                f"{key} must be a byte sequence of {_DIGEST_BYTES[hash_name]} bytes"
            )
        found.append(ExpectedDigest(hash_name, value, f"Content-Digest {key}"))
    return found


def content_md5(value: str) -> ExpectedDigest:
    """``Content-MD5`` (RFC 1864): base64 of 16 bytes."""
    text = value.strip()
    if len(text) != 24:
        raise DigestFieldError("Content-MD5 must be the base64 of 16 bytes")
    try:
        digest = base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise DigestFieldError(f"Content-MD5 is not base64: {e}") from None
    return ExpectedDigest("md5", digest, "Content-MD5")


def part_digests(headers: Iterable[tuple[str, str]]) -> list[ExpectedDigest]:
    """The digests a part's header block claims (names lower-case)."""
    digest_lines: list[str] = []
    found: list[ExpectedDigest] = []
    for name, value in headers:
        if name == "content-digest":
            digest_lines.append(value)
        elif name == "content-md5":
            found.append(content_md5(value))
    if digest_lines:
        found[:0] = content_digests(digest_lines)
    return found


def wanted_algorithm(values: Sequence[str]) -> str | None:
    """The algorithm key ``Want-Content-Digest`` prefers among ours, or None.

    Highest preference wins, sha-256 on a tie (the order of ``ALGORITHMS``);
    0 means "not acceptable" (RFC 9530 §4).  A malformed field is ignored,
    as a recipient may do with any Structured Field it cannot parse.
    """
    try:
        members = parse_dictionary(", ".join(values))
    except DigestFieldError:
        return None
    order = list(ALGORITHMS)
    best: tuple[int, int, str] | None = None
    for key, value in members:
        if key not in ALGORITHMS or not isinstance(value, str):
            continue
        preference = int(value)
        if not 0 < preference <= MAX_PREFERENCE:
            continue
        rank = (preference, -order.index(key), key)
        if best is None or rank > best:
            best = rank
    return best[2] if best is not None else None


def digest_field(key: str, digest: bytes) -> str:
    """A ``Content-Digest`` value: ``sha-256=:<base64>:``."""
    return f"{key}=:{base64.b64encode(digest).decode('ascii')}:"
