"""``StreamingRequest``: a twisted.web Request that streams its body.

Stock twisted.web spools every body into memory or a temporary file before
any resource runs, answers ``Expect: 100-continue`` by itself and has no size
limit.  This subclass decides from the headers
alone in ``gotLength`` (before the ``100 Continue``), feeds each body chunk to
the upload's reader as it arrives, and pauses the socket while storage lags.
The Klein route runs, as usual, once the body is complete.
"""

from __future__ import annotations

from io import BytesIO
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
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
    StowError,
)
from .core.outcomes import Stored
from .deferreds import detached
from .ingest import IngestResult
from .twisted_private import (
    announced_chunk_bytes,
    awaiting_response,
    request_line,
    restore_timeout_after_response,
    socket_transport,
)

if TYPE_CHECKING:
    from .app import StowService
    from .upload import Upload

log = Logger()

# A refusal mid-body (413) names the instances received whole before it
# (issue 18 point 7), so it waits for their outcomes, but no longer than
# this: a stalled disk must not keep the connection (and its slot) forever.
MID_BODY_OUTCOMES_SECONDS = 10.0
# The problem document's extension member listing them (RFC 9457 §3.2).
STORED_EXTENSION = "storedSOPInstanceUIDs"


@provider(INonQueuedRequestFactory)
class StreamingRequest(Request):
    """A request whose STOW-RS body is parsed and stored as it arrives."""

    upload: Upload | None = None
    _refused = False
    # Refused mid-body, the answer waiting for the outcomes of the parts
    # received whole (MID_BODY_OUTCOMES_SECONDS at most).
    _refusing = False
    _line: tuple[bytes, bytes] = (b"", b"")
    _paused_for_storage = False
    _saved_timeout: float | None = None
    _rate: MinimumRate | None = None
    _rate_call: IDelayedCall | None = None

    def __init__(self, channel: StowChannel, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        # The service this request belongs to, kept as Request.process keeps
        # self.site.
        self.stow: StowService = channel.stow

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
        method, target = self._line = request_line(channel)
        try:
            self.upload = self.stow.begin_upload(self, method, target, length)
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
            # (measured: 256 KiB-1 MiB was best).
            # The socket's transport: under TLS the wrapper ignores bufferSize.
            transport = socket_transport(channel.transport)
            if transport is not None and hasattr(transport, "bufferSize"):
                transport.bufferSize = self.upload.read_size_bytes
            self._watch_body_rate()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused or self._refusing:
            return
        upload = self.upload
        if upload is None:
            # Not a STOW route: the body is of no use to anyone.
            return
        if self._rate is not None:
            self._rate.received(len(data))
        try:
            upload.body.feed(data, announced_chunk_bytes(self.channel))
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
        super().connectionLost(reason)

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

    # Refusing mid-body: say what was kept.

    def _refuse_naming_what_was_kept(self, upload: Upload, error: StowError) -> None:
        """Refuse once the parts received whole before ``error`` have their outcomes.

        The rest of the body is read and dropped meanwhile; the answer lists
        the stored SOP Instance UIDs (extension member ``STORED_EXTENSION``),
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
                error.extensions[STORED_EXTENSION] = [
                    o.instance.sop_instance_uid for o in result.outcomes if isinstance(o, Stored)
                ]
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
        method, target = self._line
        log.info(
            "refused {method} {target}: {status} {detail}",
            method=method,
            target=target,
            status=error.status,
            detail=error.detail,
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
