"""The one STOW-RS client of the benchmarks: raw sockets, a body streamed as it is sent.

Every real STOW-RS client builds the whole request body in memory before it
sends it (README.md in this folder, "Why a client of our own"); this one never
holds more than one piece of it.  A body is a sequence of pieces: ``bytes``
(the multipart framing, a DICOM header from memory, or generated payload)
and ``FileRange`` (bytes of a file, sent from the page cache to the socket
with ``os.sendfile``, no copy through Python).  They go out in HTTP chunks of
``chunk_bytes`` with ``Transfer-Encoding: chunked``, or as one
``Content-Length`` body in writes of the same size.  The socket is corked for
the whole body so the small framing writes never leave as tiny packets (no
Nagle/delayed-ACK stalls).  The same client posts to our server, to Orthanc
and to the discard sink, so the sink's rate is this client's own ceiling: it
is not the bottleneck when that rate is above every server's.

Between pieces the client polls the socket: a server that answers before
the body is sent (our 503 or 413 from the headers) is read at once, and the
time to its status line is the refusal latency.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._studies import Instance
from tests.helpers import multipart_content_type

BOUNDARY = "twisted-stow-bench-boundary"
CONTENT_TYPE = multipart_content_type(BOUNDARY)
PART_HEAD = f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
CLOSE = f"\r\n--{BOUNDARY}--\r\n".encode()
# One HTTP chunk per MiB (python dicomweb-client uses 1,000,000 bytes).
CHUNK_BYTES = 1024 * 1024
TIMEOUT_SECONDS = 600.0
# A refused client waits this long before it tries again (not Retry-After's
# seconds), so the limit is pressed all the time.
RETRY_PAUSE_SECONDS = 0.1
# A server that never admits a request must fail the run, not hang it.
MAX_REFUSALS = 3000
# Statuses that are an answer, not a failure: stored, or refused for now.
_EXPECTED_STATUSES = (200, 503)

_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"


@dataclass(frozen=True, slots=True)
class FileRange:
    """``count`` bytes of the file at ``path`` from ``offset``, sent with ``os.sendfile``."""

    path: Path
    offset: int
    count: int


Piece = bytes | FileRange


@dataclass(frozen=True)
class Body:
    """A request body: its Content-Type, its exact length, and its pieces (iterated once)."""

    content_type: str
    length: int
    pieces: Iterable[Piece]


@dataclass
class Reply:
    """One POST as the client saw it."""

    status: int
    instances: int
    body_bytes: int  # the request body's size
    sent_bytes: int  # of the body, before the answer came (all of it unless refused early)
    seconds: float  # connect to last response byte
    status_seconds: float  # connect to the status line
    problem: str | None = None  # why the answer is neither "every instance stored" nor a 503
    send_seconds: float = 0.0  # connect to the last body byte sent (or the early answer)


def body_length(instances: Sequence[Instance]) -> int:
    return sum(len(PART_HEAD) + i.size for i in instances) + len(CLOSE)


def instances_body(instances: Sequence[Instance]) -> Body:
    """``instances`` as one multipart/related body: each header from memory
    (a variant's UIDs), the rest of each file with ``sendfile``."""

    def pieces() -> Iterator[Piece]:
        for instance in instances:
            yield PART_HEAD
            yield instance.header
            rest = instance.size - len(instance.header)
            yield FileRange(instance.path, len(instance.header), rest)
        yield CLOSE

    return Body(CONTENT_TYPE, body_length(instances), pieces())


def _head(port: int, path: str, content_type: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Content-Type: {content_type}\r\n"
        "Accept: application/dicom+json\r\n"
        f"{framing}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")


class _Answered(Exception):
    """The server answered before the whole body was sent."""


def _sendfile(sock: socket.socket, fd: int, offset: int, count: int) -> None:
    while count:
        try:
            sent = os.sendfile(sock.fileno(), fd, offset, count)
        except BlockingIOError:
            # A socket with a timeout is non-blocking underneath: wait until
            # the send buffer has room (the server reads again).
            _, writable, _ = select.select([], [sock], [], TIMEOUT_SECONDS)
            if not writable:
                raise TimeoutError("the server stopped reading") from None
            continue
        if sent == 0:
            raise BrokenPipeError("sendfile sent nothing")
        offset += sent
        count -= sent


class _BodySender:
    """Sends pieces as HTTP chunks (or plain writes) of ``chunk_bytes``.

    Small ``bytes`` pieces wait in ``pending`` and go out in front of the
    next file bytes, in the same HTTP chunk, so the framing adds no chunks.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        chunked: bool,
        chunk_bytes: int,
        on_progress: Callable[[int], None] | None,
    ) -> None:
        self.sock, self.chunked, self.chunk_bytes = sock, chunked, chunk_bytes
        self.on_progress = on_progress
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.sent = 0

    def send(self, pieces: Iterable[Piece]) -> None:
        """Send every piece, then the end of the body.  Raises ``_Answered``
        as soon as a response is waiting."""
        for piece in pieces:
            if isinstance(piece, FileRange):
                self._send_file(piece)
                continue
            self.pending.append(piece)
            self.pending_bytes += len(piece)
            if self.pending_bytes >= self.chunk_bytes:
                self._emit()
        if self.pending_bytes:
            self._emit()
        if self.chunked:
            self.sock.sendall(b"0\r\n\r\n")

    def _send_file(self, piece: FileRange) -> None:
        fd = os.open(piece.path, os.O_RDONLY)
        try:
            offset, left = piece.offset, piece.count
            while left:
                count = min(self.chunk_bytes - self.pending_bytes, left)
                self._emit(fd, offset, count)
                offset += count
                left -= count
        finally:
            os.close(fd)

    def _emit(self, fd: int = -1, offset: int = 0, count: int = 0) -> None:
        """One HTTP chunk: the pending bytes, then ``count`` bytes of ``fd``."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        if readable:
            raise _Answered
        size = self.pending_bytes + count
        if self.chunked:
            self.sock.sendall(b"%x\r\n" % size)
        for piece in self.pending:
            self.sock.sendall(piece)
        if count:
            _sendfile(self.sock, fd, offset, count)
        if self.chunked:
            self.sock.sendall(b"\r\n")
        self.pending, self.pending_bytes = [], 0
        self.sent += size
        if self.on_progress is not None:
            self.on_progress(self.sent)


def post(
    port: int,
    path: str,
    body: Body,
    *,
    chunked: bool,
    uids: Collection[str] = (),
    check: bool = True,
    chunk_bytes: int = CHUNK_BYTES,
    on_progress: Callable[[int], None] | None = None,
) -> Reply:
    """POST ``body`` to 127.0.0.1:``port`` over a new connection; read the whole answer.

    ``uids``: the SOP Instance UIDs in the body.  With ``check``, a 200 must
    list every one of them in ReferencedSOPSequence and have no
    FailedSOPSequence (the discard sink answers ``{}``, so it is not
    checked); any status but 200 and 503 is a problem.  ``on_progress`` is
    called with the body bytes sent so far after each chunk.
    """
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_SECONDS) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        sender = _BodySender(
            sock, chunked=chunked, chunk_bytes=chunk_bytes, on_progress=on_progress
        )
        try:
            sock.sendall(_head(port, path, body.content_type, None if chunked else body.length))
            sender.send(body.pieces)
        except (_Answered, BrokenPipeError, ConnectionResetError):
            pass  # an early answer (or a close after one): read it below
        send_seconds = time.monotonic() - started
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
        except (ConnectionResetError, http.client.RemoteDisconnected) as exc:
            now = time.monotonic() - started
            problem = f"no answer: {exc}"
            return Reply(0, len(uids), body.length, sender.sent, now, now, problem, send_seconds)
        status_seconds = time.monotonic() - started
        answer = response.read()
    seconds = time.monotonic() - started
    reply = Reply(
        response.status,
        len(uids),
        body.length,
        sender.sent,
        seconds,
        status_seconds,
        send_seconds=send_seconds,
    )
    if response.status == 200 and check:
        reply.problem = _check(answer, uids)
    elif response.status not in _EXPECTED_STATUSES:
        reply.problem = f"status {response.status}: {answer[:200]!r}"
    return reply


