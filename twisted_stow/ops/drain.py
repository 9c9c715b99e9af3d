"""The graceful drain: SIGTERM stops listening, lets uploads finish, then exits 0.

twistd's own SIGTERM handler stops the reactor at once (aborting every
upload) and then re-sends itself the signal, so the process exits with
status -15.  ``Drain.install`` replaces it once the reactor runs: the first
SIGTERM (or SIGINT) stops the listening ports, turns ``/readyz`` and every
new request on an open keep-alive connection into 503 + ``Connection:
close``, waits for the uploads in flight up to ``--drain-timeout``, aborts
the rest (their staged parts are removed by the usual disconnect path; the
instances they sent whole stay stored) and stops the reactor itself, so
twistd exits 0.  A second signal ends the wait at once: the same abort, the
same orderly stop.

With worker processes (``--workers``) the set of uploads in flight and the
``draining`` flag are per worker: the main process closes the shared
listening sockets and has each worker ``begin`` (``workers/supervisor.py``),
then exits once every worker has.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from ..core.errors import ServiceUnavailable
from . import metrics

log = Logger()

DEFAULT_DRAIN_TIMEOUT_SECONDS = 60.0
# How soon a client refused during the drain should try again (another
# instance, or this one restarted).
DRAIN_RETRY_AFTER_SECONDS = 5
DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The answers of the last uploads are in their connections' write buffers
# when the drain ends; stopping the reactor then would drop them.  They get
# this long to be sent before the process stops anyway.
FLUSH_TIMEOUT_SECONDS = 5.0
_FLUSH_POLL_SECONDS = 0.01


class Draining(ServiceUnavailable):
    """The server is draining (SIGTERM): it takes no new request."""


class Drain:
    """The uploads in flight, and the drain that waits for them."""

    def __init__(
        self, reactor: Any, timeout_seconds: float = DEFAULT_DRAIN_TIMEOUT_SECONDS
    ) -> None:
        self._reactor = reactor
        self.timeout_seconds = timeout_seconds
        self.draining = False
        # Each upload holding a slot: its request (to abort its connection).
        self._in_flight: dict[int, Any] = {}
        self._stop_listening: Callable[[], object] = lambda: None
        self._done: Deferred[None] | None = None
        self._timer: Any = None
        self._stopping = False
        # Connections of uploads answered during the drain, closing once
        # their answer is written (see _closing_after_answer).
        self._closing: list[Any] = []

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def track(self, request: Any, release: Callable[[], None]) -> Callable[[], None]:
        """Count ``request`` in flight until its slot's (idempotent) ``release`` runs."""
        key = id(request)
        self._in_flight[key] = request

        def released() -> None:
            if self._in_flight.pop(key, None) is not None:
                if self.draining:
                    self._close_after_answer(request)
                    if not self._in_flight:
                        self._finish()
            release()

        return released

    def uploads(self) -> list[Any]:
        """The uploads in flight (read by the metrics at scrape time, in a thread)."""
        # list() of a dict's values is one C call: safe beside the reactor thread.
        return [r.upload for r in list(self._in_flight.values()) if r.upload is not None]

    def refuse_if_draining(self) -> None:
        """Raise ``Draining`` for a new request once the drain began."""
        if self.draining:
            raise Draining(
                "the server is shutting down; send the request again",
                DRAIN_RETRY_AFTER_SECONDS,
            )

    def install(self, stop_listening: Callable[[], object]) -> None:
        """Replace twistd's signal handlers (call once the reactor runs)."""
        self._stop_listening = stop_listening
        for number in DRAIN_SIGNALS:
            signal.signal(number, self._signalled)

    def _signalled(self, number: int, frame: object) -> None:
        # A signal handler runs between two bytecodes of whatever the reactor
        # thread was doing: only schedule the work.
        self._reactor.callFromThread(self.begin, signal.Signals(number).name)

    def begin(self, why: str = "SIGTERM") -> Deferred[None]:
        """Start the drain (or, if it runs already, end it now); fires once the reactor stops."""
        if self.draining:
            log.warn(
                "{why} during the drain: aborting {count} uploads now",
                why=why,
                count=self.in_flight,
            )
            self._abort_all()
            assert self._done is not None
            return self._done
        self.draining = True
        metrics.DRAINING.set(1)
        self._done = Deferred()
        log.info(
            "{why}: draining, {count} uploads in flight, {timeout:g} s at most",
            why=why,
            count=self.in_flight,
            timeout=self.timeout_seconds,
            stow_event="server.draining",
        )
        maybeDeferred(self._stop_listening).addErrback(
            lambda failure: log.failure("stopping the listeners failed", failure)
        )
        if not self._in_flight:
            self._finish()
        else:
            self._timer = self._reactor.callLater(self.timeout_seconds, self._timed_out)
        return self._done

    def _timed_out(self) -> None:
        self._timer = None
        log.warn(
            "drain timeout: aborting {count} uploads still in flight",
            count=self.in_flight,
            stow_event="server.drain_timeout",
        )
        self._abort_all()

    def _abort_all(self) -> None:
        for request in list(self._in_flight.values()):
            channel = getattr(request, "channel", None)
            transport = getattr(channel, "transport", None)
            if transport is not None:
                # connectionLost aborts the upload: the part in flight is
                # removed, the parts received whole stay stored.
                transport.abortConnection()
            else:
                request.upload.release()
        # abortConnection reports connectionLost on a later turn; releases follow.
        if not self._in_flight:
            self._finish()

    def _close_after_answer(self, request: Any) -> None:
        """Close the connection once the answer being finished is written (a draining
        server keeps no connection alive), and have the stop wait for it."""
        transport = getattr(getattr(request, "channel", None), "transport", None)
        if transport is None:
            return
        self._closing.append(transport)
        # On a later turn: the slot is released before the last bytes of
        # the answer are written (request.finish); loseConnection then
        # sends everything buffered before it closes.
        self._reactor.callLater(0, transport.loseConnection)

    def _finish(self) -> None:
        if self._done is None or self._done.called or self._stopping:
            return
        # Once: an abort right after the last release would schedule a second stop.
        self._stopping = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        log.info("drained: stopping", stow_event="server.drained")
        done = self._done
        # On a later turn: the last request's response is still being written.
        deadline = self._reactor.seconds() + FLUSH_TIMEOUT_SECONDS
        self._reactor.callLater(0, self._stop_once_sent, done, deadline)

    def _stop_once_sent(self, done: Deferred[None], deadline: float) -> None:
        self._closing = [t for t in self._closing if not _closed(t)]
        if self._closing and self._reactor.seconds() < deadline:
            self._reactor.callLater(_FLUSH_POLL_SECONDS, self._stop_once_sent, done, deadline)
            return
        self._stop(done)

    def _stop(self, done: Deferred[None]) -> None:
        if self._reactor.running:
            self._reactor.stop()
        done.callback(None)


def _closed(transport: Any) -> bool:
    """Whether a connection closed (TCP: ``disconnected``; TLS: its TCP transport's)."""
    inner = getattr(transport, "transport", None)
    if inner is not None and not hasattr(transport, "disconnected"):
        transport = inner
    return bool(getattr(transport, "disconnected", False)) or not getattr(
        transport, "connected", True
    )
