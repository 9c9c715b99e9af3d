"""ZeroCopyChunkedDecoder behaves exactly as Twisted's decoder, without its copies."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.web.http import _ChunkedTransferDecoder, _MalformedChunkedDataError

from twisted_stow.chunked import ZeroCopyChunkedDecoder
from twisted_stow.twisted_private import MAX_CHUNK_SIZE_LINE_BYTES

Record = list[tuple[Any, ...]]


def run(cls: type[_ChunkedTransferDecoder], reads: list[bytes]) -> Record:
    """Everything a decoder reports: each piece with the state and countdown seen
    from the callback, the finish data, and the error (its type) if any."""
    seen: Record = []
    decoder = cls(lambda data: None, lambda rest: seen.append(("finish", rest)))

    def piece(data: bytes) -> None:
        announced = decoder.length if decoder.state == "BODY" else 0
        seen.append(("data", type(data), data, decoder.state, announced))

    decoder.dataCallback = piece
    for data in reads:
        try:
            decoder.dataReceived(data)
        except (_MalformedChunkedDataError, RuntimeError) as error:
            seen.append(("error", type(error)))
            break
    return seen


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    return [body[a:b] for a, b in itertools.pairwise(points) if b > a]


def chunked(chunks: list[bytes], trailer: bytes = b"", epilogue: bytes = b"") -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c)
    return out + b"0\r\n" + trailer + b"\r\n" + epilogue


framing_noise = st.sampled_from(
    [b"", b"\r", b"\n", b"\r\n", b"0", b"x", b";ext=1", b";\x00", b"-1", b"+5", b"0x5", b" 5"]
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Valid chunked bodies, and ones damaged at a random place."""
    chunks = draw(st.lists(st.binary(min_size=0, max_size=300), max_size=6))
    trailer = draw(st.sampled_from([b"", b"X-A: 1\r\n", b"X-A: 1\r\nX-B: 2\r\n"]))
    epilogue = draw(st.sampled_from([b"", b"GET / HTTP/1.1\r\n"]))
    body = chunked(chunks, trailer, epilogue)
    if draw(st.booleans()):
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(framing_noise) + body[at + draw(st.integers(0, 3)) :]
    return body


@settings(max_examples=1500)
@given(bodies(), st.lists(st.integers(0, 2000), max_size=12))
def test_same_pieces_countdowns_finish_and_errors_as_twisted(body: bytes, cuts: list[int]) -> None:
    reads = split(body, cuts)
    assert run(ZeroCopyChunkedDecoder, reads) == run(_ChunkedTransferDecoder, reads)


@given(st.integers(1, 40), st.integers(0, 3))
def test_long_chunk_size_lines_are_refused_as_twisted(extra: int, cut: int) -> None:
    line = b"5;" + b"a" * (MAX_CHUNK_SIZE_LINE_BYTES - 2 + extra - 2) + b"\r\nhello\r\n0\r\n\r\n"
    reads = split(line, [cut * 300])
    assert run(ZeroCopyChunkedDecoder, reads) == run(_ChunkedTransferDecoder, reads)


def test_a_read_inside_one_chunk_is_passed_on_as_the_same_object() -> None:
    got: list[bytes] = []
    decoder = ZeroCopyChunkedDecoder(got.append, lambda rest: None)
    decoder.dataReceived(b"100000\r\n")
    read = bytes(range(256)) * 1024
    decoder.dataReceived(read)
    assert got[0] is read  # no copy at all
    assert (decoder.state, decoder.length) == ("BODY", 0x100000 - len(read))


def test_framing_split_across_reads_leaves_the_chunk_data_whole() -> None:
    """A chunk-size line split between reads: the data after it is one piece."""
    got: list[bytes] = []
    decoder = ZeroCopyChunkedDecoder(got.append, lambda rest: None)
    decoder.dataReceived(b"a\r\n0123456789\r")
    decoder.dataReceived(b"\n1")
    decoder.dataReceived(b"4\r\n" + b"y" * 20)
    assert got == [b"0123456789", b"y" * 20]
    assert decoder.state == "CRLF"
