"""``StowChannel``: HTTPChannel with a header deadline and one way to answer raw.

Twisted's idle timeout restarts on every received byte, so a client that
sends its headers a byte every few seconds holds a connection forever (it
survived 12 s against a 3 s timeout, docs/DESIGN.md).  The deadline starts
with the first byte of a request's headers and ends when they are complete;
a client that misses it gets ``408`` and the connection is closed.  The body
has its own guard, the minimum rate (``deadlines.MinimumRate``, run by
``StreamingRequest``).

Every answer written outside twisted.web's Request (a refusal from the
headers or mid-body, the 408, HTTPChannel's own framing 400) goes through
``answer_and_close``, the one lingering close.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES

from .core.errors import MalformedRequest, RequestTimeout, StowError
from .core.response import PROBLEM_JSON, problem_json
from .twisted_private import HookedHTTPChannel

if TYPE_CHECKING:
    from .app import StowService

log = Logger()

# After an answer outside the request cycle the write side is closed at once,
# and the read side after this grace: a client still sending its body must
# get the time to read our answer before a reset could destroy it (a
# lingering close, RFC 9112 §9.6).
LINGER_SECONDS = 2.0
# Reads while draining a refused body: large, since the bytes go nowhere.
DRAIN_READ_BYTES = 1024 * 1024


class StowChannel(HookedHTTPChannel):
    """An HTTP/1.1 channel whose request headers must arrive in time."""

    # The service its requests go to, and the seconds from the first byte of
    # a request to the end of its headers (None: no deadline).  Both set by
    # StowSite.buildProtocol.
    stow: StowService
    header_timeout: float | None = None
    _header_call: IDelayedCall | None = None
    _awaiting_headers = True
    # Answered and closing: what the client still sends is read, so that a
    # reset cannot destroy the answer, but never parsed.
    _draining = False
    _linger_call: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._draining:
            return  # answered; only draining until the close
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

    @property
    def answered(self) -> bool:
        """An answer was written outside the request cycle: nothing else may be."""
        return self._draining

    def framing_error(self) -> None:
        # HTTPChannel's own answer is a bare "400 Bad Request" with no body;
        # give framing errors the problem document of every other error.
        self.answer_and_close(
            MalformedRequest("the request is not valid HTTP/1.1 (framing or headers)")
        )

    def answer_and_close(
        self,
        error: StowError,
        headers: Sequence[tuple[bytes, bytes]] = (),
        instance: str | None = None,
    ) -> None:
        """Answer ``error`` with a complete ``Connection: close`` response, and close.

        Nothing the client sends afterwards is parsed (the rest of this read
        is dropped, later reads are drained in large pieces); the write side
        closes once the answer is out and the connection is aborted after
        ``LINGER_SECONDS``.  Only the first answer on a connection is written.
        ``headers`` come after the error's own; ``instance`` names the
        request in the problem document.
        """
        transport: Any = self.transport
        if self._draining or transport is None:
            return
        self._draining = True
        self.persistent = False
        self._cancel_header_deadline()
        # The linger bounds the close; an idle timer must not cut it short.
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        self.clearLineBuffer()  # type: ignore[no-untyped-call]
        body = problem_json(error, instance=instance)
        lines = [b"HTTP/1.1 %d %s" % (error.status, _reason_phrase(error))]
        lines.append(b"Content-Type: " + PROBLEM_JSON.encode())
        lines += [name + b": " + value for name, value in [*error.headers(), *headers]]
        lines += [b"Content-Length: %d" % len(body), b"Connection: close", b"", b""]
        transport.write(b"\r\n".join(lines) + body)
        # Drained unparsed: the benchmarks measured about 4 ms of reactor time
        # per refused 8 MB upload going through HTTP framing 64 KiB at a time.
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = DRAIN_READ_BYTES
        transport.resumeProducing()
        if hasattr(transport, "loseWriteConnection"):
            transport.loseWriteConnection()
            self._linger_call = self.callLater(  # type: ignore[no-untyped-call]
                LINGER_SECONDS, transport.abortConnection
            )
        else:
            transport.loseConnection()

    def _cancel_header_deadline(self) -> None:
        call, self._header_call = self._header_call, None
        if call is not None and call.active():
            call.cancel()

    def _headers_too_slow(self) -> None:
        self._header_call = None
        if self.transport is None or not self._awaiting_headers:
            return
        log.info(
            "request headers from {peer} incomplete after {seconds} s: 408",
            peer=str(self.transport.getPeer()),
            seconds=self.header_timeout,
        )
        self.answer_and_close(
            RequestTimeout(
                f"the request headers did not arrive within {self.header_timeout:g} seconds"
            )
        )


def _reason_phrase(error: StowError) -> bytes:
    # Twisted's table lacks some codes (429); the error's own title is the
    # standard phrase for those.
    return RESPONSES.get(error.status) or error.title.encode("ascii", "replace")
