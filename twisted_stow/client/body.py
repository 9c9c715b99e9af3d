"""The request body: multipart/related streamed from the files, as an ``IBodyProducer``.

The body is never held in memory, nor is a file: each file is read in
pieces of ``PIECE_BYTES`` when the connection can take more, and written to
the consumer at once.  Its length is unknown to the Agent, so it goes out
chunked (``Transfer-Encoding: chunked``, RFC 9112 §7.1), which every STOW
server we know parses as it arrives.  The transport pauses and resumes the
producer (it is registered as a streaming producer), and a cooperator task
(as Twisted's own ``FileBodyProducer``) does the reading, one piece per
iteration, so the reactor stays responsive between pieces.  Reads are small
and come from the page cache in the common case; a cold disk delays the
reactor by one piece's read at the most.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import (
    CooperativeTask,
    Cooperator,
    SchedulerError,
    TaskStopped,
    cooperate,
)
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

# Each read and each HTTP chunk: large enough that per-piece Python costs are
# small next to the copy, small enough that four connections hold a few MiB.
PIECE_BYTES = 512 * 1024
PART_CONTENT_TYPE = b"application/dicom"
# --gzip: level 1, since on the links where compression pays the client's CPU
# is the other bottleneck; DICOM pixel data gains little from higher levels.
GZIP_LEVEL = 1
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # the gzip wrapper (RFC 1952)


def boundary() -> str:
    """A fresh boundary: 32 random hex digits (RFC 2046 §5.1.1 allows up to 70 characters)."""
    return "stow-upload-" + os.urandom(16).hex()


def content_type(boundary_text: str) -> str:
    """The request's Content-Type (PS3.18 §10.5.1.2: ``type`` names the parts' type)."""
    return f'multipart/related; type="application/dicom"; boundary={boundary_text}'


class FileUnreadable(Exception):
    """A file could not be read while its request was sent: ``path``, ``error``."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"{path}: {error.strerror or error}")
        self.path = path
        self.error = error


@implementer(IBodyProducer)
class MultipartFilesProducer:
    """Streams ``paths`` as the parts of one multipart/related body.

    ``on_bytes`` is called with the number of body bytes after each write
    (for progress).  ``startProducing``'s Deferred fires with None once the
    close delimiter is written, or fails with ``FileUnreadable`` (the file
    that could not be read) or ``TaskStopped`` after ``stopProducing``.
    """

    length = UNKNOWN_LENGTH

    def __init__(
        self,
        paths: Sequence[Path],
        boundary_text: str,
        *,
        piece_bytes: int = PIECE_BYTES,
        on_bytes: Callable[[int], None] = lambda _: None,
        cooperator: Cooperator | None = None,
        gzip: bool = False,
    ) -> None:
        self._paths = list(paths)
        # Content-Encoding: gzip (RFC 9110 §8.4.1.3): the body compressed as
        # it streams, one compressor for the whole body.
        self._compressor = (
            zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS) if gzip else None
        )
        self._delimiter = f"\r\n--{boundary_text}".encode("ascii")
        self._piece_bytes = piece_bytes
        self._on_bytes = on_bytes
        self._cooperate = cooperator.cooperate if cooperator is not None else cooperate
        self._task: CooperativeTask[Iterator[None]] | None = None
        self._file: IO[bytes] | None = None
        # The transport and the Agent may both pause; a CooperativeTask counts
        # pauses, so keep one flag and pause or resume it once.
        self._paused = False

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._task = self._cooperate(self._pieces(consumer))
        done = self._task.whenDone()
        finished: Deferred[None] = Deferred()

        def ended(result: object) -> object:
            self._close_file()
            return result

        done.addBoth(ended).addCallbacks(lambda _: finished.callback(None), finished.errback)
        return finished

    def _pieces(self, consumer: IConsumer) -> Iterator[None]:
        head = self._delimiter + b"\r\nContent-Type: " + PART_CONTENT_TYPE + b"\r\n\r\n"
        for path in self._paths:
            try:
                self._file = open(path, "rb", buffering=0)
            except OSError as error:
                raise FileUnreadable(path, error) from None
            self._write(consumer, head)
            while True:
                try:
                    piece = self._file.read(self._piece_bytes)
                except OSError as error:
                    raise FileUnreadable(path, error) from None
                if not piece:
                    break
                self._write(consumer, piece)
                yield None
            self._close_file()
        self._write(consumer, self._delimiter + b"--\r\n")
        if self._compressor is not None:
            consumer.write(self._compressor.flush())

    def _write(self, consumer: IConsumer, data: bytes) -> None:
        """Body bytes out (compressed with --gzip); progress counts them uncompressed."""
        if self._compressor is None:
            consumer.write(data)
        else:
            compressed = self._compressor.compress(data)
            if compressed:
                consumer.write(compressed)
        self._on_bytes(len(data))

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def pauseProducing(self) -> None:
        if self._task is not None and not self._paused:
            self._paused = True
            self._task.pause()

    def resumeProducing(self) -> None:
        if self._task is not None and self._paused:
            self._paused = False
            self._task.resume()

    def stopProducing(self) -> None:
        """The connection went away: stop reading (the Deferred fails with TaskStopped)."""
        if self._task is not None:
            try:
                self._task.stop()
            except SchedulerError:
                pass  # already finished, failed or stopped
            self._close_file()


__all__ = ["FileUnreadable", "MultipartFilesProducer", "TaskStopped", "boundary", "content_type"]
