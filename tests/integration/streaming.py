"""Client-side helpers for integration tests: streamed bodies and raw sockets."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Iterator
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import cooperate
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from tests.helpers import build_multipart, multipart_content_type


@implementer(IBodyProducer)
class ChunkedProducer:
    """Streams ``chunks`` one per reactor turn with no length: treq then
    sends ``Transfer-Encoding: chunked``, one HTTP chunk per item."""

    length = UNKNOWN_LENGTH

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self._task: Any = None

    def startProducing(self, consumer: Any) -> Deferred[None]:
        def write_all() -> Iterator[None]:
            for chunk in self._chunks:
                consumer.write(chunk)
                yield None

        self._task = cooperate(write_all())
        return self._task.whenDone().addCallback(lambda _: None)

    def pauseProducing(self) -> None:
        self._task.pause()

    def resumeProducing(self) -> None:
        self._task.resume()

    def stopProducing(self) -> None:
        self._task.stop()


def fixed_length(body: bytes) -> FileBodyProducer:
    """A streamed body with a known length (sent with Content-Length)."""
    return FileBodyProducer(BytesIO(body), readSize=16 * 1024)


def split(body: bytes, size: int) -> list[bytes]:
    """``body`` in pieces of ``size`` bytes."""
    return [body[i : i + size] for i in range(0, len(body), size)]


def raw_exchange(
    port: int,
    request: bytes,
    *,
    read_timeout: float = 10.0,
    shutdown_write: bool = False,
    source: str = "127.0.0.1",
) -> bytes:
    """Blocking: send ``request`` on a fresh socket, read until the server closes.

    ``source`` picks the client address (any 127.x.y.z works on Linux), so a
    test can be two different peers.  Run it with ``deferToThread``: the
    reactor must keep serving meanwhile.
    """
    with socket.create_connection(
        ("127.0.0.1", port), timeout=read_timeout, source_address=(source, 0)
    ) as sock:
        sock.sendall(request)
        if shutdown_write:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            received += data
    return received


def upload_request(parts: list[bytes], boundary: str, path: str = "/studies") -> bytes:
    """A raw, complete multipart POST of ``parts`` that asks the server to close after it."""
    return raw_post(build_multipart(parts, boundary), boundary, path)


def raw_post(body: bytes, boundary: str, path: str = "/studies", *, close: bool = True) -> bytes:
    """A raw multipart POST of ``body`` as given (it may be broken on purpose)."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
        + (b"Connection: close\r\n" if close else b"")
        + f"Content-Type: {multipart_content_type(boundary)}\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def status_of(raw: bytes) -> int:
    """Status code of the first response in raw HTTP bytes."""
    return int(raw.split(b" ", 2)[1])


def json_body(raw: bytes) -> Any:
    """The JSON body of the first response in raw HTTP bytes (Content-Length framed)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return json.loads(rest[:length])


def sop_instance_uids(model: dict[str, Any], sequence_tag: str = "00081199") -> list[str]:
    """ReferencedSOPInstanceUIDs of the items of one sequence of a DICOM JSON model."""
    items = model.get(sequence_tag, {}).get("Value", [])
    return [item["00081155"]["Value"][0] for item in items]


def failure_reasons(model: dict[str, Any], sequence_tag: str = "00081198") -> list[int]:
    """FailureReason values of FailedSOPSequence (or another sequence's) items."""
    items = model.get(sequence_tag, {}).get("Value", [])
    return [item["00081197"]["Value"][0] for item in items]
