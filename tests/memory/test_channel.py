"""``StowChannel.answer_and_close``: the one raw answer and lingering close."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport

from twisted_stow.app import StowService
from twisted_stow.channel import ANSWER_POLL_SECONDS, LINGER_SECONDS, StowChannel
from twisted_stow.chunked import ZeroCopyChunkedDecoder
from twisted_stow.core.config import StowConfig
from twisted_stow.site import StowSite
from twisted_stow.storage.memory import MemoryStorage
from twisted_stow.twisted_private import unsent_bytes

HEADER_TIMEOUT_SECONDS = 10.0


class HalfClosingTransport(StringTransport):
    """A StringTransport that, like TCP, can close only its write side."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True


def make_channel(clock: Clock, transport: Any = None) -> tuple[StowChannel, Any]:
    """A StowChannel on ``clock`` connected to ``transport`` (default: a HalfClosingTransport)."""
    config = StowConfig(header_timeout_seconds=HEADER_TIMEOUT_SECONDS)
    storage = MemoryStorage(held=True)
    service = StowService(config, storage, clock, lambda f, *a: maybeDeferred(f, *a))
    channel = StowSite(service, timeout=60.0).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    channel.callLater = clock.callLater  # type: ignore[method-assign]
    transport = HalfClosingTransport() if transport is None else transport
    channel.makeConnection(transport)
    return channel, transport


REFUSED = (
    b"POST /studies HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 99\r\n\r\n"
)
FRAMING = (
    b"POST /studies HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\n"
    b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def send(channel: StowChannel, clock: Clock, data: bytes) -> None:
    channel.dataReceived(data)


def headers_too_slow(channel: StowChannel, clock: Clock, data: bytes) -> None:
    channel.dataReceived(data[:10])
    clock.advance(HEADER_TIMEOUT_SECONDS)


@pytest.mark.parametrize(
    ("deliver", "data", "status"),
    [(send, REFUSED, b"415"), (send, FRAMING, b"400"), (headers_too_slow, REFUSED, b"408")],
    ids=["refusal", "framing-error", "header-deadline"],
)
def test_every_raw_answer_lingers(deliver: Any, data: bytes, status: bytes) -> None:
    """A refusal, Twisted's framing 400 and the 408 all half-close, then abort after the linger."""
    clock = Clock()
    channel, transport = make_channel(clock)
    deliver(channel, clock, data)
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 " + status + b" ")
    assert b"Content-Type: application/problem+json\r\n" in answer
    assert b"Connection: close\r\n" in answer
    assert transport.write_closed and not transport.aborted
    clock.advance(LINGER_SECONDS - 0.1)
    assert not transport.aborted
    clock.advance(0.2)
    assert transport.aborted


def test_only_the_first_answer_is_written() -> None:
    """A refusal followed, in the same read, by broken framing is still one answer."""
    clock = Clock()
    channel, transport = make_channel(clock)
    chunked = REFUSED.replace(b"Content-Length: 99", b"Transfer-Encoding: chunked")
    channel.dataReceived(chunked + b"zz-not-a-chunk-size\r\n")
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 415 ")
    assert answer.count(b"HTTP/1.1") == 1


def test_the_linger_is_cancelled_when_the_client_closes() -> None:
    """A client that reads the answer and closes leaves no abort pending."""
    clock = Clock()
    channel, _ = make_channel(clock)
    channel.dataReceived(REFUSED)
    channel.connectionLost()
    assert clock.getDelayedCalls() == []


class FullSocket(FileDescriptor):
    """A connected socket whose kernel send buffer takes nothing until ``room`` is given."""

    room = 0
    aborted = False
    write_closed = False

    def __init__(self) -> None:
        super().__init__(reactor=MemoryReactor())
        self.connected = 1

    def writeSomeData(self, data: bytes) -> int:  # type: ignore[override]
        taken = min(len(data), self.room)
        self.room -= taken
        return taken

    def _closeWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 1)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 2)


def test_the_linger_starts_only_once_the_answer_is_written() -> None:
    """An answer stuck in the send buffer is not aborted after the linger; it is once written."""
    clock = Clock()
    channel, socket = make_channel(clock, FullSocket())
    channel.dataReceived(REFUSED)
    clock.advance(LINGER_SECONDS * 3)  # a reactor busy elsewhere would see the same
    socket.doWrite()
    assert not socket.aborted and unsent_bytes(socket) > 0
    socket.room = 1 << 20
    socket.doWrite()  # the kernel takes the answer, then the FIN
    assert unsent_bytes(socket) == 0 and socket.write_closed
    clock.advance(ANSWER_POLL_SECONDS)
    assert not socket.aborted
    clock.advance(LINGER_SECONDS)
    assert socket.aborted


def test_a_chunked_body_is_decoded_without_copies() -> None:
    """The channel swaps Twisted's chunked decoder for ZeroCopyChunkedDecoder, so a
    read inside one chunk reaches the request as the very object received."""
    channel, _ = make_channel(Clock())
    channel.dataReceived(
        b"POST /studies HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    decoder = channel._transferDecoder
    assert isinstance(decoder, ZeroCopyChunkedDecoder)
    pieces: list[bytes] = []
    decoder.dataCallback = pieces.append
    channel.dataReceived(b"1000\r\n")
    read = b"\x01" * 4000
    channel.dataReceived(read)
    assert pieces and pieces[0] is read
