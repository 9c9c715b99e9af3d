"""The incremental multipart/related parser (RFC 2046 §5.1.1), fed every way."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.helpers import build_multipart, coalesce, iter_multipart
from twisted_stow.core.errors import (
    HeaderBlockTooLarge,
    InternalError,
    MalformedMultipart,
    StowError,
    TruncatedBody,
)
from twisted_stow.core.multipart import (
    MAX_BOUNDARY_BYTES,
    MAX_HEADER_BLOCK_BYTES,
    MAX_HEADER_LINES,
    MAX_TRANSPORT_PADDING_BYTES,
    BodyEnded,
    Event,
    MultipartParser,
    PartData,
    PartEnded,
    PartStarted,
    _parse_header_block,
    _parse_header_lines,
)

BOUNDARY = "b0undary"
CT = (("content-type", "application/dicom"),)


def parse(body: bytes, boundary: str = BOUNDARY, **kwargs: int) -> list[Event]:
    """Feed ``body`` whole, then close; return the coalesced events."""
    parser = MultipartParser(boundary.encode("latin-1"), **kwargs)
    events = parser.feed(body)
    events += parser.close()
    return coalesce(events)


def parse_chunks(chunks: Iterable[bytes], boundary: str = BOUNDARY) -> list[Event]:
    """Feed ``chunks`` one by one, then close; check PartData is never empty."""
    parser = MultipartParser(boundary.encode("latin-1"))
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.close()
    assert all(len(e.data) > 0 for e in events if isinstance(e, PartData))
    return coalesce(events)


def bytewise(body: bytes) -> list[bytes]:
    """``body`` one byte at a time."""
    return [body[i : i + 1] for i in range(len(body))]


def expected(
    payloads: Sequence[bytes],
    headers: Sequence[tuple[tuple[str, str], ...]] | None = None,
) -> list[Event]:
    """The coalesced events for parts with ``payloads`` (default header CT)."""
    events: list[Event] = []
    for index, payload in enumerate(payloads):
        events.append(PartStarted(headers[index] if headers is not None else CT))
        if payload:
            events.append(PartData(payload))
        events.append(PartEnded())
    return [*events, BodyEnded()]


def split_at(body: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``body`` cut at the given offsets."""
    points = sorted({min(max(cut, 0), len(body)) for cut in cuts})
    bounds = [0, *points, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(bounds)]


TWO_PARTS = build_multipart([b"first payload", b"\x00second\r\n\xff"], BOUNDARY)


def test_whole_input() -> None:
    """Two parts fed at once give their headers and payloads in order."""
    assert parse(TWO_PARTS) == expected([b"first payload", b"\x00second\r\n\xff"])


def test_streamed_body_parses_like_built_body() -> None:
    """iter_multipart (the benchmark body) yields build_multipart's bytes in fixed chunks."""
    parts = [b"abc", b"", b"\r\n--b0undar" * 50]
    chunks = list(iter_multipart([parts[0], parts[1], iter([parts[2]])], BOUNDARY, chunk_size=7))
    assert b"".join(chunks) == build_multipart(parts, BOUNDARY)
    assert {len(chunk) for chunk in chunks[:-1]} == {7}
    assert parse_chunks(chunks) == expected(parts)
    big = parse_chunks(iter_multipart([3_000_000], BOUNDARY))
    assert [len(e.data) for e in big if isinstance(e, PartData)] == [3_000_000]


def test_one_byte_at_a_time() -> None:
    """Feeding one byte at a time gives the same events as feeding it whole."""
    assert parse_chunks(bytewise(TWO_PARTS)) == parse(TWO_PARTS)


@pytest.mark.parametrize("leading", [True, False])
@pytest.mark.parametrize("trailing", [True, False])
def test_crlf_at_the_edges_is_optional(leading: bool, trailing: bool) -> None:
    """Bodies with or without CRLF before the first and after the last boundary parse alike."""
    body = build_multipart([b"x"], BOUNDARY, leading_crlf=leading, trailing_crlf=trailing)
    assert parse(body) == expected([b"x"])
    assert parse_chunks(bytewise(body)) == expected([b"x"])


