"""Malformed input over real HTTP: each case gets its standard answer, writes nothing
outside the storage root, and leaves the server able to store a good upload.

The storage root sits a few directories below the test's temporary directory,
so a path built from a hostile UID (``../``) would land inside that directory,
where the test looks for it (as well as at a few absolute paths).
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.dicom_files import CT, MR, NO_META, read
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.conftest import Server, _serve
from tests.integration.crafted import instance, stored_location
from tests.integration.observe import poll, staging_files, stored_files
from tests.integration.streaming import failure_reasons, json_body, status_of
from twisted_stow.core.config import StowConfig

B = "malformed-boundary"
CONTENT_TYPE = multipart_content_type(B)
MAX_BODY = 2 * 1024 * 1024
CONFIG = StowConfig(max_body_bytes=MAX_BODY, header_timeout_seconds=1.0)
# Where a path escaping the root by ../ components would end up, absolutely.
ESCAPE_NAME = "twisted-stow-escape"
ABSOLUTE_TARGETS = [Path("/tmp") / ESCAPE_NAME, Path("/") / ESCAPE_NAME]
OTHER = "0008119A"  # OtherFailuresSequence
FAILED = "00081198"  # FailedSOPSequence


def request(
    body: bytes,
    *,
    content_type: str | None = CONTENT_TYPE,
    path: str = "/studies",
    framing: str = "length",
    extra: bytes = b"",
) -> bytes:
    """A POST with ``body``; ``framing``: "length", "chunked" (body sent as is,
    already chunk-coded) or "none"."""
    lines = [f"POST {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    if content_type is not None:
        lines.append(b"Content-Type: " + content_type.encode())
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n" + body


def chunked(body: bytes, size: int = 4096) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"


def part(payload: bytes, headers: bytes = b"Content-Type: application/dicom\r\n") -> bytes:
    return f"--{B}\r\n".encode() + headers + b"\r\n" + payload + b"\r\n"


def close() -> bytes:
    return f"--{B}--\r\n".encode()


@dataclass
class Case:
    """One malformed request and what must come of it."""

    name: str
    make: Callable[[], tuple[bytes, list[bytes]]]  # (raw request, instances it must store)
    status: int
    reasons: dict[str, list[int]] = field(default_factory=dict)  # sequence tag → reasons
    slow: bool = False  # send the request a byte every 0.2 s


def plain(raw: bytes) -> Callable[[], tuple[bytes, list[bytes]]]:
    return lambda: (raw, [])


def multipart_of(*parts: bytes) -> bytes:
    return build_multipart(list(parts), B)


def hostile(**attributes: str) -> Callable[[], tuple[bytes, list[bytes]]]:
    return lambda: (request(multipart_of(instance(CT, **attributes))), [])


def with_good_first(tail: bytes) -> Callable[[], tuple[bytes, list[bytes]]]:
    def make() -> tuple[bytes, list[bytes]]:
        good = instance(CT)
        return request(b"\r\n" + part(good) + tail), [good]

    return make


LONG_UID = "1." + "2" * 70
ESCAPE = f"../../../../{ESCAPE_NAME}"

CASES = [
    # The media type and its boundary.
    Case(
        "no-boundary",
        plain(
            request(
                multipart_of(read(CT)), content_type='multipart/related; type="application/dicom"'
            )
        ),
        400,
    ),
    Case(
        "empty-boundary",
        plain(request(multipart_of(read(CT)), content_type='multipart/related; boundary=""')),
        400,
    ),
    Case(
        "boundary-too-long",
        plain(
            request(multipart_of(read(CT)), content_type="multipart/related; boundary=" + "b" * 201)
        ),
        400,
    ),
    Case(
        "other-boundary-in-body",
        plain(request(build_multipart([read(CT)], "not-the-declared-one"))),
        400,
    ),
    Case("no-content-type", plain(request(multipart_of(read(CT)), content_type=None)), 415),
    Case("text-plain", plain(request(read(CT), content_type="text/plain")), 415),
    Case(
        "metadata-type",
        plain(
            request(
                multipart_of(b"[]"),
                content_type=f'multipart/related; type="application/dicom+json"; boundary={B}',
            )
        ),
        415,
    ),
    Case(
        "form-data",
        plain(request(multipart_of(read(CT)), content_type=f"multipart/form-data; boundary={B}")),
        415,
    ),
    # multipart framing.
    Case("no-closing-delimiter", plain(request(b"\r\n" + part(read(CT)))), 400),
    Case(
        "truncated-after-a-whole-part",
        with_good_first(part(read(MR))[:5000]),
        202,
        {OTHER: [0xC000]},
    ),
    Case("truncated-inside-the-only-part", plain(request(b"\r\n" + part(read(CT))[:20000])), 400),
    Case(
        "part-header-block-too-large",
        plain(request(b"\r\n" + part(read(CT), b"X-Pad: " + b"p" * 20000 + b"\r\n") + close())),
        400,
    ),
    Case(
        "part-header-without-colon",
        plain(request(b"\r\n" + part(read(CT), b"this is no header\r\n") + close())),
        400,
    ),
    Case(
        "part-header-with-nul",
        plain(
            request(b"\r\n" + part(read(CT), b"Content-Type: application/\x00dicom\r\n") + close())
        ),
        400,
    ),
    Case("bare-lf-framing", plain(request(multipart_of(read(CT)).replace(b"\r\n", b"\n"))), 400),
    Case("zero-length-part", plain(request(b"\r\n" + part(b"") + close())), 409, {OTHER: [0xC000]}),
    Case(
        "zero-length-part-then-good", with_good_first(part(b"") + close()), 202, {OTHER: [0xC000]}
    ),
    Case("only-the-close-delimiter", plain(request(b"\r\n" + close())), 400),
    Case("empty-body", plain(request(b"")), 400),
    # Part payloads that are not (valid) DICOM.
    Case(
        "garbage-instead-of-dicom",
        plain(request(multipart_of(os.urandom(50_000)))),
        409,
        {OTHER: [0xC000]},
    ),
    Case(
        "dicom-without-file-meta",
        plain(request(multipart_of(read(NO_META)))),
        409,
        {OTHER: [0xC000]},
    ),
    Case(
        "dicom-cut-inside-its-header",
        plain(request(multipart_of(read(CT)[:300]))),
        409,
        {OTHER: [0xA900]},
    ),
    Case(
        "part-of-another-type",
        plain(request(b"\r\n" + part(read(CT), b"Content-Type: text/plain\r\n") + close())),
        409,
        {OTHER: [0xC000]},
    ),
    # Hostile UIDs: path traversal and over-long UIDs.
    Case("study-uid-with-dot-dot", hostile(StudyInstanceUID=ESCAPE), 409, {FAILED: [0xA900]}),
    Case("series-uid-with-dot-dot", hostile(SeriesInstanceUID=ESCAPE), 409, {FAILED: [0xA900]}),
    Case("sop-uid-with-dot-dot", hostile(SOPInstanceUID=ESCAPE), 409, {OTHER: [0xA900]}),
    Case(
        "sop-uid-absolute-path",
        hostile(SOPInstanceUID=f"/tmp/{ESCAPE_NAME}"),
        409,
        {OTHER: [0xA900]},
    ),
    Case("sop-uid-over-64-chars", hostile(SOPInstanceUID=LONG_UID), 409, {OTHER: [0xA900]}),
    Case("study-uid-over-64-chars", hostile(StudyInstanceUID=LONG_UID), 409, {FAILED: [0xA900]}),
    Case(
        "study-in-url-with-dot-dot",
        plain(request(multipart_of(read(CT)), path="/studies/..%2F..%2F" + ESCAPE_NAME)),
        404,
    ),
    Case(
        "study-in-url-is-dot-dot",
        plain(request(multipart_of(read(CT)), path="/studies/%2E%2E")),
        400,
    ),
    # HTTP framing: chunked coding, lengths, headers.
    Case(
        "chunk-size-not-hex",
        plain(request(b"zz\r\n" + b"x" * 10 + b"\r\n0\r\n\r\n", framing="chunked")),
        400,
    ),
    Case(
        "absurd-chunk-size",
        plain(request(b"ffffffffffffffffffffffff\r\n" + multipart_of(read(CT)), framing="chunked")),
        413,
    ),
    Case(
        "chunk-size-line-too-long", plain(request(b"1" * 20000 + b"\r\n", framing="chunked")), 400
    ),
    Case(
        "chunk-without-crlf-after-data",
        plain(request(b"5\r\nhelloXX0\r\n\r\n", framing="chunked")),
        400,
    ),
    Case(
        "chunked-over-the-body-limit",
        plain(request(chunked(multipart_of(os.urandom(MAX_BODY + 100_000))), framing="chunked")),
        413,
    ),
    Case(
        "content-length-over-the-limit",
        plain(request(b"", extra=b"Content-Length: %d\r\n" % (MAX_BODY + 1), framing="none")),
        413,
    ),
    Case(
        "content-length-and-chunked",
        plain(
            request(
                chunked(multipart_of(read(CT))), framing="chunked", extra=b"Content-Length: 10\r\n"
            )
        ),
        400,
    ),
    Case(
        "content-length-not-a-number",
        plain(request(b"abc", framing="none", extra=b"Content-Length: 1e3\r\n")),
        400,
    ),
    Case("no-length-at-all", plain(request(multipart_of(read(CT)), framing="none")), 411),
    Case(
        "unknown-transfer-coding",
        plain(request(b"x", framing="none", extra=b"Transfer-Encoding: gzip\r\n")),
        400,
    ),
    Case(
        "request-headers-too-large",
        plain(request(b"", extra=b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(200)))),
        431,  # RFC 6585 §5, was Twisted's bare 400
    ),
    Case("slow-headers", plain(request(multipart_of(read(CT)))), 408, slow=True),
]


def exchange(port: int, raw: bytes, slow: bool = False) -> bytes:
    """Blocking: send ``raw`` and read one response (up to its Content-Length),
    or whatever arrives before the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            if slow:
                sock.settimeout(0.2)
                for byte in raw:
                    sock.sendall(bytes([byte]))
                    try:
                        first = sock.recv(65536)
                    except TimeoutError:
                        continue
                    return first + _rest(sock, first)
            else:
                sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused early; the answer may still be waiting
        sock.settimeout(10)
        return _rest(sock, b"")


