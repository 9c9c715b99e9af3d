"""A streaming STOW-RS client: raw sockets, ``sendfile`` from the DICOM files.

Every real client builds the whole body in memory (../shared/PEERS.md); this
one never holds more than a part header.  The multipart framing and the HTTP
chunk headers are small ``send`` calls; the files go from the page cache to
the socket with ``os.sendfile`` (no copy through Python), in pieces of
``CHUNK_BYTES``.  The socket is corked for the whole body so the small
framing writes never leave as tiny packets (no Nagle/delayed-ACK stalls).
The same client posts to our server, to Orthanc and to the discard sink, so
the sink's rate is this client's own ceiling: it is not the bottleneck when
that rate is above every server's.

Between pieces the client polls the socket: a server that answers before
the body is sent (our 503 from the headers) is read at once, and the time to
its status line is the refusal latency.
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
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks._studies import Instance

BOUNDARY = "twisted-stow-bench-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
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

_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"


@dataclass
class Reply:
    """One POST as the client saw it."""

    status: int
    instances: int
    body_bytes: int  # the request body's size
    sent_bytes: int  # of the body, before the answer came (all of it unless refused early)
    seconds: float  # connect to last response byte
    status_seconds: float  # connect to the status line
    problem: str | None = None  # why a 200 is not "every instance stored"


def body_length(instances: Sequence[Instance]) -> int:
    return sum(len(PART_HEAD) + i.size for i in instances) + len(CLOSE)


def _head(port: int, path: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Content-Type: {CONTENT_TYPE}\r\n"
        "Accept: application/dicom+json\r\n"
        f"{framing}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")


class _Answered(Exception):
    """The server answered before the whole body was sent."""


def _answered(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


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


def _send_body(sock: socket.socket, instances: Sequence[Instance], chunked: bool) -> int:
    """Send the multipart body; returns the body bytes sent.  Raises
    ``_Answered`` as soon as a response is waiting."""
    sent = 0
    for instance in instances:
        fd = os.open(instance.path, os.O_RDONLY)
        try:
            # The header from memory (a variant's UIDs), the rest from the file.
            offset = len(instance.header)
            prefix = PART_HEAD + instance.header
            while offset < instance.size or prefix:
                if _answered(sock):
                    raise _Answered
                count = min(CHUNK_BYTES - len(prefix), instance.size - offset)
                if chunked:
                    sock.sendall(b"%x\r\n" % (len(prefix) + count) + prefix)
                else:
                    sock.sendall(prefix)
                _sendfile(sock, fd, offset, count)
                if chunked:
                    sock.sendall(b"\r\n")
                sent += len(prefix) + count
                offset += count
                prefix = b""
        finally:
            os.close(fd)
    if chunked:
        sock.sendall(b"%x\r\n" % len(CLOSE) + CLOSE + b"\r\n0\r\n\r\n")
    else:
        sock.sendall(CLOSE)
    return sent + len(CLOSE)


def post(
    port: int, path: str, instances: Sequence[Instance], *, chunked: bool, check: bool = True
) -> Reply:
    """POST ``instances`` as one multipart/related body; read the whole answer.

    ``check``: a 200 must list every SOP Instance UID sent in
    ReferencedSOPSequence and have no FailedSOPSequence (the discard sink
    answers ``{}``, so it is not checked).
    """
    length = body_length(instances)
    started = time.monotonic()
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_SECONDS) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        try:
            sock.sendall(_head(port, path, None if chunked else length))
            sent = _send_body(sock, instances, chunked)
        except (_Answered, BrokenPipeError, ConnectionResetError):
            pass  # an early answer (or a close after one): read it below
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
        except (ConnectionResetError, http.client.RemoteDisconnected) as exc:
            now = time.monotonic() - started
            return Reply(0, len(instances), length, sent, now, now, f"no answer: {exc}")
        status_seconds = time.monotonic() - started
        body = response.read()
    seconds = time.monotonic() - started
    reply = Reply(response.status, len(instances), length, sent, seconds, status_seconds)
    if response.status == 200 and check:
        reply.problem = _check(body, instances)
    elif response.status != 200 and response.status != 503:
        reply.problem = f"status {response.status}: {body[:200]!r}"
    return reply


def _check(body: bytes, instances: Sequence[Instance]) -> str | None:
    try:
        model = json.loads(body)
    except ValueError:
        return f"the answer is not JSON: {body[:200]!r}"
    failed = model.get(_FAILED_SOP_SEQUENCE, {}).get("Value", [])
    if failed:
        return f"{len(failed)} instances in FailedSOPSequence"
    listed = {
        uid
        for item in model.get(_REFERENCED_SOP_SEQUENCE, {}).get("Value", [])
        for uid in item.get(_REFERENCED_SOP_INSTANCE_UID, {}).get("Value", [])
    }
    missing = {i.sop_instance_uid for i in instances} - listed
    if missing:
        return f"{len(missing)} of {len(instances)} instances not in ReferencedSOPSequence"
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
                reply = post(port, path, request, chunked=chunked, check=check)
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
