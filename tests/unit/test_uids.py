"""Tests for uids.py: digits and dots, 1-64 characters, no empty component, no leading zero."""

from __future__ import annotations

import pytest
from pydicom.uid import RE_VALID_UID

from twisted_stow.core.uids import MAX_UID_CHARS, is_valid_uid

VALID = [
    "0",
    "1",
    "1.2",
    "1.0.3",
    "1.2.840.10008.5.1.4.1.1.2",
    "2.25.329800735698586629295641978511506172918",
    "1." + "2" * (MAX_UID_CHARS - 2),
    "1.2." + ".".join(["3"] * 30),
]
# PS3.5 §9.1 forbids them; some modalities send them (--accept-leading-zero-uids).
LEADING_ZEROS = ["1.02.3", "01.2", "1.00", "00", "0" * MAX_UID_CHARS]

INVALID = [
    "",
    ".",
    "1.",
    ".1",
    "..",
    "1..2",
    "1.2.",
    "../1.2",
    "1/2",
    "1.2a",
    "1.2-3",
    "+1.2",
    " 1.2",
    "1.2 ",
    "1.2\x00",
    "1.2\n",
    "1.2\\1.3",
    "1,2",
    "1.٣",  # a non-ASCII digit
    "1.²",
    "1." + "2" * (MAX_UID_CHARS - 1),
    *LEADING_ZEROS,
]


def test_max_uid_chars_is_64() -> None:
    """The length limit is PS3.5 §9.1's 64 characters."""
    assert MAX_UID_CHARS == 64


@pytest.mark.parametrize("value", VALID)
def test_valid_uids(value: str) -> None:
    """Digit components separated by single dots, 1-64 characters, are accepted."""
    assert is_valid_uid(value)


@pytest.mark.parametrize("value", INVALID)
def test_invalid_uids(value: str) -> None:
    """Empty components, other characters and 65+ characters fail."""
    assert not is_valid_uid(value)


def test_length_boundary() -> None:
    """Exactly 64 characters is valid, 65 is not."""
    assert is_valid_uid("1" * 64)
    assert not is_valid_uid("1" * 65)


@pytest.mark.parametrize("value", VALID + INVALID)
def test_pydicom_pattern(value: str) -> None:
    """Accepted by default: exactly pydicom's PS3.5 §9.1 pattern within 64 characters."""
    expected = bool(RE_VALID_UID.fullmatch(value)) and len(value) <= MAX_UID_CHARS
    assert is_valid_uid(value) == expected


def _without_leading_zeros(value: str) -> str:
    """``value`` with the leading zeros of each dot-separated component removed."""
    return ".".join(c.lstrip("0") or "0" if c else c for c in value.split("."))


@pytest.mark.parametrize("value", VALID + INVALID)
def test_leading_zero_option_is_the_pattern_plus_leading_zeros(value: str) -> None:
    """With the option: pydicom's pattern within 64 characters, once leading zeros go."""
    expected = (
        bool(RE_VALID_UID.fullmatch(_without_leading_zeros(value))) and len(value) <= MAX_UID_CHARS
    )
    assert is_valid_uid(value, accept_leading_zeros=True) == expected


@pytest.mark.parametrize("value", LEADING_ZEROS)
def test_leading_zeros_only_with_the_option(value: str) -> None:
    """Leading-zero components: refused by default, accepted with the option."""
    assert not is_valid_uid(value)
    assert is_valid_uid(value, accept_leading_zeros=True)