def test_preamble_and_epilogue_are_ignored() -> None:
    """Preamble and epilogue bytes never reach the events, even if boundary-like."""
    body = build_multipart(
        [b"data"],
        BOUNDARY,
        preamble=b"This is a preamble --b0undaryX --b0undary\tno",
        epilogue=b"--b0undary\r\nContent-Type: x\r\n\r\nmore\r\n--b0undary--",
    )
    assert parse(body) == expected([b"data"])
    assert parse_chunks(bytewise(body)) == expected([b"data"])


def test_data_after_body_ended_is_ignored() -> None:
    """Chunks fed after the close delimiter are epilogue and produce nothing."""
    parser = MultipartParser(BOUNDARY.encode())
    events = parser.feed(build_multipart([b"x"], BOUNDARY))
    assert events[-1] == BodyEnded()
    assert parser.feed(b"\r\n--b0undary\r\n\r\ngarbage") == []
    assert parser.close() == []


@pytest.mark.parametrize(
    "boundary",
    [
        "a",
        "gc0p4Jq0M2Yt08jU534c0p",
        "a b'()+_,-./:=?",  # every RFC 2046 bchar, space inside: a quoted boundary
        "o" * 73,  # Orthanc's unquoted 73-character boundaries
        "z" * MAX_BOUNDARY_BYTES,
    ],
)
def test_boundaries(boundary: str) -> None:
    """Short, punctuated, 73- and 200-character boundaries all frame parts."""
    body = build_multipart([b"one", b"two"], boundary, trailing_crlf=False)
    assert parse(body, boundary) == expected([b"one", b"two"])
    assert parse_chunks(bytewise(body), boundary) == expected([b"one", b"two"])


def test_boundary_length_is_checked() -> None:
    """A boundary that is empty, too long or holds CR/LF is a programming error."""
    for bad in (b"", b"x" * (MAX_BOUNDARY_BYTES + 1), b"a\r\nb"):
        with pytest.raises(ValueError):
            MultipartParser(bad)
    with pytest.raises(ValueError):
        MultipartParser(b"b", max_header_bytes=1)


def test_orthanc_style_part_headers_pass_through() -> None:
    """Per-part Content-Length and Content-Location are passed on, lower-cased, in order."""
    headers = [
        [("Content-Type", "application/dicom"), ("Content-Length", "5")],
        [("Content-Location", "  urn:x  "), ("CONTENT-TYPE", "application/dicom")],
    ]
    body = build_multipart([b"12345", b"abc"], "o" * 73, part_headers=headers, leading_crlf=False)
    assert parse(body, "o" * 73) == expected(
        [b"12345", b"abc"],
        [
            (("content-type", "application/dicom"), ("content-length", "5")),
            (("content-location", "urn:x"), ("content-type", "application/dicom")),
        ],
    )


def test_part_without_headers() -> None:
    """``--b CRLF CRLF data`` is a part with no headers at all."""
    body = build_multipart([b"data"], BOUNDARY, content_type=None)
    assert body.startswith(b"\r\n--b0undary\r\n\r\ndata")
    assert parse(body) == expected([b"data"], [()])
    assert parse_chunks(bytewise(body)) == expected([b"data"], [()])


def test_empty_part() -> None:
    """An empty part gives PartStarted and PartEnded with no PartData between."""
    body = build_multipart([b"", b"x", b""], BOUNDARY)
    events = parse(body)
    assert events == expected([b"", b"x", b""])
    assert parse_chunks(bytewise(body)) == events


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"--b\r\n\r\n--b--", ()),
        (
            b"--b\r\nContent-Type: x\r\n\r\n--b\r\n\r\n\r\n--b--",
            (("content-type", "x"),),
        ),
    ],
)
def test_part_without_body(body: bytes, headers: tuple[tuple[str, str], ...]) -> None:
    """RFC 2046 §5.1.1: the body is optional; the empty line's CRLF may open the next delimiter."""
    assert parse(body, "b")[:2] == [PartStarted(headers), PartEnded()]
    assert parse_chunks(bytewise(body), "b")[:2] == [PartStarted(headers), PartEnded()]


