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

from .chunked import ZeroCopyChunkedDecoder
from .core.errors import (
    MalformedRequest,
    RequestHeadTooLarge,
    RequestTimeout,
    StowError,
)
from .core.response import PROBLEM_JSON, problem_json
from .ops import observe
from .twisted_private import (
    HookedHTTPChannel,
    header_limits_exceeded,
    is_tls,
    replace_chunked_decoder,
    request_line_parsed,
    socket_transport,
    unsent_bytes,
)

if TYPE_CHECKING:
    from .app import StowService

log = Logger()

# After an answer outside the request cycle the write side is closed once the
# answer is out, and the read side this long after: a client still sending
# its body must get the time to read our answer before a reset could destroy
# it (a lingering close, RFC 9112 §9.6).  The grace starts only once the
# answer has left the process: a reactor busy for longer than the grace
# (a password check, measured 4.9 s) otherwise aborted before writing.
LINGER_SECONDS = 2.0
# How often a closing connection checks whether its answer is written yet.
ANSWER_POLL_SECONDS = 0.05
# A client that never reads its answer cannot hold the connection open
# longer than this before the linger starts anyway.
ANSWER_WRITE_SECONDS = 30.0
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
    # A byte of the next request's headers has arrived (the idle timeout then
    # answers 408 rather than closing an idle keep-alive connection).
    _headers_begun = False
    # Answered and closing: what the client still sends is read, so that a
    # reset cannot destroy the answer, but never parsed.
    _draining = False
    _linger_call: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._draining:
            return  # answered; only draining until the close
        if self._awaiting_headers:
            self._headers_begun = True
            if self._header_call is None and self.header_timeout:
                self._header_call = self.callLater(  # type: ignore[no-untyped-call]
                    self.header_timeout, self._headers_too_slow
                )
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def allHeadersReceived(self) -> None:
        # Before super(): gotLength may already answer, and the body's first
        # byte comes after this returns.
        replace_chunked_decoder(self, ZeroCopyChunkedDecoder)
        self._awaiting_headers = False
        self._cancel_header_deadline()
        super().allHeadersReceived()  # type: ignore[no-untyped-call]

    def requestDone(self, request: Any) -> None:
        # Before super(): it may parse a pipelined request's headers at once.
        self._awaiting_headers = True
        self._headers_begun = False
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
        # give framing errors the problem document of every other error, and
        # its header limits their own status (RFC 6585 §5).
        if header_limits_exceeded(self):
            self.answer_and_close(
                RequestHeadTooLarge(
                    f"the request header block exceeds {self.totalHeadersSize} bytes "
                    f"or {self.maxHeaders} fields",
                    in_request_line=False,
                )
            )
            return
        self.answer_and_close(
            MalformedRequest("the request is not valid HTTP/1.1 (framing or headers)")
        )

    def lineLengthExceeded(self, line: bytes) -> None:
        # LineReceiver closes without a word over MAX_LENGTH; the request line
        # gets 414 (RFC 9112 §3: a server that receives a request-target longer
        # than it wishes to parse MUST respond with 414), a header line 431.
        in_request_line = not request_line_parsed(self)
        which = "the request line" if in_request_line else "a request header line"
        self.answer_and_close(
            RequestHeadTooLarge(
                f"{which} exceeds {self.MAX_LENGTH} bytes", in_request_line=in_request_line
            )
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
        observe.raw_answer(error)
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
        sock = socket_transport(transport)
        if hasattr(sock, "bufferSize"):
            sock.bufferSize = DRAIN_READ_BYTES
        sock.resumeProducing()
        if is_tls(transport):
            # TLS closes its write side with close_notify, after the answer
            # (HTTPChannel.loseConnection unregisters the channel as producer
            # first, or TLS would wait for it), and keeps reading until the
            # client's close_notify.  Half-closing the TCP socket under TLS
            # instead dropped the still-buffered encrypted answer and broke
            # TLSMemoryBIOProtocol (bio_read on None).
            self.loseConnection()  # type: ignore[no-untyped-call]
        elif hasattr(transport, "loseWriteConnection"):
            # TCP sends its FIN once the buffer has drained.
            transport.loseWriteConnection()
        else:
            transport.loseConnection()
            return
        self._linger_once_written(int(ANSWER_WRITE_SECONDS / ANSWER_POLL_SECONDS))

    def _linger_once_written(self, polls_left: int) -> None:
        """Start the linger once the answer has reached the kernel (or never will)."""
        self._linger_call = None
        transport: Any = self.transport
        if transport is None:
            return
        if unsent_bytes(transport) and polls_left > 0:
            self._linger_call = self.callLater(  # type: ignore[no-untyped-call]
                ANSWER_POLL_SECONDS, lambda: self._linger_once_written(polls_left - 1)
            )
            return
        self._linger_call = self.callLater(  # type: ignore[no-untyped-call]
            LINGER_SECONDS, transport.abortConnection
        )

    def timeoutConnection(self) -> None:
        """The idle timeout: a request cut off mid-way gets its 408.

        Between requests (no byte of a next one yet) the connection is
        closed silently, as Twisted does.  A request whose headers or body
        stopped arriving is answered ``408`` instead, so the client learns why
        and, mid-body, which instances were stored whole before the silence
        (``storedSOPInstanceUIDs``, as for the body-rate 408 and the 413s).
        """
        from .request import StreamingRequest  # request.py imports this module

        transport: Any = self.transport
        if self._draining or transport is None:
            super().timeoutConnection()  # type: ignore[no-untyped-call]
            return
        seconds = self.stow.config.idle_timeout_seconds
        peer = str(transport.getPeer())
        # Answering takes over the connection: no second timeout meanwhile.
        request = self.requests[-1] if self.requests else None
        if not self._awaiting_headers and isinstance(request, StreamingRequest):
            self.setTimeout(None)  # type: ignore[no-untyped-call]
            log.info(
                "no byte of the body from {peer} for {seconds} s: 408", peer=peer, seconds=seconds
            )
            request.body_went_silent(seconds)
            return
        if self._awaiting_headers and self._headers_begun:
            # Part of a request's headers arrived, then nothing.
            self._refuse_slow_headers(f"stopped: no byte for {seconds:g} seconds")
            return
        super().timeoutConnection()  # type: ignore[no-untyped-call]

    def _cancel_header_deadline(self) -> None:
        call, self._header_call = self._header_call, None
        if call is not None and call.active():
            call.cancel()

    def _headers_too_slow(self) -> None:
        self._header_call = None
        if self.transport is None or not self._awaiting_headers:
            return
        self._refuse_slow_headers(f"did not arrive within {self.header_timeout:g} seconds")

    def _refuse_slow_headers(self, why: str) -> None:
        """408 for headers too slow (the deadline) or gone silent (the idle timeout)."""
        assert self.transport is not None
        log.info(
            "request headers from {peer} {why}: 408", peer=str(self.transport.getPeer()), why=why
        )
        self.answer_and_close(RequestTimeout(f"the request headers {why}"))


def _reason_phrase(error: StowError) -> bytes:
    # Twisted's table lacks some codes (429); the error's own title is the
    # standard phrase for those.
    return RESPONSES.get(error.status) or error.title.encode("ascii", "replace")
