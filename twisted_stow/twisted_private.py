"""The private parts of twisted.web this server relies on, in one place.

Streaming a body as it arrives needs state that ``HTTPChannel`` keeps to
itself: the request line (and its version) before the body is in, how much of a chunk is still
announced, whether the channel is between a request's body and its answer,
and the hook that answers framing errors.  Each is read or overridden here
only; tests/memory/test_twisted_private.py fails loudly if Twisted renames
one (all unchanged from Twisted 13 to 26).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.http import HTTPChannel, _ChunkedTransferDecoder, maxChunkSizeLineLength

# Twisted's cap on a chunk-size line (with extensions), CRLF not counted.
MAX_CHUNK_SIZE_LINE_BYTES: int = maxChunkSizeLineLength


def request_line(channel: Any) -> tuple[bytes, bytes]:
    """Method and request-target of the request whose headers just arrived.

    ``Request.method``/``uri`` are placeholders until the body is in, but
    ``HTTPChannel`` keeps the parsed request line in ``_command``/``_path``.
    """
    command: bytes = channel._command
    path: bytes = channel._path
    return command, path


def request_version(channel: Any) -> bytes:
    """The HTTP version of the request whose headers just arrived (``HTTPChannel._version``)."""
    version: bytes = channel._version
    return version


def announced_chunk_bytes(channel: Any) -> int:
    """Bytes the chunk being delivered still announces after this piece.

    Twisted trusts any chunk-size and counts down from it; reading what is
    left lets an absurd size be refused before its data is processed.  0 when
    the body is not chunked.
    """
    decoder = getattr(channel, "_transferDecoder", None)
    if isinstance(decoder, _ChunkedTransferDecoder) and decoder.state == "BODY":
        length: int = decoder.length
        return length
    return 0


def replace_chunked_decoder(channel: Any, factory: Callable[..., _ChunkedTransferDecoder]) -> None:
    """Swap the request's Twisted chunked decoder (``HTTPChannel._transferDecoder``,
    chosen from the headers) for ``factory(dataCallback, finishCallback)``.

    Only before the body's first byte: the decoder must not have buffered any.
    """
    decoder = getattr(channel, "_transferDecoder", None)
    if type(decoder) is _ChunkedTransferDecoder:
        channel._transferDecoder = factory(decoder.dataCallback, decoder.finishCallback)


def awaiting_response(channel: Any) -> bool:
    """True from a request's last body byte until its response is done.

    In that span HTTPChannel owns the read side: it resumes the transport
    and restores its saved idle timeout itself once the response is written.
    """
    handling: bool = channel._handlingRequest
    return handling


def restore_timeout_after_response(channel: Any, timeout: float | None) -> None:
    """The idle timeout HTTPChannel puts back once the current response is done."""
    channel._savedTimeOut = timeout


def is_tls(transport: Any) -> bool:
    """Whether ``transport`` is Twisted's TLS layer over the socket."""
    return isinstance(transport, TLSMemoryBIOProtocol)


def socket_transport(transport: Any) -> Any:
    """The transport that owns the socket: under TLS, the one TLS writes to.

    TLSMemoryBIOProtocol forwards unknown attribute *reads* to the socket's
    transport, but attribute *writes* (``bufferSize``) stay on the wrapper
    and change nothing, and a forwarded ``loseWriteConnection`` half-closes
    TCP under TLS with the encrypted answer still unwritten.
    """
    if isinstance(transport, TLSMemoryBIOProtocol):
        return transport.transport
    return transport


def unsent_bytes(transport: Any) -> int:
    """Bytes written to ``transport`` that have not reached the kernel yet.

    FileDescriptor buffers in ``dataBuffer`` (from ``offset``) and
    ``_tempDataBuffer`` (``_tempDataLen`` bytes); TLS holds cleartext in
    ``_appSendBuffer`` while it cannot write.  A transport that is neither
    (a test's StringTransport) holds nothing back: 0.
    """
    pending = 0
    if isinstance(transport, TLSMemoryBIOProtocol):
        pending += sum(map(len, transport._appSendBuffer))
        transport = transport.transport
    if isinstance(transport, FileDescriptor):
        buffered: bytes = transport.dataBuffer
        offset: int = transport.offset
        temp: int = transport._tempDataLen
        pending += len(buffered) - offset + temp
    return pending


def request_line_parsed(channel: Any) -> bool:
    """Whether HTTPChannel has parsed the current request's line (it keeps
    ``_command`` from the request line until the body is complete)."""
    return hasattr(channel, "_command")


def header_limits_exceeded(channel: Any) -> bool:
    """Whether HTTPChannel's last framing error was one of its header limits.

    It closes over ``totalHeadersSize`` (request line plus headers, in
    bytes: ``_receivedHeaderSize``) and ``maxHeaders``
    (``_receivedHeaderCount``) through the same framing-error hook as a
    malformed header; these two counters tell them apart.
    """
    size: int = channel._receivedHeaderSize
    count: int = channel._receivedHeaderCount
    return bool(size > channel.totalHeadersSize or count > channel.maxHeaders)


class HookedHTTPChannel(HTTPChannel):
    """HTTPChannel whose private framing-error hook has a public name."""

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Called by HTTPChannel for what it detects itself: a malformed
        # request line, header or chunk, Content-Length with chunked, too many
        # or too large headers.
        self.framing_error()

    def framing_error(self) -> None:
        """Answer a request HTTPChannel found unparsable; Twisted's bare 400 by default."""
        super()._respondToBadRequestAndDisconnect()  # type: ignore[no-untyped-call]