@pytest.mark.parametrize("body", [b"--b--", b"\r\n--b--\r\n", b"preamble\r\n--b--epilogue"])
def test_zero_parts(body: bytes) -> None:
    """A body that is only the close delimiter gives just BodyEnded."""
    assert parse(body, "b") == [BodyEnded()]
    assert parse_chunks(bytewise(body), "b") == [BodyEnded()]


@pytest.mark.parametrize(
    "payload",
    [
        b"\r\n--b0undar",
        b"--b0undary",
        b"--b0undary-",
        b"x--b0undary\r\nx",
        b"x--b0undary--",
        b"\r\n--b0undaryX\r\n",
        b"\r\n--b0undary-x",
        b"\r\n--b0undary \tX",
        b"\r\n--b0undary\rX",
        b"\r\n--b0undary" + b" " * (MAX_TRANSPORT_PADDING_BYTES + 1) + b"\r\n",
        b"\r\n\r\n--\r\n--b\r",
    ],
)
def test_delimiter_lookalikes_are_payload(payload: bytes) -> None:
    """Bytes that only resemble a delimiter stay inside the part."""
    body = build_multipart([b"A" + payload + b"Z", payload + b"Z"], BOUNDARY)
    assert parse(body) == expected([b"A" + payload + b"Z", payload + b"Z"])
    assert parse_chunks(bytewise(body)) == expected([b"A" + payload + b"Z", payload + b"Z"])


def test_transport_padding_after_boundary() -> None:
    """Spaces and tabs between a boundary and its CRLF are transport padding."""
    pad = b" \t" * (MAX_TRANSPORT_PADDING_BYTES // 2)
    body = b"--b" + pad + b"\r\n\r\none\r\n--b" + pad + b"\r\n\r\ntwo\r\n--b--"
    assert parse(body, "b") == expected([b"one", b"two"], [(), ()])
    assert parse_chunks(bytewise(body), "b") == expected([b"one", b"two"], [(), ()])


def test_large_chunk_is_one_slice_of_the_input() -> None:
    """A big chunk inside a part comes back as one memoryview over that chunk, not a copy."""
    parser = MultipartParser(b"b")
    parser.feed(b"--b\r\n\r\n")
    chunk = bytes(range(256)) * 4096
    events = parser.feed(chunk)
    assert len(events) == 1
    assert isinstance(events[0], PartData)
    data = events[0].data
    assert isinstance(data, memoryview) and data.obj is chunk
    assert data == chunk  # it ends in b"\xff", which cannot start a delimiter
    assert parser.buffered_bytes == 0


def test_header_names_lowered_values_stripped_order_kept() -> None:
    """Header names are lower-cased, values stripped and the order is kept."""
    body = b"--b\r\nX-B:  two \r\nContent-Type:\tapplication/dicom\r\nX-A :one\r\n\r\np\r\n--b--"
    assert parse(body, "b")[0] == PartStarted(
        (("x-b", "two"), ("content-type", "application/dicom"), ("x-a", "one"))
    )


def test_obs_fold_lines_are_joined() -> None:
    """An obs-fold continuation line is joined to the previous header with a space."""
    body = b"--b\r\nContent-Type: application/dicom;\r\n  transfer-syntax=1.2\r\n\r\np\r\n--b--"
    assert parse(body, "b")[0] == PartStarted(
        (("content-type", "application/dicom; transfer-syntax=1.2"),)
    )


def test_header_lines_are_capped() -> None:
    """A header block of MAX_HEADER_LINES lines is read; one line more is HeaderBlockTooLarge."""

    def body(lines: int) -> bytes:
        return b"--b\r\n" + b"a:b\r\n" * lines + b"\r\np\r\n--b--"

    assert len(parse(body(MAX_HEADER_LINES), "b")[0].headers) == MAX_HEADER_LINES  # type: ignore[union-attr]
    with pytest.raises(HeaderBlockTooLarge, match=f"more than {MAX_HEADER_LINES} lines"):
        parse(body(MAX_HEADER_LINES + 1), "b")


def test_a_chain_of_folds_is_joined_once() -> None:
    """Folds are joined at the end (linear), empty continuations add nothing."""
    block = b"X: a\r\n" + b" b\r\n" * 50 + b" \r\nY: c"
    assert _parse_header_block(block) == (("x", "a" + " b" * 50), ("y", "c"))


@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"Content-Type", b"X-a", b"a", b" ", b"\t", b"bad name", b""]),
            st.sampled_from([b":", b" :", b""]),
            st.binary(max_size=6),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_fast_path_agrees_with_the_line_by_line_path(
    lines: list[tuple[bytes, bytes, bytes]],
) -> None:
    """The one-pass parse gives what the line-by-line parse gives, or the same error type."""
    block = b"\r\n".join(name + colon + value for name, colon, value in lines)
    assume(block)  # an empty block is no lines, not one empty line
    try:
        fast: object = _parse_header_block(block)
    except MalformedMultipart as error:
        fast = type(error)
    try:
        slow: object = _parse_header_lines(block.split(b"\r\n"))
    except MalformedMultipart as error:
        slow = type(error)
    assert fast == slow


