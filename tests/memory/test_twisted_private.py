"""Every private twisted.web name the server relies on (twisted_stow/twisted_private.py).

Each test fails loudly if Twisted renames or changes what it reads, instead
of the server silently losing a guard.
"""

from __future__ import annotations

from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.http import HTTPChannel, _ChunkedTransferDecoder

from tests.helpers import multipart_content_type
from twisted_stow.twisted_private import (
    HookedHTTPChannel,
    announced_chunk_bytes,
    awaiting_response,
    header_limits_exceeded,
    is_tls,
    request_line,
    request_line_parsed,
    request_version,
    restore_timeout_after_response,
    socket_transport,
    unsent_bytes,
)

CHUNKED_HEAD = (
    b"POST /studies HTTP/1.1\r\nHost: x\r\n"
    + f"Content-Type: {multipart_content_type('private')}\r\n".encode()
    + b"Transfer-Encoding: chunked\r\n\r\n"
)


def connected(channel: HTTPChannel) -> HTTPChannel:
    channel.makeConnection(StringTransport())
    return channel


def test_channel_keeps_request_line_where_we_read_it() -> None:
    """Fails loudly if Twisted ever moves HTTPChannel._command/_path/_version."""
    channel = connected(HTTPChannel())
    channel.dataReceived(b"POST /studies/1.2 HTTP/1.1\r\nHost: x\r\n")
    assert request_line(channel) == (b"POST", b"/studies/1.2")
    assert request_version(channel) == b"HTTP/1.1"


def test_channel_state_read_after_the_body_still_exists() -> None:
    """Fails loudly if Twisted renames _handlingRequest/_savedTimeOut (used on resume)."""
    channel = connected(HTTPChannel())
    assert awaiting_response(channel) is False
    channel.timeOut = 5
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert awaiting_response(channel) is True
    assert hasattr(channel, "_savedTimeOut")
    restore_timeout_after_response(channel, 7.0)
    assert channel._savedTimeOut == 7.0


def test_chunk_decoder_state_read_by_the_request_still_exists() -> None:
    """Fails loudly if Twisted renames _ChunkedTransferDecoder.state/length."""
    seen: list[tuple[str, int, int]] = []
    channel = connected(HTTPChannel())
    channel.dataReceived(CHUNKED_HEAD)
    decoder = channel._transferDecoder
    assert isinstance(decoder, _ChunkedTransferDecoder)
    decoder.dataCallback = lambda data: seen.append(
        (decoder.state, decoder.length, announced_chunk_bytes(channel))
    )
    channel.dataReceived(b"64\r\n" + b"x" * 30)
    assert seen == [("BODY", 70, 70)]


def test_framing_errors_reach_the_public_hook() -> None:
    """Fails loudly if HTTPChannel stops calling _respondToBadRequestAndDisconnect."""
    calls: list[str] = []

    class Recording(HookedHTTPChannel):
        def framing_error(self) -> None:
            calls.append("framing")
            super().framing_error()

    channel = connected(Recording())
    channel.dataReceived(
        b"POST /studies HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert calls == ["framing"]
    transport = channel.transport
    assert isinstance(transport, StringTransport)
    # The default is Twisted's own bare answer.
    assert transport.value() == b"HTTP/1.1 400 Bad Request\r\n\r\n"


def test_unsent_bytes_reads_the_file_descriptor_buffers() -> None:
    """Fails loudly if FileDescriptor renames dataBuffer/offset/_tempDataLen (linger reads them)."""
    descriptor = FileDescriptor(reactor=MemoryReactor())
    descriptor.connected = 1
    assert unsent_bytes(descriptor) == 0
    descriptor.write(b"x" * 100)
    assert unsent_bytes(descriptor) == 100
    descriptor.writeSomeData = lambda data: 40  # type: ignore[method-assign,assignment,return-value]
    descriptor.doWrite()
    assert unsent_bytes(descriptor) == 60


def test_request_line_state_tells_request_line_from_header_lines() -> None:
    """Fails loudly if HTTPChannel stops keeping _command only after the request line."""
    channel = connected(HTTPChannel())
    assert not request_line_parsed(channel)
    channel.dataReceived(b"POST /studies HTTP/1.1\r\n")
    assert request_line_parsed(channel)


def test_header_limit_counters_still_exist() -> None:
    """Fails loudly if HTTPChannel renames _receivedHeaderSize/_receivedHeaderCount."""
    channel = connected(HTTPChannel())
    channel.maxHeaders = 2
    channel.dataReceived(b"POST /studies HTTP/1.1\r\nA: 1\r\nB: 2\r\n")
    assert not header_limits_exceeded(channel)
    channel.dataReceived(b"C: 3\r\nD: 4\r\n")
    assert header_limits_exceeded(channel)


def test_tls_layer_state_read_by_the_linger_still_exists() -> None:
    """Fails loudly if TLSMemoryBIOProtocol renames _appSendBuffer or stops wrapping .transport."""
    factory = TLSMemoryBIOFactory(
        optionsForClientTLS("stow.example"), True, Factory.forProtocol(Protocol)
    )
    tls = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    wire = StringTransport()
    tls.makeConnection(wire)
    assert is_tls(tls) and not is_tls(wire)
    assert socket_transport(tls) is wire
    # Before the handshake TLS holds cleartext back; loseConnection flushes
    # the small-write aggregator into that buffer first, as answer_and_close does.
    tls.write(b"x" * 10)
    tls.loseConnection()
    assert unsent_bytes(tls) == 10


def test_request_version_is_kept_beside_the_request_line() -> None:
    """Fails loudly if HTTPChannel stops keeping _version (the Host rule of HTTP/1.1 reads it)."""
    channel = connected(HTTPChannel())
    channel.dataReceived(b"POST /studies HTTP/1.0\r\nHost: x\r\n")
    assert request_version(channel) == b"HTTP/1.0"