def post_instances(
    port: int, path: str, instances: Sequence[Instance], *, chunked: bool, check: bool = True
) -> Reply:
    """POST ``instances`` (``instances_body``) and check the answer lists them all."""
    uids = [instance.sop_instance_uid for instance in instances]
    return post(port, path, instances_body(instances), chunked=chunked, uids=uids, check=check)


def _check(answer: bytes, uids: Collection[str]) -> str | None:
    try:
        model = json.loads(answer)
    except ValueError:
        return f"the answer is not JSON: {answer[:200]!r}"
    failed = model.get(_FAILED_SOP_SEQUENCE, {}).get("Value", [])
    if failed:
        return f"{len(failed)} instances in FailedSOPSequence: {failed[0]}"
    listed = {
        uid
        for item in model.get(_REFERENCED_SOP_SEQUENCE, {}).get("Value", [])
        for uid in item.get(_REFERENCED_SOP_INSTANCE_UID, {}).get("Value", [])
    }
    missing = set(uids) - listed
    if missing:
        return f"{len(missing)} of {len(uids)} instances not in ReferencedSOPSequence"
    return None


@dataclass
class Batch:
    """Several clients posting a list of requests: every answer, and the wall time."""

    clients: int
    replies: list[Reply] = field(default_factory=list)
    seconds: float = 0.0


def run_clients(
    port: int,
    path: str,
    requests: Sequence[Sequence[Instance]],
    clients: int,
    *,
    chunked: bool,
    check: bool = True,
) -> Batch:
    """``clients`` threads take the requests from one queue until all are
    stored; a 503 puts its request back after ``RETRY_PAUSE_SECONDS``."""
    queue = deque(requests)
    lock = threading.Lock()
    batch = Batch(clients)
    failures: list[BaseException] = []
    refused: dict[int, int] = {}

    def client() -> None:
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    request = queue.popleft()
                reply = post_instances(port, path, request, chunked=chunked, check=check)
                with lock:
                    batch.replies.append(reply)
                    if reply.status == 503:
                        refused[id(request)] = refused.get(id(request), 0) + 1
                        if refused[id(request)] > MAX_REFUSALS:
                            raise RuntimeError(f"more than {MAX_REFUSALS} refusals of one request")
                        queue.append(request)
                if reply.status == 503:
                    time.sleep(RETRY_PAUSE_SECONDS)
        except BaseException as exc:  # reported by the caller
            failures.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batch.seconds = time.monotonic() - started
    if failures:
        raise failures[0]
    return batch
