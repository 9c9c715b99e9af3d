"""Incremental multipart/related parser: bytes in, part events out.

``MultipartParser`` is fed the request body as it arrives and returns events;
it never collects a whole part.  It buffers only what it cannot decide yet: a
part's header block (capped) and a short tail that may be the start of a
delimiter.  Each ``PartData`` is a slice (a ``memoryview``) of the bytes fed,
so a multi-gigabyte part costs one ``bytes.find`` pass and no copies.

Framing is RFC 2046 §5.1.1: an optional preamble, then
``--boundary [padding] CRLF`` opens the first part; every following delimiter
is ``CRLF--boundary``, followed by optional transport padding and CRLF (next
part) or by ``--`` (close delimiter, after which the epilogue is ignored).
Standard library only: no Twisted (see tests/unit/test_core_is_pure.py).
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from enum import Enum, auto
from typing import Protocol, TypeAlias

from .errors import (
    HeaderBlockTooLarge,
    InternalError,
    MalformedMultipart,
    StowError,
    TruncatedBody,
)

# A part's header block (Content-Type, sometimes Content-Length, -Location or
# -Transfer-Encoding) is a few hundred bytes.  16 KiB is Twisted's own cap on a
# request's whole header section (HTTPChannel.totalHeadersSize), so a part
# cannot carry more header bytes than the request itself could.
MAX_HEADER_BLOCK_BYTES = 16 * 1024

# RFC 2046 §5.1.1 caps a boundary at 70 characters, but Orthanc sends 73; 200
# leaves room for other generators while keeping the undecided tail short.
MAX_BOUNDARY_BYTES = 200

# RFC 2046 §5.1.1 lets gateways add whitespace ("transport-padding") after a
# boundary.  No STOW-RS client we know sends any; the cap keeps the bytes held
# back while a delimiter is undecided bounded.  Longer runs are payload.
MAX_TRANSPORT_PADDING_BYTES = 32

# Lines in one part's header block (obs-fold continuations count).  Real
# clients send one to three (docs/CLIENTS.md); 100 is far above that and
# keeps a block of thousands of short lines (issue 17 point 2: 3,200 of
# them in 16 KiB parsed at ~2.3 MB/s) from costing more than a few tens of
# microseconds per part.
MAX_HEADER_LINES = 100

_CRLF = b"\r\n"
_BLANK_LINE = b"\r\n\r\n"
_PADDING = (0x20, 0x09)  # SP, HT
_DASH = 0x2D
_CR = 0x0D
_LF = 0x0A
# RFC 9110 §5.1 field-name = token.
_FIELD_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True, slots=True)
class PartStarted:
    """A part began; its headers, names lower-cased, values stripped, in order."""

    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class PartData:
    """Payload bytes of the current part: a slice of the input, never empty."""

    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class PartEnded:
    """The current part is complete: the delimiter after it was seen."""


@dataclass(frozen=True, slots=True)
class BodyEnded:
    """The close delimiter was seen; whatever follows (epilogue) is ignored."""


Event: TypeAlias = PartStarted | PartData | PartEnded | BodyEnded
# A step of the parser: yields events, returns where the next step starts.
_Step: TypeAlias = Generator[Event, None, "int | None"]


class BodyReader(Protocol):
    """What the request edge feeds: ``MultipartParser`` or ``SinglePartReader``.

    ``events`` is the streaming form: it yields a chunk's events one by one,
    and the ``next()`` that meets damage raises, after every event before it
    (as h11's ``Connection.next_event``).  ``feed`` is ``list(events(data))``.
    """

    def events(self, data: bytes) -> Iterator[Event]:
        """Consume the next body chunk, yielding the events it completes."""

    def feed(self, data: bytes) -> list[Event]:
        """Consume the next body chunk and return the events it completes."""

    def close(self) -> list[Event]:
        """Signal the end of the body; raise ``StowError`` if it is incomplete."""


class _State(Enum):
    PREAMBLE = auto()
    HEADERS = auto()
    BODY = auto()
    DONE = auto()
    CLOSED = auto()
    FAILED = auto()


class _Verdict(Enum):
    """What the bytes at a possible delimiter turned out to be."""

    NOT_DELIMITER = auto()
    UNDECIDED = auto()
    NEXT_PART = auto()
    CLOSE = auto()


class MultipartParser:
    """Turns a multipart/related body into events, chunk by chunk.

    ``boundary`` is the raw boundary (without ``--``), 1 to
    ``MAX_BOUNDARY_BYTES`` bytes.  ``events`` yields each event as it is
    decoded and raises ``MalformedMultipart`` (or its ``HeaderBlockTooLarge``)
    where the damage is, so a part completed before it in the same chunk is
    delivered whole; ``feed`` collects them, and raising drops them.  After
    any error every call raises again.  A consumer that stops taking a
    chunk's events early leaves the parser failed too: the rest of that chunk
    was never read.  ``PartData`` views share memory with the chunk fed.
    """

    def __init__(self, boundary: bytes, *, max_header_bytes: int = MAX_HEADER_BLOCK_BYTES) -> None:
        if not 1 <= len(boundary) <= MAX_BOUNDARY_BYTES:
            raise ValueError(f"boundary must be 1-{MAX_BOUNDARY_BYTES} bytes")
        if b"\r" in boundary or b"\n" in boundary:
            raise ValueError("boundary must not contain CR or LF")
        if max_header_bytes < len(_CRLF):
            raise ValueError("max_header_bytes must allow an empty header block")
        self._boundary = boundary
        self._delimiter = _CRLF + b"--" + boundary
        # Longest delimiter line: delimiter, padding, CRLF.
        self._max_line = len(self._delimiter) + MAX_TRANSPORT_PADDING_BYTES + 2
        self._max_header_bytes = max_header_bytes
        self._state = _State.PREAMBLE
        self._error: StowError | None = None
        self._parts = 0
        self._received = 0
        # RFC 2046 §5.1.1: the first dash-boundary may open the body without a
        # CRLF before it.  Scanning as if one were there lets a single search
        # for CRLF--boundary serve both forms.  _virtual counts the leading
        # bytes of _tail that were never received and are not payload.
        self._tail = _CRLF
        self._virtual = len(_CRLF)
        # The delimiter's CRLF seeds the header buffer, so one search for
        # CRLFCRLF finds both an empty header block and the end of a full one.
        self._header_buf = bytearray()
        self._header_searched = 0

    @property
    def buffered_bytes(self) -> int:
        """Bytes held back until more input decides them (header block or tail)."""
        return len(self._tail) + len(self._header_buf)

    def feed(self, data: bytes) -> list[Event]:
        """Consume the next chunk of the body; return the events it completes."""
        return list(self.events(data))

    def events(self, data: bytes) -> Iterator[Event]:
        """Consume the next chunk of the body, yielding its events as decoded."""
        self._raise_if_failed()
        if self._state is _State.CLOSED:
            raise RuntimeError("feed() after close()")
        if self._state is _State.DONE or not data:
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        self._received += len(data)
        pos: int | None = 0
        try:
            # Each step returns None once data is used up or the body ended.
            while pos is not None:
                if self._state is _State.HEADERS:
                    pos = yield from self._feed_headers(data, pos)
                else:
                    pos = yield from self._feed_body(data, pos)
        except StowError as exc:
            self._fail(exc)
            raise
        except GeneratorExit:
            self._fail(InternalError("the events of an earlier chunk were not all taken"))
            raise

    def close(self) -> list[Event]:
        """Signal the end of the body; raise ``TruncatedBody`` if it is incomplete."""
        self._raise_if_failed()
        if self._state in (_State.DONE, _State.CLOSED):
            self._state = _State.CLOSED
            return []
        if self._state is _State.PREAMBLE:
            if self._received == 0:
                detail = "the body is empty; it needs at least a close delimiter"
            else:
                detail = f"no boundary delimiter --{self._boundary_text()} in the body"
        elif self._state is _State.HEADERS:
            detail = f"the body ended inside the header block of part {self._parts + 1}"
        else:
            detail = f"the body ended inside part {self._parts}, before the close delimiter"
        error = TruncatedBody(detail)
        self._fail(error)
        raise error

    def _fail(self, error: StowError) -> None:
        self._state = _State.FAILED
        self._error = error

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise type(self._error)(self._error.detail)

    def _boundary_text(self) -> str:
        return self._boundary.decode("latin-1")

    def _feed_body(self, data: bytes, pos: int) -> _Step:
        """Scan preamble or payload from ``pos``; return where headers start, or None."""
        if self._tail:
            # Candidates that began in an earlier chunk are decided on a small
            # window, so the chunk itself is never copied.
            tail, skip = self._tail, self._virtual
            self._tail, self._virtual = b"", 0
            window = tail + data[pos : pos + self._max_line]
            start = tail.find(b"\r")
            while start != -1:
                verdict, end = self._classify(window, start)
                if verdict is not _Verdict.NOT_DELIMITER:
                    yield from self._emit(tail, skip, start)
                    if verdict is _Verdict.UNDECIDED:
                        # Only when the window holds all of data: it is all kept.
                        self._tail = window[start:]
                        self._virtual = skip if start == 0 else 0
                        return None
                    # The tail held no decidable delimiter, so end > len(tail).
                    return (yield from self._end_part(verdict, pos + end - len(tail)))
                start = tail.find(b"\r", start + 1)
            yield from self._emit(tail, skip, len(tail))
        delimiter = self._delimiter
        search = pos
        while (found := data.find(delimiter, search)) != -1:
            verdict, end = self._classify(data, found)
            if verdict is _Verdict.NOT_DELIMITER:
                search = found + 1  # e.g. CRLF--boundaryX: payload, RFC 2046 §5.1.1
                continue
            yield from self._emit(data, pos, found)
            if verdict is _Verdict.UNDECIDED:
                self._tail = data[found:]
                return None
            return (yield from self._end_part(verdict, end))
        # No whole delimiter left: hold back the shortest suffix that could
        # still become one, emit everything before it.
        keep = self._partial_start(data, max(pos, len(data) - len(delimiter) + 1))
        yield from self._emit(data, pos, keep)
        self._tail = data[keep:]
        return None

    def _classify(self, buf: bytes, start: int) -> tuple[_Verdict, int]:
        """Decide whether ``buf[start:]`` begins a delimiter; return it and its end."""
        delimiter = self._delimiter
        head = buf[start : start + len(delimiter)]
        if head != delimiter:
            if len(head) < len(delimiter) and delimiter.startswith(head):
                return _Verdict.UNDECIDED, 0
            return _Verdict.NOT_DELIMITER, 0
        index = start + len(delimiter)
        size = len(buf)
        if index < size and buf[index] == _DASH:
            if index + 1 >= size:
                return _Verdict.UNDECIDED, 0
            if buf[index + 1] == _DASH:
                return _Verdict.CLOSE, index + 2
            return _Verdict.NOT_DELIMITER, 0
        padding_end = start + len(delimiter) + MAX_TRANSPORT_PADDING_BYTES
        while index < size and buf[index] in _PADDING:
            index += 1
            if index > padding_end:
                return _Verdict.NOT_DELIMITER, 0
        if index >= size:
            return _Verdict.UNDECIDED, 0
        if buf[index] != _CR:
            return _Verdict.NOT_DELIMITER, 0
        if index + 1 >= size:
            return _Verdict.UNDECIDED, 0
        if buf[index + 1] != _LF:
            return _Verdict.NOT_DELIMITER, 0
        return _Verdict.NEXT_PART, index + 2

    def _partial_start(self, data: bytes, start: int) -> int:
        """Return where the shortest suffix that prefixes the delimiter starts."""
        candidate = data.find(b"\r", start)
        while candidate != -1:
            if self._delimiter.startswith(data[candidate:]):
                return candidate
            candidate = data.find(b"\r", candidate + 1)
        return len(data)

    def _emit(self, buf: bytes, start: int, stop: int) -> Iterator[Event]:
        if stop > start and self._state is _State.BODY:
            yield PartData(memoryview(buf)[start:stop])

    def _end_part(self, verdict: _Verdict, end: int) -> _Step:
        """Act on a delimiter ending at ``end``; return where headers start, or None."""
        if self._state is _State.BODY:
            yield PartEnded()
        if verdict is _Verdict.CLOSE:
            yield BodyEnded()
            self._state = _State.DONE
            return None
        self._state = _State.HEADERS
        self._header_buf = bytearray(_CRLF)
        self._header_searched = 0
        return end

    def _feed_headers(self, data: bytes, pos: int) -> _Step:
        """Collect a header block; return where its part's payload starts, or None."""
        cap = self._max_header_bytes
        if len(self._header_buf) == len(_CRLF):
            # Usual case: the whole block is in this chunk, so nothing is copied
            # but the block itself.  A block is its lines plus the empty line.
            if data.startswith(_CRLF, pos):
                return (yield from self._start_part(b"", pos + len(_CRLF)))
            found = data.find(_BLANK_LINE, pos, pos + cap)
            if found != -1:
                return (yield from self._start_part(data[pos:found], found + len(_BLANK_LINE)))
        buf = self._header_buf
        old = len(buf)
        take = min(len(data) - pos, cap + len(_CRLF) - old)
        buf += memoryview(data)[pos : pos + take]
        found = buf.find(_BLANK_LINE, max(self._header_searched - 3, 0))
        if found == -1:
            self._header_searched = len(buf)
            if len(buf) - len(_CRLF) < cap:
                return None  # all of data was taken
        if found == -1 or found + len(_CRLF) > cap:
            raise HeaderBlockTooLarge(
                f"the header block of part {self._parts + 1} exceeds {cap} bytes"
            )
        block = bytes(buf[len(_CRLF) : found])
        # The empty line was not in the old buffer, so this moves forward.
        return (yield from self._start_part(block, pos + found + len(_BLANK_LINE) - old))

    def _start_part(self, block: bytes, body_start: int) -> Generator[Event, None, int]:
        """Emit ``PartStarted`` for a header block; return ``body_start``."""
        headers = _parse_header_block(block)
        self._parts += 1
        yield PartStarted(headers)
        self._state = _State.BODY
        self._header_buf = bytearray()
        # RFC 2046 §5.1.1: a part's body is optional, so the empty line's CRLF
        # may also be the CRLF of the next delimiter ("--b CRLF CRLF --b--" is
        # one empty part).  Re-read it as a virtual, non-payload tail.
        self._tail = _CRLF
        self._virtual = len(_CRLF)
        return body_start


def _parse_header_block(block: bytes) -> tuple[tuple[str, str], ...]:
    """Parse ``Name: value`` lines (CRLF-separated, no empty line) into pairs.

    Linear, and cheap per line: the lines are counted and capped first
    (one C pass), then a block of plain lines is split once and each line
    partitioned at its colon.  Only a block with obs-fold lines or damage
    takes the slow path, which joins folds and names the error.
    """
    if not block:
        return ()
    lines = block.split(_CRLF)
    if len(lines) > MAX_HEADER_LINES:
        raise HeaderBlockTooLarge(f"a part header block has more than {MAX_HEADER_LINES} lines")
    breaks = len(lines) - 1
    if block.count(b"\r") != breaks or block.count(b"\n") != breaks or b"\x00" in block:
        return _parse_header_lines(lines)  # a bare CR, LF or NUL: the error
    headers: list[tuple[str, str]] = []
    for line in lines:
        name, colon, value = line.partition(b":")
        name = name.rstrip(b" \t")
        if not colon or _FIELD_NAME.fullmatch(name) is None:
            return _parse_header_lines(lines)  # obs-fold, or a malformed line
        headers.append((name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")))
    return tuple(headers)


def _parse_header_lines(lines: list[bytes]) -> tuple[tuple[str, str], ...]:
    """The slow path: obs-fold continuations, and the error for a bad line."""
    names: list[str] = []
    values: list[list[str]] = []
    for line in lines:
        if b"\r" in line or b"\n" in line or b"\x00" in line:
            # RFC 9110 §5.5: bare CR, LF or NUL in a field must be rejected.
            raise MalformedMultipart("a part header contains a bare CR, LF or NUL")
        if line[:1] in (b" ", b"\t"):
            # obs-fold (RFC 5322 §2.2.3, RFC 9110 §5.5): join with one space.
            if not names:
                raise MalformedMultipart("a part header block starts with a continuation")
            folded = line.strip(b" \t").decode("latin-1")
            if folded:
                values[-1].append(folded)
            continue
        colon = line.find(b":")
        name_bytes = line[:colon].rstrip(b" \t") if colon > 0 else b""
        if not _FIELD_NAME.fullmatch(name_bytes):
            shown = line[:40].decode("latin-1")
            raise MalformedMultipart(f"malformed part header line {shown!r}")
        names.append(name_bytes.decode("ascii").lower())
        value = line[colon + 1 :].strip(b" \t").decode("latin-1")
        values.append([value] if value else [])
    # Pieces joined once at the end: a chain of folds stays linear.
    return tuple((name, " ".join(pieces)) for name, pieces in zip(names, values, strict=True))