@pytest.mark.parametrize(
    "line",
    [b"no colon here", b": no name", b"bad name: x", b" leading fold", b"X: a\rb"],
)
def test_malformed_header_line(line: bytes) -> None:
    """A header line without a name and colon (or with a bare CR) is MalformedMultipart."""
    body = b"--b\r\n" + line + b"\r\n\r\npayload\r\n--b--"
    with pytest.raises(MalformedMultipart):
        parse(body, "b")


def test_header_block_at_the_cap_is_accepted() -> None:
    """A header block of exactly max_header_bytes (lines plus empty line) is accepted."""
    cap = 64
    line = b"X: " + b"v" * (cap - 3 - 4) + b"\r\n"
    body = b"--b\r\n" + line + b"\r\npayload\r\n--b--"
    assert len(line) + 2 == cap
    assert parse(body, "b", max_header_bytes=cap)[1] == PartData(b"payload")
    assert coalesce(_feed_all(body, cap, bytewise(body)))[1] == PartData(b"payload")


@pytest.mark.parametrize("split", [False, True])
def test_header_block_too_large(split: bool) -> None:
    """One byte over the cap, or a block that never ends, is HeaderBlockTooLarge."""
    cap = 64
    over = b"--b\r\nX: " + b"v" * (cap - 3 - 4 + 1) + b"\r\n\r\npayload\r\n--b--"
    endless = b"--b\r\nX: " + b"v" * 10 * cap
    for body in (over, endless):
        with pytest.raises(HeaderBlockTooLarge):
            _feed_all(body, cap, bytewise(body) if split else [body])


def test_default_header_cap() -> None:
    """The default cap is 16 KiB: a 20 KiB header block is refused."""
    assert MAX_HEADER_BLOCK_BYTES == 16 * 1024
    body = b"--b\r\nX: " + b"v" * 20 * 1024 + b"\r\n\r\n"
    with pytest.raises(HeaderBlockTooLarge):
        MultipartParser(b"b").feed(body)


def _feed_all(body: bytes, cap: int, chunks: Iterable[bytes]) -> list[Event]:
    parser = MultipartParser(b"b", max_header_bytes=cap)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events + parser.close()


