"""``StowChannel``: HTTPChannel with a deadline for the request headers.

Twisted's idle timeout restarts on every received byte, so a client that
sends its headers a byte every few seconds holds a connection forever
(../shared/TWISTED.md, "Idle / slowloris": it survived 12 s against a 3 s
timeout).  The deadline starts with the first byte of a request's headers and
ends when they are complete; a client that misses it gets ``408`` and the
connection is closed.  The body has its own guard, the minimum rate
(``deadlines.MinimumRate``, run by ``StreamingRequest``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from .core.response import PROBLEM_JSON, problem_document

log = Logger()

# As for early refusals (request.LINGER_SECONDS): the write side closes at
# once, the read side after this grace, so the 408 is not lost to a reset.
LINGER_SECONDS = 2.0
# Reads while draining a refused body: large, since the bytes go nowhere.
_DRAIN_READ_BYTES = 1024 * 1024


class StowChannel(HTTPChannel):
    """An HTTP/1.1 channel whose request headers must arrive in time."""

    # Seconds from the first byte of a request to the end of its headers;
    # None disables the deadline.  Set by StowSite.buildProtocol.
    header_timeout: float | None = None
    _header_call: IDelayedCall | None = None
    _awaiting_headers = True
    # Answered and closing: what the client still sends is read, so that a
    # reset cannot destroy the answer, but never parsed.
    _draining = False
    _linger_call: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._draining:
            return  # answered (408, or a refusal); only draining until the close
        if self._awaiting_headers and self._header_call is None and self.header_timeout:
            self._header_call = self.callLater(  # type: ignore[no-untyped-call]
                self.header_timeout, self._headers_too_slow
            )
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def allHeadersReceived(self) -> None:
        self._awaiting_headers = False
        self._cancel_header_deadline()
        super().allHeadersReceived()  # type: ignore[no-untyped-call]

    def requestDone(self, request: Any) -> None:
        # Before super(): it may parse a pipelined request's headers at once.
        self._awaiting_headers = True
        super().requestDone(request)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_header_deadline()
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def drain_input(self) -> None:
        """Stop parsing input: the request was refused and the connection is closing.

        Without this the rest of a refused body goes through HTTP framing and
        the request, 64 KiB at a time, until the linger ends: the benchmarks
        measured about 4 ms of reactor time per refused 8 MB upload, which
        delayed every other answer when 64 clients were being refused.
        """
        self._draining = True
        if self.transport is not None and hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = _DRAIN_READ_BYTES

    def _cancel_header_deadline(self) -> None:
        call, self._header_call = self._header_call, None
        if call is not None and call.active():
            call.cancel()

    def _headers_too_slow(self) -> None:
        self._header_call = None
        if self.transport is None or not self._awaiting_headers:
            return
        self._draining = True
        self.persistent = False
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        peer = self.transport.getPeer()
        log.info(
            "request headers from {peer} incomplete after {seconds} s: 408",
            peer=str(peer),
            seconds=self.header_timeout,
        )
        body = problem_document(
            408,
            "Request Timeout",
            f"the request headers did not arrive within {self.header_timeout:g} seconds",
        )
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: "
            + PROBLEM_JSON.encode()
            + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            + body
        )
        transport: Any = self.transport
        if hasattr(transport, "loseWriteConnection"):
            transport.loseWriteConnection()
            self._linger_call = self.callLater(  # type: ignore[no-untyped-call]
                LINGER_SECONDS, transport.abortConnection
            )
        else:
            transport.loseConnection()
