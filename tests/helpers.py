"""The one multipart/related body builder, shared by tests and benchmarks.

``build_multipart`` returns a whole body as bytes; ``iter_multipart`` yields a
body of any size in fixed-size chunks without ever holding it whole (the
2 GiB benchmark); ``multipart_content_type`` gives the matching header value.
The framing is RFC 2046 §5.1.1 and matches what real clients send (the table
in benchmarks/README.md, "Why a client of our own"): by default a CRLF before
the first boundary and one after the close delimiter.  ``coalesce`` normalises
parser events for comparisons.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable, Iterator, Sequence

from twisted_stow.core.multipart import Event, PartData

DEFAULT_BOUNDARY = "twisted-stow-test-boundary"
DICOM = "application/dicom"
# Chunk size of iter_multipart: what one socket read of the server returns.
DEFAULT_CHUNK_BYTES = 256 * 1024
# Synthetic payloads repeat one random block of this size (deterministic).
_SYNTHETIC_BLOCK_BYTES = 1024 * 1024

Headers = Sequence[tuple[str, str]]


def multipart_content_type(
    boundary: str = DEFAULT_BOUNDARY,
    *,
    quote_type: bool = True,
    quote_boundary: bool = False,
) -> str:
    """The Content-Type of a body built here (``multipart/related; type=...; boundary=...``)."""
    root_type = f'"{DICOM}"' if quote_type else DICOM
    value = f'"{boundary}"' if quote_boundary else boundary
    return f"multipart/related; type={root_type}; boundary={value}"


def _header_block(headers: Headers) -> bytes:
    """Header lines plus the empty line that ends them."""
    return b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers) + b"\r\n"


def _default_headers(content_type: str | None) -> Headers:
    return [("Content-Type", content_type)] if content_type is not None else []


def build_multipart(
    parts: Sequence[bytes],
    boundary: str = DEFAULT_BOUNDARY,
    *,
    part_headers: Sequence[Headers] | None = None,
    content_type: str | None = DICOM,
    leading_crlf: bool = True,
    trailing_crlf: bool = True,
    preamble: bytes = b"",
    epilogue: bytes = b"",
) -> bytes:
    """A whole multipart/related body holding ``parts`` as payloads.

    Each part gets ``part_headers[i]`` if given, else one ``Content-Type:
    content_type`` header (none when ``content_type`` is None).
    ``leading_crlf``: a CRLF before the first ``--boundary`` (required after a
    preamble).  ``trailing_crlf``: a CRLF after the close delimiter, before
    ``epilogue``.  The payloads must not contain the delimiter.
    """
    if preamble and not leading_crlf:
        raise ValueError("RFC 2046 §5.1.1: a preamble must end with CRLF")
    if part_headers is not None and len(part_headers) != len(parts):
        raise ValueError("part_headers needs one header list per part")
    dash_boundary = b"--" + boundary.encode("latin-1")
    out = [preamble, b"\r\n" if leading_crlf else b""]
    for index, payload in enumerate(parts):
        headers = (
            part_headers[index] if part_headers is not None else _default_headers(content_type)
        )
        out += [dash_boundary, b"\r\n", _header_block(headers), payload, b"\r\n"]
    out += [dash_boundary, b"--", b"\r\n" if trailing_crlf else b"", epilogue]
    return b"".join(out)


@functools.cache
def _synthetic_block(seed: int) -> bytes:
    return random.Random(seed).randbytes(_SYNTHETIC_BLOCK_BYTES)


def synthetic_payload(size: int, *, seed: int = 0) -> Iterator[bytes]:
    """Yield ``size`` bytes of deterministic random payload in blocks of up to 1 MiB."""
    block = _synthetic_block(seed)
    view = memoryview(block)
    while size > 0:
        piece = view[: min(size, len(block))]
        size -= len(piece)
        yield piece.tobytes() if len(piece) < len(block) else block


def iter_multipart(
    parts: Iterable[int | bytes | Iterable[bytes]],
    boundary: str = DEFAULT_BOUNDARY,
    *,
    content_type: str | None = DICOM,
    chunk_size: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[bytes]:
    """Yield a multipart/related body in chunks of ``chunk_size`` bytes (the last may be shorter).

    Each part is given as an ``int`` (that many bytes of ``synthetic_payload``),
    ``bytes``, or an iterable of payload chunks (e.g. a generator reading a
    file), so a body of any size streams in bounded memory.  The framing is
    ``build_multipart``'s defaults: same bytes for the same parts.
    """
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    block = _synthetic_block(0)
    if delimiter in block + block[: len(delimiter)]:  # payloads repeat the block
        raise ValueError("the boundary occurs in the synthetic payload; choose another")
    return _rechunk(_pieces(parts, boundary, content_type), chunk_size)


def _pieces(
    parts: Iterable[int | bytes | Iterable[bytes]],
    boundary: str,
    content_type: str | None,
) -> Iterator[bytes]:
    """The body as a stream of pieces of any size."""
    dash_boundary = b"--" + boundary.encode("latin-1")
    header_block = _header_block(_default_headers(content_type))
    yield b"\r\n"
    for part in parts:
        yield dash_boundary + b"\r\n" + header_block
        if isinstance(part, int):
            yield from synthetic_payload(part)
        elif isinstance(part, bytes):
            yield part
        else:
            yield from part
        yield b"\r\n"
    yield dash_boundary + b"--\r\n"


def _rechunk(pieces: Iterable[bytes], chunk_size: int) -> Iterator[bytes]:
    """Regroup pieces of any size into chunks of ``chunk_size`` bytes, one copy each."""
    pending = bytearray()
    for piece in pieces:
        view = memoryview(piece)
        if pending:
            taken = view[: chunk_size - len(pending)]
            pending += taken
            view = view[len(taken) :]
            if len(pending) < chunk_size:
                continue
            yield bytes(pending)
            pending = bytearray()
        while len(view) >= chunk_size:
            yield view[:chunk_size].tobytes()
            view = view[chunk_size:]
        pending += view
    if pending:
        yield bytes(pending)


def coalesce(events: Iterable[Event]) -> list[Event]:
    """Merge runs of ``PartData`` into one ``PartData(bytes)``: equal however the body was split."""
    merged: list[Event] = []
    pending: list[bytes] = []
    for event in events:
        if isinstance(event, PartData):
            pending.append(bytes(event.data))
            continue
        if pending:
            merged.append(PartData(b"".join(pending)))
            pending = []
        merged.append(event)
    if pending:
        merged.append(PartData(b"".join(pending)))
    return merged