@pytest.mark.parametrize("cut", [-1, -2, -3, -7, -12])
def test_truncated_body(cut: int) -> None:
    """close() before the close delimiter raises TruncatedBody; completed parts came out first."""
    body = build_multipart([b"complete", b"cut short"], BOUNDARY, trailing_crlf=False)
    parser = MultipartParser(BOUNDARY.encode())
    events = coalesce(parser.feed(body[:cut]))
    assert events[:4] == [*expected([b"complete"])[:3], PartStarted(CT)]
    with pytest.raises(TruncatedBody):
        parser.close()


@pytest.mark.parametrize(
    "body",
    [b"", b"preamble only", b"--b", b"--b\r\n", b"--b\r\nX: y\r\n", b"--b\r\n\r\nda"],
)
def test_truncated_everywhere(body: bytes) -> None:
    """An empty body, or one cut in the preamble, headers or payload, raises TruncatedBody."""
    parser = MultipartParser(b"b")
    parser.feed(body)
    with pytest.raises(TruncatedBody):
        parser.close()


def test_error_after_error() -> None:
    """Once the parser has raised, every later feed and close raises again."""
    parser = MultipartParser(b"b", max_header_bytes=16)
    with pytest.raises(HeaderBlockTooLarge):
        parser.feed(b"--b\r\n" + b"X" * 100)
    with pytest.raises(HeaderBlockTooLarge):
        parser.feed(b"\r\n\r\n")
    with pytest.raises(HeaderBlockTooLarge):
        parser.close()
    truncated = MultipartParser(b"b")
    with pytest.raises(TruncatedBody):
        truncated.close()
    with pytest.raises(TruncatedBody):
        truncated.feed(b"--b--")
    with pytest.raises(TruncatedBody):
        truncated.close()


def test_close_twice_and_feed_after_close() -> None:
    """close() after a complete body returns [] again; feeding after close is a caller bug."""
    parser = MultipartParser(b"b")
    parser.feed(b"--b--")
    assert parser.close() == []
    assert parser.close() == []
    with pytest.raises(RuntimeError):
        parser.feed(b"x")


# --- Properties --------------------------------------------------------------

FRAGMENTS = [
    b"\r",
    b"\n",
    b"-",
    b"--",
    b" ",
    b"\t",
    b"b0undary",
    b"\r\n--b0undar",
    b"x",
    b"\x00",
]
_DELIMITER = re.compile(rb"\r\n--b0undary(?:--|[ \t]{0,%d}\r\n)" % MAX_TRANSPORT_PADDING_BYTES)
payloads = st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=8), max_size=30).map(b"".join)


def is_clean(payload: bytes) -> bool:
    """No delimiter inside ``payload``, nor made with the CRLFs around it in a body."""
    return _DELIMITER.search(b"\r\n" + payload + b"\r\n") is None


@given(
    parts=st.lists(payloads, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    leading=st.booleans(),
    trailing=st.booleans(),
)
def test_split_anywhere_same_events(
    parts: list[bytes], cuts: list[int], leading: bool, trailing: bool
) -> None:
    """However the body is split, the events are the same and match the parts."""
    assume(all(is_clean(p) for p in parts))
    body = build_multipart(parts, BOUNDARY, leading_crlf=leading, trailing_crlf=trailing)
    assert parse_chunks(split_at(body, cuts)) == expected(parts)


@given(payload=payloads, cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=8))
def test_lookalike_payloads_never_end_a_part(payload: bytes, cuts: list[int]) -> None:
    """A payload without a real delimiter is delivered whole, however it is split."""
    assume(is_clean(payload))
    body = build_multipart([payload, payload], BOUNDARY)
    assert parse_chunks(split_at(body, cuts)) == expected([payload, payload])


