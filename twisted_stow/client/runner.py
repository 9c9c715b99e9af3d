"""Sending the requests: ``--concurrency`` in flight, retries, and each instance settled.

Twisted edge.  ``Uploader.add`` takes requests (tuples of instances of one
study) as the scan completes them; ``Uploader.done`` fires once every
instance added is settled: stored, or failed for good.  Each answer is
judged per instance (``answer.judge``): stored ones are journaled at once
(one flush per answer), transient failures are regrouped into later
requests, permanent ones reported.  Whole requests answered 408/429/503/504
or lost to a connection error are sent again after the backoff.  A fatal
answer (401, 403, 404, 405, 415) or an unreachable server before any
answer stops the run: nothing else could succeed.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from .answer import InstanceOutcome, UnreadableAnswer, Verdict, judge
from .batching import group
from .body import FileUnreadable, MultipartFilesProducer, boundary, content_type
from .failures import describe, fatal_message
from .files import Instance
from .journal import Journal
from .options import Settings
from .report import Line, Outcome, Report
from .retry import Backoff, is_retryable_status, parse_retry_after
from .summary import Tally

_log = Logger()
# The answer's first bytes kept for a failure's text (a problem+json detail).
_ANSWER_EXCERPT_CHARS = 200
ACCEPT = b"application/dicom+json"
USER_AGENT = b"stow-upload (twisted-stow)"


@dataclass(eq=False)  # one per request sent: compared and hashed by identity
class _Flight:
    instances: tuple[Instance, ...]
    sent_bytes: int = 0
    deferred: Deferred[None] | None = field(default=None, repr=False)


class Uploader:
    """Runs the requests of one ``stow-upload`` run against ``settings.target``."""

    def __init__(
        self,
        settings: Settings,
        http: HTTPClient,
        clock: IReactorTime,
        tally: Tally,
        report: Report,
        journal: Journal | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self._http = http
        self._clock = clock
        self.tally = tally
        self._report = report
        self._journal = journal
        self._backoff = Backoff(rand)
        self._queue: deque[tuple[Instance, ...]] = deque()
        self._flights: set[_Flight] = set()
        self._waiting = 0  # requests waiting out a backoff
        self._retries_of: dict[Instance, int] = {}
        self._unsettled: set[Instance] = set()
        self._adding = True
        self._answered = False  # any HTTP answer yet: the server is reachable
        self.fatal: str | None = None
        self.done: Deferred[None] = Deferred()
        self.on_queue_room: Callable[[], None] = lambda: None

    # -- what the scan and the progress display see

    @property
    def queued(self) -> int:
        """Requests not yet started (the scan pauses when this is large)."""
        return len(self._queue)

    @property
    def inflight_bytes(self) -> int:
        return sum(flight.sent_bytes for flight in self._flights)

    def add(self, request: Sequence[Instance]) -> None:
        """Queue one request (instances of one study) to be sent."""
        if self.fatal is not None:
            self._settle_unsent(request)
            return
        self._unsettled.update(request)
        self._queue.append(tuple(request))
        self._pump()

    def finish_adding(self) -> None:
        """No more requests will be added: ``done`` fires once these are settled."""
        self._adding = False
        self._pump()

    # -- scheduling

    def _pump(self) -> None:
        while self.fatal is None and self._queue and len(self._flights) < self.settings.concurrency:
            self._start(self._queue.popleft())
            self.on_queue_room()
        idle = not (self._queue or self._flights or self._waiting)
        if idle and not self._adding and not self.done.called:
            for instance in list(self._unsettled):
                self._settle_unsent((instance,))
            self.done.callback(None)

    def _start(self, request: tuple[Instance, ...]) -> None:
        flight = _Flight(request)
        self._flights.add(flight)
        flight.deferred = ensureDeferred(self._send(flight))

        def landed(result: object) -> None:
            self._flights.discard(flight)
            self._pump()
            if isinstance(result, Failure) and not result.check(CancelledError):
                _log.failure("request failed unexpectedly", result)

        flight.deferred.addBoth(landed)

    def _later(self, delay: float, request: tuple[Instance, ...]) -> None:
        self._waiting += 1

        def again() -> None:
            self._waiting -= 1
            if self.fatal is not None:
                self._settle_unsent(request)
                self._pump()
                return
            self._queue.appendleft(request)
            self._pump()

        self._clock.callLater(delay, again)

    # -- one request

    async def _send(self, flight: _Flight) -> None:
        def sent(count: int) -> None:
            flight.sent_bytes += count
            self.tally.sent_bytes += count

        boundary_text = boundary()
        producer = MultipartFilesProducer(
            [instance.path for instance in flight.instances],
            boundary_text,
            on_bytes=sent,
            gzip=self.settings.gzip,
        )
        headers = Headers(
            {
                b"Content-Type": [content_type(boundary_text).encode("ascii")],
                b"Accept": [ACCEPT],
                b"User-Agent": [USER_AGENT],
            }
        )
        if self.settings.gzip:
            headers.setRawHeaders(b"Content-Encoding", [b"gzip"])
        if self.settings.authorization is not None:
            headers.setRawHeaders(b"Authorization", [self.settings.authorization.encode("latin-1")])
        try:
            response: IResponse = await self._http.post(
                self.settings.target,
                data=producer,
                headers=headers,
                timeout=self.settings.timeout_seconds,
            )
            body: bytes = await treq.content(response)
        except CancelledError:
            if self.fatal is not None:
                return  # the run was stopped: settled by _pump
            self._request_failed(flight.instances, None, None, "no answer (timed out)")
            return
        except Exception as error:  # every connection failure is one of these
            self._connection_failed(flight.instances, error)
            return
        self._answered = True
        self._answer(flight.instances, response, body)

    def _connection_failed(self, request: tuple[Instance, ...], error: Exception) -> None:
        unreadable = _unreadable(error)
        if unreadable is not None:
            # One file vanished or broke since the scan: it fails, the others go again.
            bad = [i for i in request if i.path == unreadable.path]
            for instance in bad:
                self._settle_failed(instance, None, None, f"cannot read: {unreadable.error}")
            rest = tuple(i for i in request if i.path != unreadable.path)
            if rest:
                self._later(0.0, rest)
            return
        text = describe(error)
        if not self._answered:
            self._stop(f"cannot reach {self.settings.url}: {text}")
            return
        self._request_failed(request, None, None, text)

    def _answer(self, request: tuple[Instance, ...], response: IResponse, body: bytes) -> None:
        status = response.code
        message = fatal_message(status, self.settings.target)
        if message is not None:
            self._stop(message)
            self._settle_unsent(request, status)
            return
        if is_retryable_status(status):
            retry_after = parse_retry_after(_header(response, b"Retry-After"), time.time())
            self._request_failed(request, status, retry_after, f"HTTP {status}")
            return
        try:
            outcomes = judge([i.sop_instance_uid for i in request], body, status)
        except UnreadableAnswer:
            excerpt = body[:_ANSWER_EXCERPT_CHARS].decode("utf-8", "replace").strip()
            text = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
            if 200 <= status < 300:
                self._request_failed(request, status, None, text + " (no Store Instances Response)")
            else:
                for instance in request:
                    self._settle_failed(instance, status, None, text)
            return
        stored: list[Instance] = []
        again: list[Instance] = []
        for instance, outcome in zip(request, outcomes, strict=True):
            if outcome.verdict is Verdict.STORED:
                stored.append(instance)
                self._settle_stored(instance, status, outcome.reason, outcome.text)
            elif outcome.verdict is Verdict.FAILED:
                self._settle_failed(instance, status, outcome.reason, outcome.text)
            else:
                again.append(instance)
        if self._journal is not None:
            self._journal.record(stored)
        self._retry_instances(again, status, outcomes_by_uid(outcomes))

    def _request_failed(
        self,
        request: tuple[Instance, ...],
        status: int | None,
        retry_after: float | None,
        text: str,
    ) -> None:
        """The whole request is sent again after the backoff, or fails when out of retries."""
        keep = []
        for instance in request:
            self._retries_of[instance] = retries = self._retries_of.get(instance, 0) + 1
            if retries > self.settings.retries:
                self._settle_failed(instance, status, None, f"{text} (after {retries - 1} retries)")
            else:
                keep.append(instance)
        if keep:
            self.tally.retries += 1
            attempt = max(self._retries_of[i] for i in keep)
            self._later(self._backoff.delay(attempt, retry_after), tuple(keep))

    def _retry_instances(
        self, instances: list[Instance], status: int, reasons: dict[str, tuple[int | None, str]]
    ) -> None:
        keep = []
        for instance in instances:
            self._retries_of[instance] = retries = self._retries_of.get(instance, 0) + 1
            code, text = reasons[instance.sop_instance_uid]
            if retries > self.settings.retries:
                self._settle_failed(instance, status, code, f"{text} (after {retries - 1} retries)")
            else:
                keep.append(instance)
        for request in group(keep, self.settings.max_instances, self.settings.max_bytes):
            self.tally.retries += 1
            attempt = max(self._retries_of[i] for i in request)
            self._later(self._backoff.delay(attempt), request)

    def _stop(self, message: str) -> None:
        """Stop the run: nothing more is sent, requests in flight are cancelled."""
        if self.fatal is not None:
            return
        self.fatal = message
        while self._queue:
            self._settle_unsent(self._queue.popleft())
        for flight in list(self._flights):
            if flight.deferred is not None:
                flight.deferred.cancel()

    # -- settling

    def _settle_stored(
        self, instance: Instance, status: int, warning: int | None, text: str
    ) -> None:
        if instance not in self._unsettled:
            return
        self._unsettled.discard(instance)
        self.tally.stored += 1
        self.tally.stored_bytes += instance.size
        self._report.write(
            Line(instance.path, instance.sop_instance_uid, Outcome.STORED, warning, text, status)
        )

    def _settle_failed(
        self, instance: Instance, status: int | None, reason: int | None, text: str
    ) -> None:
        if instance not in self._unsettled:
            return
        self._unsettled.discard(instance)
        self.tally.failed[(reason, text)] += 1
        self.tally.failed_bytes += instance.size
        self._report.write(
            Line(instance.path, instance.sop_instance_uid, Outcome.FAILED, reason, text, status)
        )

    def _settle_unsent(self, request: Sequence[Instance], status: int | None = None) -> None:
        for instance in request:
            self._unsettled.add(instance)
            self._settle_failed(instance, status, None, "not sent: the run was stopped")


def outcomes_by_uid(outcomes: Sequence[InstanceOutcome]) -> dict[str, tuple[int | None, str]]:
    """SOP Instance UID → (reason, text) of each judged outcome."""
    return {outcome.sop_instance_uid: (outcome.reason, outcome.text) for outcome in outcomes}


def _header(response: IResponse, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


def _unreadable(error: BaseException) -> FileUnreadable | None:
    """The ``FileUnreadable`` behind a failed request, if a file broke it."""
    if isinstance(error, FileUnreadable):
        return error
    for reason in getattr(error, "reasons", None) or ():
        value = getattr(reason, "value", None)
        if isinstance(value, BaseException):
            found = _unreadable(value)
            if found is not None:
                return found
    return None
