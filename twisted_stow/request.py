"""``StreamingRequest``: a twisted.web Request that streams its body.

Stock twisted.web spools every body into memory or a temporary file before
any resource runs, answers ``Expect: 100-continue`` by itself and has no size
limit (../shared/TWISTED.md Q1, Q5).  This subclass decides from the headers
alone in ``gotLength`` (before the ``100 Continue``), feeds each body chunk to
the upload's reader as it arrives, and pauses the socket while storage lags.
The Klein route runs, as usual, once the body is complete.
"""

from __future__ import annotations

from io import BytesIO
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.http import RESPONSES, _ChunkedTransferDecoder
from twisted.web.iweb import INonQueuedRequestFactory
from twisted.web.server import Request
from zope.interface import provider

from .core.deadlines import MinimumRate
from .core.errors import (
    BodyTooLarge,
    InternalError,
    InvalidChunkSize,
    RequestTimeout,
    StowError,
)

if TYPE_CHECKING:
    from .upload import Upload

log = Logger()

# After an early refusal the write side is closed at once, and the read side
# after this grace period: a client still sending its body must get the time
# to read our answer before a reset could destroy it (a lingering close).
LINGER_SECONDS = 2.0


def channel_request_line(channel: Any) -> tuple[bytes, bytes]:
    """Method and request-target of the request whose headers just arrived.

    ``Request.method``/``uri`` are placeholders until the body is in, but
    ``HTTPChannel`` keeps the parsed request line in ``_command``/``_path``
    (private, unchanged since Twisted 13; tests/memory/test_request.py fails
    loudly if that ever changes).  HTTP/2 streams expose ``command``/``path``.
    """
    try:
        return channel._command, channel._path
    except AttributeError:
        return channel.command, channel.path


def announced_chunk_bytes(channel: Any) -> int:
    """Bytes the chunk being delivered still announces after this piece.

    Twisted trusts any chunk-size and counts down from it; reading what is
    left lets an absurd size be refused before its data is processed.  The
    decoder's ``state``/``length`` are private (tests/memory/test_slow_clients.py
    fails loudly if they change); 0 when the body is not chunked.
    """
    decoder = getattr(channel, "_transferDecoder", None)
    if isinstance(decoder, _ChunkedTransferDecoder) and decoder.state == "BODY":
        length: int = decoder.length
        return length
    return 0


