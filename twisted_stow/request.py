"""``StreamingRequest``: a twisted.web Request that streams its body.

Stock twisted.web spools every body into memory or a temporary file before
any resource runs, answers ``Expect: 100-continue`` by itself and has no size
limit.  This subclass decides from the headers
alone in ``gotLength`` (before the ``100 Continue``), feeds each body chunk to
the upload's reader as it arrives, and pauses the socket while storage lags.
The Klein route runs, as usual, once the body is complete.

A decision that needs a password checked in a thread, or (in a worker
process) an upload slot from the main process, arrives later: the request
then pauses the socket, holds what the same read already brought (at most
one read), and sends ``100 Continue`` itself once admitted; a refusal is
answered before any ``100 Continue``.  A client that goes away meanwhile
cancels the decision, which frees a slot granted after it.
"""

from __future__ import annotations

from functools import partial
from io import BytesIO
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import INonQueuedRequestFactory
from twisted.web.server import Request
from zope.interface import provider

from .channel import StowChannel
from .core.deadlines import MinimumRate
from .core.errors import (
    BodyTooLarge,
    InternalError,
    InvalidChunkSize,
    RequestTimeout,
    ServiceUnavailable,
    StowError,
)
from .core.response import name_kept_parts
from .deferreds import detached
from .ingest import IngestResult
from .ops import observe
from .ops.metrics import RECEIVED_BYTES
from .twisted_private import (
    announced_chunk_bytes,
    awaiting_response,
    request_line,
    request_version,
    restore_timeout_after_response,
    socket_transport,
)

if TYPE_CHECKING:
    from .app import StowService
    from .upload import Upload

log = Logger()

# What a request waiting for its decision may hold of the body: the rest of
# the socket read that brought the headers (at most the read size, 256 KiB
# here, 64 KiB for a connection's first request), with room for one more read
# should HTTPChannel resume the transport for its own reasons meanwhile.
MAX_HELD_BYTES = 1024 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# A refusal mid-body (413) names the instances received whole before it
# (issue 18 point 7), so it waits for their outcomes, but no longer than
# this: a stalled disk must not keep the connection (and its slot) forever.
MID_BODY_OUTCOMES_SECONDS = 10.0