def _rest(sock: socket.socket, received: bytes) -> bytes:
    while True:
        head, sep, body = received.partition(b"\r\n\r\n")
        if sep:
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")[1:]
                    if line.lower().startswith(b"content-length:")
                ),
                None,
            )
            if length is not None and len(body) >= length:
                return received
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return received
        if not data:
            return received
        received += data


def tree(top: Path, skip: Path) -> set[tuple[str, int]]:
    """Every path under ``top`` outside ``skip``, with its size (0 for directories)."""
    found = set()
    for directory, dirs, files in os.walk(top):
        here = Path(directory)
        dirs[:] = [d for d in dirs if here / d != skip]
        for name in dirs + files:
            path = here / name
            found.add((str(path), path.lstat().st_size if name in files else 0))
    return found


@pytest_twisted.async_yield_fixture
async def deep_server(tmp_path: Path) -> AsyncIterator[Server]:
    """An in-process server whose root is tmp_path/a/b/c/store."""
    async for server in _serve(tmp_path / "a" / "b" / "c", CONFIG):
        yield server


def test_the_suite_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
@pytest_twisted.ensureDeferred
async def test_malformed_request(deep_server: Server, tmp_path: Path, case: Case) -> None:
    root = deep_server.storage
    before = tree(tmp_path, root)
    raw, must_store = case.make()
    answer = await deferToThread(exchange, deep_server.port, raw, case.slow)
    assert answer, "the server closed without an answer"
    assert status_of(answer) == case.status, answer[:600]
    if case.status >= 400 and case.status != 409:
        assert json_body(answer)["status"] == case.status
    for tag, reasons in case.reasons.items():
        assert failure_reasons(json_body(answer), tag) == reasons, answer
    # Nothing was written outside the root (nor at an absolute escape target).
    assert tree(tmp_path, root) == before
    assert not any(target.exists() for target in ABSOLUTE_TARGETS)
    assert not any(ESCAPE_NAME in str(p) for p in root.rglob("*"))
    for data in must_store:
        assert await poll(lambda data=data: stored_location(root, data).exists())
        assert stored_location(root, data).read_bytes() == data
    assert await poll(lambda: staging_files(root) == [])
    assert {p.read_bytes() for p in stored_files(root)} == set(must_store)

    # The same server still stores a good upload.
    good = instance(MR)
    answer = await deferToThread(exchange, deep_server.port, request(multipart_of(good)))
    assert status_of(answer) == 200, answer[:600]
    assert stored_location(root, good).read_bytes() == good
    assert deep_server.handle.stow.slots.active == 0 or await poll(
        lambda: deep_server.handle.stow.slots.active == 0
    )