@provider(INonQueuedRequestFactory)
class StreamingRequest(Request):
    """A request whose STOW-RS body is parsed and stored as it arrives."""

    upload: Upload | None = None
    _refused = False
    _linger_call: IDelayedCall | None = None
    _paused_for_storage = False
    _saved_timeout: float | None = None
    _rate: MinimumRate | None = None
    _rate_call: IDelayedCall | None = None

    def gotLength(self, length: int | None) -> None:
        # requestReceived() needs a seekable content object; the body itself
        # never goes there.
        self.content = BytesIO()
        channel: Any = self.channel
        method, target = channel_request_line(channel)
        try:
            self.upload = channel.site.stow.begin_upload(self, method, target, length)
        except StowError as error:
            self.refuse(error)
            return
        except Exception:
            # A bug must cost this request a 500, not the connection a hang.
            log.failure("deciding on a request from its headers failed")
            self.refuse(InternalError("the server failed to process the request"))
            return
        if self.upload is not None:
            # Larger reads roughly halve the receive path's CPU cost
            # (TWISTED.md Q6: 256 KiB-1 MiB was best).
            transport = channel.transport
            if transport is not None and hasattr(transport, "bufferSize"):
                transport.bufferSize = self.upload.read_size_bytes
            self._watch_body_rate()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        upload = self.upload
        if upload is None:
            # Not a STOW route: the body is of no use to anyone.
            return
        if self._rate is not None:
            self._rate.received(len(data))
        try:
            upload.feed(data, announced_chunk_bytes(self.channel))
        except (BodyTooLarge, InvalidChunkSize) as error:
            upload.abort()
            self.refuse(error)
            return
        except Exception:
            log.failure("processing a body chunk failed")
            upload.abort()
            self.refuse(InternalError("the server failed to process the request body"))
            return
        if self._paused_for_storage:
            # HTTPChannel resumes the transport for its own write-side
            # reasons; keep it paused while storage is behind.
            channel: Any = self.channel
            channel.transport.pauseProducing()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            # The answer was written in gotLength/handleContentChunk.
            return
        self._stop_rate_watch()
        if self.upload is not None:
            self.upload.body_complete()
        super().requestReceived(command, path, version)

    def finish(self) -> None:
        # Before super(): HTTPChannel may start the next pipelined request
        # from inside finish(), and it must see this upload's slot free.
        if self.upload is not None:
            self.upload.release()
        super().finish()

    def connectionLost(self, reason: Any) -> None:
        self._stop_rate_watch()
        if self.upload is not None:
            self.upload.abort()
            self.upload.release()
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        super().connectionLost(reason)

    # Backpressure: driven by the upload's BytesInFlight.

    def pauseProducing(self) -> None:
        """Storage is behind: stop reading the socket."""
        if self._paused_for_storage or self._refused:
            return
        self._paused_for_storage = True
        if self._rate is not None:
            self._rate.pause(self._now())
        channel: Any = self.channel
        # The transport itself, not HTTPChannel.pauseProducing: that one is
        # the write side's hook and would mark the channel as waiting for its
        # send buffer, which changes when it resumes reading after a response.
        channel.transport.pauseProducing()
        # HTTPChannel's idle timer only restarts on received bytes; while we
        # hold the socket paused none arrive, and a slow disk would get the
        # client disconnected as idle (TWISTED.md Q3, measured).
        self._saved_timeout = channel.setTimeout(None)

    def resumeProducing(self) -> None:
        """Storage caught up: read the socket again."""
        if not self._paused_for_storage:
            return
        self._paused_for_storage = False
        if self._rate is not None:
            self._rate.resume(self._now())
        channel = getattr(self, "channel", None)
        if channel is None:
            return
        if channel._handlingRequest:
            # The body is complete: HTTPChannel owns the read side now (it
            # resumes it after the response) and has saved our None as the
            # timeout to restore then; hand it the real one.
            channel._savedTimeOut = self._saved_timeout
        else:
            channel.setTimeout(self._saved_timeout)
            channel.transport.resumeProducing()

    # The minimum body rate (slowloris): deadlines.MinimumRate on our clock.

    def _now(self) -> float:
        channel: Any = self.channel
        seconds: float = channel.site.stow.reactor.seconds()
        return seconds

    def _watch_body_rate(self) -> None:
        channel: Any = self.channel
        config = channel.site.stow.config
        if not config.min_body_rate_bytes:
            return
        self._rate = MinimumRate(
            config.min_body_rate_bytes, config.body_rate_window_seconds, self._now()
        )
        self._schedule_rate_check(config.body_rate_window_seconds)

    def _schedule_rate_check(self, delay: float) -> None:
        channel: Any = self.channel
        self._rate_call = channel.site.stow.reactor.callLater(delay, self._check_rate)

    def _check_rate(self) -> None:
        self._rate_call = None
        rate = self._rate
        if rate is None:
            return
        delay = rate.check(self._now())
        if delay is not None:
            self._schedule_rate_check(delay)
            return
        self._stop_rate_watch()
        if self.upload is not None:
            # Removes the staged part in flight; parts received whole stay.
            self.upload.abort()
        self.refuse(
            RequestTimeout(
                f"the body arrived slower than {rate.required_bytes / rate.window_seconds:g} "
                f"bytes per second over {rate.window_seconds:g} seconds"
            )
        )

    def _stop_rate_watch(self) -> None:
        self._rate = None
        call, self._rate_call = self._rate_call, None
        if call is not None and call.active():
            call.cancel()

    # Refusing from the headers alone.

    def refuse(self, error: StowError) -> None:
        """Answer ``error`` now, before (or instead of) reading the body.

        Writes a complete response straight to the transport and closes the
        connection; ``Expect`` is dropped so HTTPChannel sends no ``100
        Continue`` after it.  Calling Request.finish() here would make
        HTTPChannel pop this request while its body is still being decoded.
        """
        if self._refused:
            return
        self._refused = True
        self._stop_rate_watch()
        self.requestHeaders.removeHeader(b"expect")
        channel: Any = self.channel
        channel.persistent = False
        stow = channel.site.stow
        method, target = channel_request_line(channel)
        status, headers, body = stow.refusal(self, error, target)
        lines = [b"HTTP/1.1 %d %s" % (status, _reason_phrase(status, error.title))]
        lines += [name + b": " + value for name, value in headers]
        lines += [b"Content-Length: %d" % len(body), b"Connection: close", b"", b""]
        transport: Any = channel.transport
        transport.write(b"\r\n".join(lines) + body)
        log.info(
            "refused {method} {target}: {status} {detail}",
            method=method,
            target=target,
            status=status,
            detail=error.detail,
        )
        if self.upload is not None:
            # A refused upload must not keep its slot through the linger.
            self.upload.release()
        if self._paused_for_storage:
            self._paused_for_storage = False
            transport.resumeProducing()
        drain_input = getattr(channel, "drain_input", None)
        if drain_input is not None:
            drain_input()
        if hasattr(transport, "loseWriteConnection"):
            transport.loseWriteConnection()
            self._linger_call = stow.reactor.callLater(LINGER_SECONDS, transport.abortConnection)
        else:
            transport.loseConnection()


def _reason_phrase(status: int, title: str) -> bytes:
    # Twisted's table lacks some codes (429); the error's own title is the
    # standard phrase for those.
    return RESPONSES.get(status) or title.encode("ascii", "replace")