@provider(INonQueuedRequestFactory)
class StreamingRequest(Request):
    """A request whose STOW-RS body is parsed and stored as it arrives."""

    upload: Upload | None = None
    _refused = False
    # Refused mid-body, the answer waiting for the outcomes of the parts
    # received whole (MID_BODY_OUTCOMES_SECONDS at most).
    _refusing = False
    _paused_for_storage = False
    _saved_timeout: float | None = None
    _rate: MinimumRate | None = None
    _rate_call: IDelayedCall | None = None
    # The request line as gotLength saw it: HTTPChannel forgets it once the
    # body is in, which may happen while the decision is pending.
    _request_line: tuple[bytes, bytes] = (b"", b"")
    # While a password is checked in a thread or the main process is asked for
    # the slot: the decision to come, the body pieces that arrived meanwhile
    # (with what their chunk still announced), the request line if the body
    # is complete already, whether the client asked for 100 Continue, and the
    # idle timeout to restore.
    _deciding: Deferred[Upload] | None = None
    _held: list[tuple[bytes, int]] | None = None
    _held_bytes = 0
    _received_early: tuple[bytes, bytes, bytes] | None = None
    _continue_wanted = False
    _timeout_while_deciding: float | None = None
    # Body bytes received (metrics and the request.done log line).
    body_bytes = 0

    def __init__(self, channel: StowChannel, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        # The service this request belongs to, kept as Request.process keeps
        # self.site.
        self.stow: StowService = channel.stow
        self.stow_started: float = self.stow.reactor.seconds()

    @property
    def stow_channel(self) -> StowChannel:
        """``self.channel``, typed: StowSite builds only StowChannels."""
        channel = self.channel
        assert isinstance(channel, StowChannel)
        return channel

    def gotLength(self, length: int | None) -> None:
        # requestReceived() needs a seekable content object; the body itself
        # never goes there.
        self.content = BytesIO()
        channel = self.stow_channel
        method, target = self._request_line = request_line(channel)
        try:
            decision = self.stow.begin_upload(self, method, target, length)
        except StowError as error:
            self.refuse(error)
            return
        except Exception:
            # A bug must cost this request a 500, not the connection a hang.
            log.failure("deciding on a request from its headers failed")
            self.refuse(InternalError("the server failed to process the request"))
            return
        if isinstance(decision, Deferred):
            self._await_decision(decision)
            return
        self._start_upload(decision)

    def _start_upload(self, upload: Upload | None) -> None:
        self.upload = upload
        if upload is not None:
            # A limit met while a compressed body inflates behind the socket.
            upload.body.on_limit = lambda error: self._limit_while_decoding(upload, error)
            # Larger reads cost less CPU per byte; the flow says how large
            # (flow.WINDOW_READ_BYTES).  The socket's transport: under TLS
            # the wrapper ignores bufferSize.
            transport = socket_transport(self.stow_channel.transport)
            if transport is not None and hasattr(transport, "bufferSize"):
                upload.flow.watch_read_size(partial(setattr, transport, "bufferSize"))
            self._watch_body_rate()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused or self._refusing:
            return
        if self._deciding is not None:
            self._hold(data)
            return
        self._feed(data, announced_chunk_bytes(self.channel))

    def _feed(self, data: bytes, announced_after: int) -> None:
        upload = self.upload
        if upload is None:
            # Not a STOW route: the body is of no use to anyone.
            return
        if self._rate is not None:
            self._rate.received(len(data))
        self.body_bytes += len(data)
        RECEIVED_BYTES.inc(len(data))
        try:
            upload.body.feed(data, announced_after)
        except (BodyTooLarge, InvalidChunkSize) as error:
            self._refuse_naming_what_was_kept(upload, error)
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
        if self._refused or self._refusing:
            # The answer was written in gotLength/handleContentChunk.
            return
        if self._deciding is not None:
            # The whole body came with the headers: it is processed once admitted.
            self._received_early = (command, path, version)
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
        observe.request_finished(self)
        super().finish()

    def connectionLost(self, reason: Any) -> None:
        self._stop_rate_watch()
        deciding, self._deciding = self._deciding, None
        if deciding is not None:
            # The check itself goes on (its failure still counts against the
            # peer); what this request would have done with the answer is
            # dropped, and a slot granted after now is freed (RemoteSlots).
            self._held, self._received_early = None, None
            deciding.cancel()
        if self.upload is not None:
            self.upload.abort()
            self.upload.release()
            if not (self.finished or self._refused or self._refusing):
                observe.disconnected(self)
        super().connectionLost(reason)

    # The decision that waits for a password check in a thread, or for the
    # main process's upload slot.

    def _await_decision(self, decision: Deferred[Upload]) -> None:
        """Hold the request, its socket paused, until ``decision`` answers."""
        channel = self.stow_channel
        self._deciding = decision
        self._held = []
        # HTTPChannel would send 100 Continue as soon as gotLength returns;
        # the client must wait for the decision instead (docs/STREAMING.md).
        expect = self.requestHeaders.getRawHeaders(b"expect") or [b""]
        self._continue_wanted = (
            expect[0].lower() == b"100-continue" and request_version(channel) == b"HTTP/1.1"
        )
        self.requestHeaders.removeHeader(b"expect")
        transport: Any = channel.transport
        transport.pauseProducing()
        # Waiting for the KDF or the slot is not the client being idle (the
        # same reason as pauseProducing below); the header deadline ended with
        # the headers.
        self._timeout_while_deciding = channel.setTimeout(None)
        decision.addCallbacks(self._admitted, self._not_admitted).addErrback(self._broke)

    def _hold(self, data: bytes) -> None:
        """A body piece that arrived before the decision: kept, bounded."""
        assert self._held is not None
        self._held_bytes += len(data)
        if self._held_bytes > MAX_HELD_BYTES:
            # The transport was resumed behind our back more than once.
            self._held = None
            self.refuse(
                ServiceUnavailable(
                    "the request body arrived before the request was admitted",
                    retry_after_seconds=1,
                )
            )
            return
        self._held.append((data, announced_chunk_bytes(self.channel)))
        # HTTPChannel resumes the transport for its write side's reasons.
        channel: Any = self.channel
        channel.transport.pauseProducing()

    def _admitted(self, upload: Upload) -> None:
        """Authorized and admitted: go on where the synchronous path goes on."""
        self._deciding = None
        # First: whatever happens next, finish/connectionLost/refuse free its slot.
        self.upload = upload
        channel = self.stow_channel
        if channel.answered:
            # HTTPChannel found the held bytes unparsable and answered 400
            # meanwhile: this upload ends here.
            self._held, self._received_early = None, None
            upload.abort()
            upload.release()
            return
        self._start_upload(upload)
        channel.setTimeout(self._timeout_while_deciding)
        held, self._held = self._held or [], None
        early, self._received_early = self._received_early, None
        transport: Any = channel.transport
        if self._continue_wanted and early is None:
            transport.write(CONTINUE)
        for data, announced_after in held:
            self._feed(data, announced_after)
            if self._refused:
                return
        if early is not None:
            # HTTPChannel finished the body while the idle timeout was off, so
            # it saved none to restore after the response: hand it ours, as
            # allContentReceived would have (if paused for storage,
            # resumeProducing hands it over instead).
            if not self._paused_for_storage:
                restore_timeout_after_response(channel, channel.setTimeout(None))
            self.requestReceived(*early)
        elif not self._paused_for_storage:
            transport.resumeProducing()

    def _not_admitted(self, failure: Failure) -> None:
        """Refused after the check (401, 403, 429, 503, or any later header check)."""
        if failure.check(CancelledError) and self._deciding is None:
            return  # the client went away: connectionLost cancelled the decision
        self._deciding = None
        self._held, self._received_early = None, None
        error = failure.value
        if isinstance(error, StowError):
            self.refuse(error)
            return
        log.failure("deciding on a request from its headers failed", failure)
        self.refuse(InternalError("the server failed to process the request"))

    def _broke(self, failure: Failure) -> None:
        """A bug while going on after the decision: a 500, not a hang."""
        log.failure("going on after the authentication decision failed", failure)
        if self.channel is not None:
            if self.upload is not None:
                self.upload.abort()
            self.refuse(InternalError("the server failed to process the request"))

    # Backpressure: driven by the upload's BytesInFlight.

    def pauseProducing(self) -> None:
        """Storage is behind: stop reading the socket."""
        if self._paused_for_storage or self._refused or self._refusing:
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
        # client disconnected as idle (measured).
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
        if awaiting_response(channel):
            # The body is complete: HTTPChannel owns the read side now (it
            # resumes it after the response) and has saved our None as the
            # timeout to restore then; hand it the real one.
            restore_timeout_after_response(channel, self._saved_timeout)
        else:
            channel.setTimeout(self._saved_timeout)
            channel.transport.resumeProducing()

    # The minimum body rate (slowloris): deadlines.MinimumRate on our clock.

    def _now(self) -> float:
        seconds: float = self.stow.reactor.seconds()
        return seconds

    def _watch_body_rate(self) -> None:
        config = self.stow.config
        if not config.min_body_rate_bytes:
            return
        self._rate = MinimumRate(
            config.min_body_rate_bytes, config.body_rate_window_seconds, self._now()
        )
        self._schedule_rate_check(config.body_rate_window_seconds)

    def _schedule_rate_check(self, delay: float) -> None:
        self._rate_call = self.stow.reactor.callLater(delay, self._check_rate)

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
        error = RequestTimeout(
            f"the body arrived slower than {rate.required_bytes / rate.window_seconds:g} "
            f"bytes per second over {rate.window_seconds:g} seconds"
        )
        self._refuse_mid_body(error)

    def body_went_silent(self, seconds: float) -> None:
        """The idle timeout passed mid-body (``StowChannel.timeoutConnection``).

        Answered as the body rate's 408, but naming what was kept: the part
        in flight is dropped, the parts received whole are still stored and
        listed, so the client knows what to send again.
        """
        if not (self._refused or self._refusing or self.finished):
            self._refuse_mid_body(
                RequestTimeout(f"no byte of the body arrived for {seconds:g} seconds")
            )

    def _refuse_mid_body(self, error: StowError) -> None:
        """A guard stopped the body: the part in flight is dropped, the parts
        received whole are still stored and the answer lists them."""
        if self.upload is None:
            self.refuse(error)  # not a STOW route: nothing was kept
        else:
            self._refuse_naming_what_was_kept(self.upload, error)

    def _stop_rate_watch(self) -> None:
        self._rate = None
        call, self._rate_call = self._rate_call, None
        if call is not None and call.active():
            call.cancel()

    # Refusing mid-body: say what was kept.

    def _limit_while_decoding(self, upload: Upload, error: StowError) -> None:
        if not (self._refused or self._refusing):
            self._refuse_naming_what_was_kept(upload, error)

    def _refuse_naming_what_was_kept(self, upload: Upload, error: StowError) -> None:
        """Refuse once the parts received whole before ``error`` have their outcomes.

        The rest of the body is read and dropped meanwhile; the answer lists
        the stored SOP Instance UIDs (``core.response.STORED_EXTENSION``),
        so the client knows what to send again.  Storing is never cancelled:
        the wait is on a detached copy.
        """
        self._refusing = True
        self._stop_rate_watch()
        upload.abort()  # the part in flight only
        outcomes = detached(upload.ingest.close())
        outcomes.addTimeout(MID_BODY_OUTCOMES_SECONDS, self.stow.reactor)

        def answer(result: object) -> None:
            if isinstance(result, IngestResult):
                name_kept_parts(error, result.outcomes)
            else:
                error.detail += (
                    "; the instances received whole before it were still being stored "
                    f"after {MID_BODY_OUTCOMES_SECONDS:g} s"
                )
            self._refusing = False
            self.refuse(error)

        outcomes.addBoth(answer)

    # Refusing from the headers alone.

    def refuse(self, error: StowError) -> None:
        """Answer ``error`` now, before (or instead of) reading the body.

        ``StowChannel.answer_and_close`` writes the complete response and
        closes; ``Expect`` is dropped so HTTPChannel sends no ``100 Continue``
        after it.  Calling Request.finish() here would make HTTPChannel pop
        this request while its body is still being decoded.
        """
        if self._refused:
            return
        self._refused = True
        self._stop_rate_watch()
        self.requestHeaders.removeHeader(b"expect")
        channel = self.stow_channel
        method, target = self._request_line
        log.info(
            "refused {method} {target}: {status} {detail}",
            method=method,
            target=target,
            status=error.status,
            detail=error.detail,
            stow_event="request.refused",
            peer=self.stow.peer_host(self),
        )
        if self.upload is not None:
            # A refused upload must not keep its slot through the linger.
            self.upload.release()
        # The channel resumes the transport to drain what is still sent.
        self._paused_for_storage = False
        path = target.split(b"?", 1)[0].decode("latin-1")
        channel.answer_and_close(
            error,
            self.stow.refusal_headers(self),
            instance=path if path.startswith("/") else None,
        )
