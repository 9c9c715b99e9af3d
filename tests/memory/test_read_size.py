"""The socket's read size follows the upload's window of the budget.

Inside a window every byte read is counted, so reads are large (cheaper per
byte); an upload waiting for a window may take one read beyond the budget,
so its reads stay small.  Two uploads over real HTTPChannels share one
site's budget of one window; held memory storage keeps the first's bytes.
"""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tests.helpers import multipart_content_type
from tests.memory.test_slow_clients import make_channel
from twisted_stow.core.budget import FILESYSTEM_WINDOW_BYTES
from twisted_stow.core.config import StowConfig
from twisted_stow.flow import WAITING_READ_BYTES, WINDOW_READ_BYTES
from twisted_stow.storage.memory import MemoryStorage

BOUNDARY = "read-size-boundary"
TWISTED_DEFAULT_READ_BYTES = 2**16


class SocketTransport(StringTransport):
    """A StringTransport with a TCP connection's read size (``bufferSize``)."""

    bufferSize = TWISTED_DEFAULT_READ_BYTES


def start_upload(channel: object, block: bytes) -> None:
    opening = f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    channel.dataReceived(  # type: ignore[attr-defined]
        b"POST /studies HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Type: {multipart_content_type(BOUNDARY)}\r\n".encode()
        + b"Content-Length: %d\r\n\r\n" % (len(opening) + 10 * len(block))
        + opening
        + block
    )


def test_reads_are_large_inside_a_window_and_small_while_waiting() -> None:
    storage = MemoryStorage(held=True, keep_data=False)
    clock = Clock()
    # One window's budget: the second upload waits for the first's window.
    config = StowConfig(memory_budget_bytes=FILESYSTEM_WINDOW_BYTES)
    first, first_transport = make_channel(storage, clock, config, transport=SocketTransport())
    second, second_transport = make_channel(
        storage, clock, site=first.site, transport=SocketTransport()
    )
    block = random.Random(7).randbytes(64 * 1024)
    assert f"--{BOUNDARY}".encode() not in block

    start_upload(first, block)
    assert first.requests[0].upload.flow.share.leased
    assert first_transport.bufferSize == WINDOW_READ_BYTES

    start_upload(second, block)
    assert second.requests[0].upload.flow.share.queued
    assert second_transport.bufferSize == WAITING_READ_BYTES

    # The first leaves; once its bytes are out of memory its window is the second's.
    first.connectionLost(None)
    storage.writers[0].release()
    assert second.requests[0].upload.flow.share.leased
    assert second_transport.bufferSize == WINDOW_READ_BYTES
