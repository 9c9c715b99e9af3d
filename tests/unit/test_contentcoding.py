"""core/contentcoding.py: which codings are decoded, and the bounded streaming decoder."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_stow.core.contentcoding import BodyDecoder, request_coding
from twisted_stow.core.errors import (
    DETAIL_TEXT_CHARS,
    InvalidContentCoding,
    UnsupportedContentCoding,
    shorten,
)

DATA = b"DICM" + bytes(range(256)) * 400 + bytes(100_000)


def decode_all(decoder: BodyDecoder, pieces: list[bytes], max_bytes: int) -> bytes:
    out = bytearray()
    for piece in pieces:
        decoder.push(piece)
        while chunk := decoder.decode(max_bytes):
            assert len(chunk) <= max_bytes
            out += chunk
    decoder.close()
    return bytes(out)


@pytest.mark.parametrize(
    ("values", "coding"),
    [
        (None, None),
        ([b"identity"], None),
        ([b"GZIP"], "gzip"),
        ([b"x-gzip"], "gzip"),
        ([b" deflate "], "deflate"),
    ],
)
def test_request_coding(values: list[bytes] | None, coding: str | None) -> None:
    """Content-Encoding names: case-insensitive, x-gzip is gzip, identity is none."""
    assert request_coding(values) == coding


@pytest.mark.parametrize("values", [[b"br"], [b"gzip, gzip"], [b"gzip", b"deflate"]])
def test_unknown_or_stacked_codings_are_415_with_accept_encoding(values: list[bytes]) -> None:
    """An unknown coding, or more than one, is 415 naming gzip and deflate."""
    with pytest.raises(UnsupportedContentCoding) as raised:
        request_coding(values)
    assert raised.value.status == 415
    assert raised.value.headers() == [(b"Accept-Encoding", b"gzip, deflate")]


@pytest.mark.parametrize("values", [[b"x" * 500], [b"gzip, " + b"y" * 500]])
def test_a_long_coding_is_quoted_cut_as_every_client_text(values: list[bytes]) -> None:
    """The refused coding is quoted through errors.shorten: cut, the cut marked."""
    with pytest.raises(UnsupportedContentCoding) as raised:
        request_coding(values)
    named = values[0].decode()
    assert repr(shorten(named)) in raised.value.detail
    assert named[: DETAIL_TEXT_CHARS + 1] not in raised.value.detail


@given(st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=20))
def test_gzip_decodes_the_same_however_it_is_split(cuts: list[int]) -> None:
    """Any split of the input, output bounded per call: the original bytes."""
    encoded = gzip.compress(DATA)
    pieces, at = [], 0
    for cut in cuts:
        pieces.append(encoded[at : at + cut])
        at += cut
    pieces.append(encoded[at:])
    assert decode_all(BodyDecoder("gzip"), pieces, 4096) == DATA


@pytest.mark.parametrize(
    "encoded",
    [zlib.compress(DATA), zlib.compress(DATA)[2:-4]],  # zlib wrapper, and raw deflate
    ids=["zlib", "raw"],
)
def test_deflate_accepts_zlib_and_raw_streams(encoded: bytes) -> None:
    """HTTP deflate is the zlib format; raw deflate, which some clients send, decodes too."""
    pieces = [encoded[:1], encoded[1:]]
    assert decode_all(BodyDecoder("deflate"), pieces, 65536) == DATA


def test_gzip_members_are_concatenated() -> None:
    """RFC 1952 §2.2: a gzip body of several members decodes to their concatenation."""
    encoded = gzip.compress(DATA[:1000]) + gzip.compress(DATA[1000:])
    assert decode_all(BodyDecoder("gzip"), [encoded], 65536) == DATA


def test_a_bomb_is_decoded_a_slice_at_a_time() -> None:
    """256 MiB of zeros in ~256 KiB: each call yields at most max_bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    encoded = b"".join(compressor.compress(block) for _ in range(256)) + compressor.flush()
    decoder = BodyDecoder("gzip")
    decoder.push(encoded)
    first = decoder.decode(65536)
    assert len(first) == 65536 and decoder.pending
    total = len(first)
    while chunk := decoder.decode(1024 * 1024):
        assert len(chunk) <= 1024 * 1024
        total += len(chunk)
    assert total == 256 * 1024 * 1024


@pytest.mark.parametrize(
    "encoded",
    [gzip.compress(DATA)[:-10], b"not gzip at all", gzip.compress(DATA) + b"trailing"],
    ids=["truncated", "garbage", "trailing"],
)
def test_damage_raises_invalid_content_coding(encoded: bytes) -> None:
    """A cut, foreign or over-long stream is InvalidContentCoding (body damage)."""
    with pytest.raises(InvalidContentCoding):
        decode_all(BodyDecoder("gzip"), [encoded], 65536)