@given(
    chunks=st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=40), max_size=40),
    cap=st.integers(min_value=2, max_value=64),
)
def test_buffer_stays_bounded(chunks: list[bytes], cap: int) -> None:
    """Buffered bytes never exceed the header cap plus the longest delimiter line."""
    parser = MultipartParser(b"b0undary", max_header_bytes=cap)
    bound = cap + len(b"\r\n--b0undary") + MAX_TRANSPORT_PADDING_BYTES + 2
    for chunk in [b"--b0undary\r\n", *chunks]:
        try:
            parser.feed(chunk)
        except StowError:
            return
        assert parser.buffered_bytes <= bound


def outcome(chunks: Iterable[bytes]) -> tuple[str, list[Event]]:
    """Feed ``chunks`` then close: ("ok", coalesced events) or (error class name, [])."""
    parser = MultipartParser(b"b0undary", max_header_bytes=32)
    events: list[Event] = []
    try:
        for chunk in chunks:
            events += parser.feed(chunk)
        events += parser.close()
    except StowError as error:
        return type(error).__name__, []
    assert all(len(e.data) > 0 for e in events if isinstance(e, PartData))
    return "ok", coalesce(events)


@given(
    chunks=st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=40), max_size=40),
    start=st.sampled_from([b"", b"--b0undary\r\n", b"--b0undary\r\n\r\n"]),
)
def test_arbitrary_bytes_raise_only_stow_error(chunks: list[bytes], start: bytes) -> None:
    """Any input gives events or a StowError, and the same outcome fed whole or split."""
    split = outcome([start, *chunks])
    whole = outcome([start + b"".join(chunks)])
    assert split == whole


DAMAGED = (
    b"--dmg\r\nContent-Type: application/dicom\r\n\r\nfirst part\r\n--dmg\r\nno colon here\r\n\r\n"
)


def test_damage_after_a_complete_part_in_the_same_chunk_keeps_that_part() -> None:
    """The events before the damage are yielded before the call that meets it
    raises, so a part that ended in the same chunk is still delivered whole."""
    parser = MultipartParser(b"dmg")
    events: list[Event] = []
    with pytest.raises(MalformedMultipart):
        for event in parser.events(DAMAGED):
            events.append(event)
    assert coalesce(events) == [
        PartStarted((("content-type", "application/dicom"),)),
        PartData(b"first part"),
        PartEnded(),
    ]


def test_after_damage_every_call_raises_again() -> None:
    """Once events() has raised, feed, events and close raise the same error (h11's ERROR)."""
    parser = MultipartParser(b"dmg")
    with pytest.raises(MalformedMultipart):
        list(parser.events(DAMAGED))
    with pytest.raises(MalformedMultipart):
        parser.feed(b"more")
    with pytest.raises(MalformedMultipart):
        next(parser.events(b"more"))
    with pytest.raises(MalformedMultipart):
        parser.close()


def test_feed_drops_the_events_of_a_damaged_chunk() -> None:
    """feed() is list(events()): a chunk that meets damage raises, returning nothing."""
    parser = MultipartParser(b"dmg")
    with pytest.raises(MalformedMultipart):
        parser.feed(DAMAGED)


def test_events_are_yielded_before_the_chunk_is_scanned_to_its_end() -> None:
    """Lazy: the first part's events come out before the parser reads the second part."""
    parser = MultipartParser(b"lazy")
    body = b"--lazy\r\n\r\nfirst\r\n--lazy\r\n\r\nsecond\r\n--lazy--"
    events = parser.events(body)
    assert next(events) == PartStarted(())
    assert parser._parts == 1  # the second header block is not reached yet
    assert coalesce(list(events)) == [
        PartData(b"first"),
        PartEnded(),
        PartStarted(()),
        PartData(b"second"),
        PartEnded(),
        BodyEnded(),
    ]


def test_a_chunk_left_half_read_fails_the_parser() -> None:
    """A consumer that stops taking a chunk's events cannot feed on: the rest was never read."""
    parser = MultipartParser(b"half")
    events = parser.events(b"--half\r\n\r\nfirst\r\n--half\r\n\r\nsecond")
    next(events)
    events.close()
    with pytest.raises(InternalError):
        parser.feed(b"\r\n--half--")
