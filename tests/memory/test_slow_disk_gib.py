"""1 GiB through a real HTTPChannel into a deliberately slow disk (no sockets).

The client side is simulated like TCP: it can only send while the server
reads (the transport is producing).  The disk writes a quarter of what the
client could send per step, so without backpressure the server would buffer
most of the gigabyte; with it, what the server holds for the request stays
near the high-water mark.
"""

from __future__ import annotations

import os
import random

import psutil
from twisted.internet.task import Clock

from tests.helpers import multipart_content_type
from tests.memory.test_slow_clients import make_channel
from twisted_stow.core.config import StowConfig
from twisted_stow.flow import HIGH_WATER_BYTES
from twisted_stow.storage.memory import MemoryStorage
from twisted_stow.upload import READ_SIZE_BYTES

BOUNDARY = "gib-boundary"
BODY_PAYLOAD_BYTES = 1024**3
READ_BYTES = READ_SIZE_BYTES  # one socket read of the server
DISK_BYTES_PER_STEP = READ_BYTES // 4
# Bytes received but not yet on disk, at most: the high-water mark plus the
# read that crossed it (a paused socket may still deliver one).
BOUND = HIGH_WATER_BYTES + READ_BYTES


def test_one_gib_into_a_slow_disk_buffers_a_few_mib() -> None:
    """1 GiB into held memory storage stepped at a quarter of the client's pace: a few MiB held."""
    # The part is not DICOM: only the flow of bytes matters here.  Only a
    # count and a digest are kept of what is written, not the gigabyte.
    storage = MemoryStorage(held=True, keep_data=False)
    channel, transport = make_channel(storage, Clock(), StowConfig())
    block = random.Random(4).randbytes(READ_BYTES)
    opening = f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    closing = f"\r\n--{BOUNDARY}--\r\n".encode()
    assert f"--{BOUNDARY}".encode() not in block
    length = len(opening) + BODY_PAYLOAD_BYTES + len(closing)
    channel.dataReceived(
        b"POST /studies HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Type: {multipart_content_type(BOUNDARY)}\r\n".encode()
        + b"Content-Length: %d\r\n\r\n" % length
        + opening
    )
    process = psutil.Process(os.getpid())
    rss_before = process.memory_info().rss
    upload = channel.requests[0].upload
    sent = 0
    peak = 0
    paused_steps = 0
    while sent < BODY_PAYLOAD_BYTES:
        if transport.producerState == "paused":
            # The server is not reading: the client's bytes wait in its own
            # socket buffer while the disk catches up.
            paused_steps += 1
            storage.writers[0].release(DISK_BYTES_PER_STEP)
            continue
        channel.dataReceived(block)
        sent += len(block)
        storage.writers[0].release(DISK_BYTES_PER_STEP)
        peak = max(peak, upload.flow.in_flight_bytes)
    channel.dataReceived(closing)
    storage.writers[0].release()  # the disk catches up; finish() completes
    rss_after = process.memory_info().rss

    writer = storage.writers[0]
    assert writer.written == BODY_PAYLOAD_BYTES  # every byte reached the disk
    assert upload.flow.pause_count > 100
    assert paused_steps > BODY_PAYLOAD_BYTES // DISK_BYTES_PER_STEP // 2
    assert peak <= BOUND, f"{peak} bytes buffered for one request"
    assert transport.value().startswith(b"HTTP/1.1 409 ")  # not DICOM, answered
    # Nothing else piled up: RSS grew by far less than the body (Python may
    # keep some freed memory; 1 GiB through an unpaused server would show).
    assert rss_after - rss_before < 64 * 1024 * 1024
