"""Slow clients over a real HTTPChannel and a Clock: header deadline, minimum body rate.

The idle timeout restarts on every byte, so these guards are what stops a
client that trickles (slowloris).  Time paused for storage must not count,
and an honest slow upload that keeps a real rate must pass.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tests.dicom_files import CT, read
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.crafted import instance, sop_instance_uid
from twisted_stow.app import StowService
from twisted_stow.core.config import StowConfig
from twisted_stow.flow import HIGH_WATER_BYTES
from twisted_stow.site import StowSite
from twisted_stow.storage.memory import MemoryStorage

BOUNDARY = "slow-boundary"
HEADER_TIMEOUT = 10.0
RATE = 100  # bytes per second
WINDOW = 5.0
CONFIG = StowConfig(
    header_timeout_seconds=HEADER_TIMEOUT,
    min_body_rate_bytes=RATE,
    body_rate_window_seconds=WINDOW,
    # Far away: these tests are about trickles, which the idle timer misses.
    idle_timeout_seconds=1000.0,
)


def make_channel(
    storage: Any,
    clock: Clock,
    config: StowConfig = CONFIG,
    *,
    site: StowSite | None = None,
    transport: StringTransport | None = None,
) -> tuple[Any, Any]:
    """A channel of ``site`` (a new one by default) connected to ``transport``."""
    if site is None:
        service = StowService(config, storage, clock, lambda f, *a: maybeDeferred(f, *a))
        site = StowSite(service, timeout=config.idle_timeout_seconds)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    channel.callLater = clock.callLater
    if transport is None:
        transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def head(length: int | None = None, *, close: bool = False) -> bytes:
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return (
        b"POST /studies HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Type: {multipart_content_type(BOUNDARY)}\r\n".encode()
        + framing
        + (b"\r\nConnection: close" if close else b"")
        + b"\r\n\r\n"
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def test_headers_trickled_a_byte_at_a_time_get_408() -> None:
    """A byte every 2 s keeps the idle timer happy but misses the header deadline."""
    clock = Clock()
    channel, transport = make_channel(MemoryStorage(held=True), clock)
    for byte in head(1000)[:-4]:
        channel.dataReceived(bytes([byte]))
        clock.advance(2.0)
        if transport.value():
            break
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"Content-Type: application/problem+json\r\n" in answer
    assert b"Connection: close\r\n" in answer
    assert transport.disconnecting
    # Answered within the deadline plus one trickle step, not at the idle timeout.
    assert clock.seconds() <= HEADER_TIMEOUT + 2.0


def test_headers_in_time_are_not_cut_whatever_follows() -> None:
    """Headers complete in time: the deadline is gone even if the body takes long."""
    storage = MemoryStorage()
    clock = Clock()
    channel, transport = make_channel(storage, clock)
    text = head()
    channel.dataReceived(text[:20])
    clock.advance(HEADER_TIMEOUT - 1)
    channel.dataReceived(text[20:])
    body = build_multipart([b"x" * 10_000], BOUNDARY)
    # A real rate: 1,000 bytes per second, ten times the minimum.
    for offset in range(0, len(body), 1000):
        channel.dataReceived(chunk(body[offset : offset + 1000]))
        clock.advance(1.0)
    channel.dataReceived(b"0\r\n\r\n")
    assert b"408" not in transport.value()
    assert transport.value().startswith(b"HTTP/1.1 409 ")  # not DICOM, answered normally


def test_the_deadline_starts_again_for_the_next_request_on_the_connection() -> None:
    """Keep-alive: a second request whose headers trickle is cut off too."""
    storage = MemoryStorage()
    clock = Clock()
    channel, transport = make_channel(storage, clock)
    body = build_multipart([b"not dicom"], BOUNDARY)
    channel.dataReceived(head(len(body)) + body)
    assert transport.value().startswith(b"HTTP/1.1 409 ")
    transport.clear()
    # Idle between requests is the idle timeout's business, not the deadline's.
    clock.advance(HEADER_TIMEOUT * 3)
    assert not transport.disconnecting
    for byte in head(10)[:-4]:
        channel.dataReceived(bytes([byte]))
        clock.advance(1.0)
        if transport.value():
            break
    assert transport.value().startswith(b"HTTP/1.1 408 ")


def test_a_body_trickle_gets_408_and_its_part_is_aborted() -> None:
    """A byte every 2 s of body: 408 after one window, and the staged part removed."""
    storage = MemoryStorage(held=True)
    clock = Clock()
    channel, transport = make_channel(storage, clock)
    channel.dataReceived(head())
    body = build_multipart([b"y" * 5000], BOUNDARY)
    channel.dataReceived(chunk(body[:200]))  # the part has begun
    for offset in range(200, 260):
        if transport.value():
            break
        channel.dataReceived(chunk(body[offset : offset + 1]))
        clock.advance(2.0)
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"Connection: close" in answer
    assert storage.writers[0].aborted
    assert channel.site.stow.slots.active == 0
    assert clock.seconds() <= WINDOW + 2.0


def test_an_honest_slow_upload_passes() -> None:
    """Twice the minimum rate for ten windows: answered, never cut off."""
    storage = MemoryStorage()
    clock = Clock()
    channel, transport = make_channel(storage, clock)
    channel.dataReceived(head())
    body = build_multipart([b"z" * int(RATE * 2 * WINDOW * 10)], BOUNDARY)
    step = RATE * 2  # bytes per second
    for offset in range(0, len(body), step):
        channel.dataReceived(chunk(body[offset : offset + step]))
        clock.advance(1.0)
        assert transport.value() == b""
    channel.dataReceived(b"0\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 409 ")  # answered (not DICOM), not 408
    assert bytes(storage.writers[0].data) == b"z" * int(RATE * 2 * WINDOW * 10)


def test_time_paused_for_storage_does_not_count_against_the_rate() -> None:
    """Storage holds the socket for many windows: no 408; the rate applies again after."""
    storage = MemoryStorage(held=True)
    clock = Clock()
    channel, transport = make_channel(storage, clock)
    channel.dataReceived(head())
    body = build_multipart([b"w" * (HIGH_WATER_BYTES + 1024 * 1024)], BOUNDARY)
    channel.dataReceived(chunk(body[: HIGH_WATER_BYTES + 4096]))
    assert transport.producerState == "paused"
    clock.advance(WINDOW * 20)
    assert transport.value() == b""
    storage.writers[0].release()
    assert transport.producerState == "producing"
    # Reading again: the window that began before the pause passes on the
    # bytes it had; then the client sends nothing and the next one fails.
    clock.advance(WINDOW + 0.1)
    assert transport.value() == b""
    clock.advance(WINDOW)
    assert transport.value().startswith(b"HTTP/1.1 408 ")


def test_guards_can_be_turned_off() -> None:
    """header_timeout None and rate 0: a trickle is left to the idle timeout."""
    config = replace(CONFIG, header_timeout_seconds=None, min_body_rate_bytes=0)
    storage = MemoryStorage(held=True)
    clock = Clock()
    channel, transport = make_channel(storage, clock, config)
    text = head()
    for byte in text:
        channel.dataReceived(bytes([byte]))
        clock.advance(2.0)
    body = build_multipart([b"v" * 100], BOUNDARY)
    for offset in range(0, 50):
        channel.dataReceived(chunk(body[offset : offset + 1]))
        clock.advance(2.0)
    assert transport.value() == b"" or transport.value().startswith(b"HTTP/1.1 100")
    assert not transport.disconnecting


def test_an_absurd_chunk_size_is_400_before_its_data_is_read() -> None:
    """No body limit: a chunk-size past 2**63 is a framing error (400), and the
    part data that came with it never reaches storage."""
    storage = MemoryStorage()
    channel, transport = make_channel(storage, Clock(), replace(CONFIG, max_body_bytes=None))
    channel.dataReceived(head())
    body = build_multipart([b"u" * 1000], BOUNDARY)
    channel.dataReceived(b"1" + b"0" * 20 + b"\r\n" + body)
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"chunk-size" in answer
    assert storage.writers == []


def test_a_chunk_announcing_more_than_the_body_limit_is_413_at_once() -> None:
    """With --max-body-size, a chunk announcing more than is left gets 413 at its first byte."""
    storage = MemoryStorage()
    channel, transport = make_channel(storage, Clock(), replace(CONFIG, max_body_bytes=10_000))
    channel.dataReceived(head())
    channel.dataReceived(b"%x\r\n" % 20_000 + b"\r\n--" + BOUNDARY.encode() + b"\r\n\r\nabc")
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert storage.writers == []


def test_the_pause_holds_when_twisted_resumes_the_transport() -> None:
    """HTTPChannel resumes the transport for its own (write-side) reasons; the
    next chunk that arrives pauses it again while storage is still behind."""
    storage = MemoryStorage(held=True)
    channel, transport = make_channel(storage, Clock())
    channel.dataReceived(head())
    body = build_multipart([b"t" * (HIGH_WATER_BYTES + 2 * 1024 * 1024)], BOUNDARY)
    channel.dataReceived(chunk(body[: HIGH_WATER_BYTES + 4096]))
    assert transport.producerState == "paused"
    channel.resumeProducing()  # what the transport calls when its send buffer drains
    assert transport.producerState == "producing"
    channel.dataReceived(chunk(body[HIGH_WATER_BYTES + 4096 : HIGH_WATER_BYTES + 8192]))
    assert transport.producerState == "paused"
    storage.writers[0].release()
    assert transport.producerState == "producing"


IDLE = replace(CONFIG, header_timeout_seconds=None, min_body_rate_bytes=0, idle_timeout_seconds=3.0)


def _problem(answer: bytes) -> dict[str, Any]:
    return dict(json.loads(answer.split(b"\r\n\r\n", 1)[1]))


def test_a_body_gone_silent_is_408_naming_what_was_stored() -> None:
    """A whole instance, half of the next, then silence past the idle timeout:
    408 (not a silent close), the first instance stored and listed, the half
    part dropped, the connection closed."""
    storage = MemoryStorage()
    clock = Clock()
    channel, transport = make_channel(storage, clock, IDLE)
    first, second = read(CT), instance(CT, padding=64 * 1024)
    body = build_multipart([first, second], BOUNDARY)
    cut = body.index(second) + len(second) // 2
    channel.dataReceived(head())
    channel.dataReceived(chunk(body[:cut]))
    clock.advance(2.9)
    assert transport.value() == b""
    clock.advance(0.2)
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    problem = _problem(answer)
    assert "no byte of the body arrived for 3 seconds" in problem["detail"]
    stored_uid = sop_instance_uid(first)
    assert problem["storedSOPInstanceUIDs"] == [stored_uid]
    assert [ref.sop_instance_uid for ref in storage.instances] == [stored_uid]
    assert b"Connection: close" in answer and transport.disconnecting


def test_headers_gone_silent_are_408_and_an_idle_keep_alive_closes_silently() -> None:
    """Half a header section then silence: 408.  A connection with no request
    started (idle keep-alive) is closed without a word, as before."""
    clock = Clock()
    channel, transport = make_channel(MemoryStorage(), clock, IDLE)
    channel.dataReceived(head()[:30])
    clock.advance(3.1)
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert "request headers stopped" in _problem(answer)["detail"]

    clock = Clock()
    channel, transport = make_channel(MemoryStorage(), clock, IDLE)
    clock.advance(3.1)
    assert transport.value() == b""
    assert transport.disconnecting


def test_the_body_rate_408_names_what_was_stored() -> None:
    """A whole instance, then a trickle under the minimum rate: the 408 lists the
    instance stored whole, as the 413s and the idle 408 do."""
    storage = MemoryStorage()
    clock = Clock()
    channel, transport = make_channel(storage, clock, replace(CONFIG, header_timeout_seconds=None))
    first = read(CT)
    body = build_multipart([first, b"v" * 1000], BOUNDARY)
    cut = body.index(first) + len(first) + 200
    channel.dataReceived(head())
    channel.dataReceived(chunk(body[:cut]))
    for _ in range(int(3 * WINDOW)):
        clock.advance(1.0)
        if transport.value():
            break
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert _problem(answer)["storedSOPInstanceUIDs"] == [sop_instance_uid(first)]
