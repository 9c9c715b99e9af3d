"""What travels between the main process and each worker: the AMP control commands.

The main process owns the server-wide limits (``workers.shared.SharedState``);
each worker reaches them over its one AMP connection (a UNIX socketpair the
main process makes for it).  ``main_side(shared, worker_id)`` is the main
process's end, ``worker_side()`` the worker's; ``StowService`` takes the
worker's end (``site.make_services(..., control=...)``) and uses its
``slots``, ``throttle`` and ``kdf_budget`` in place of local ones.

- Upload slots: ``AcquireSlot`` asks, ``ReleaseSlot`` frees (no answer).  The
  worker numbers its grants, so a request that goes away while it waits
  sends the release at once: the connection keeps order, so the main process
  judges the acquire first and frees what it granted, and the worker drops
  the answer when it comes.
- Authentication failures: ``AuthFailed`` reports one (no answer); the main
  process counts them for the whole server and tells every worker of a new
  block (``PeerBlocked``: seconds remaining, not a time, so the two clocks
  need not agree).  A worker answers "blocked?" from its copy, at once.
- Password checks: ``TakeKdf`` asks the one budget for a check's KDF time.
  The check was asynchronous already (a thread), so the extra round trip
  costs the request nothing it would notice.

If the connection is lost (the main process died) the worker refuses new
uploads with 503 rather than hang them, and its password checks find no
budget; the main process frees every slot of a worker whose connection it
lost, at once.  A responder must never raise: AMP closes the connection on
an unhandled error.  To add commands of your own, subclass ``MainControl``
or ``WorkerControl`` (AMP finds responders on the class) and pass the
subclass as ``protocol``.
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from ..auth.throttle import ThrottleMirror
from ..core.errors import ServiceUnavailable
from ..limits import Release
from .shared import SharedState, WorkerHoldings

log = Logger()

# A worker waits this long for the main process to answer before it answers
# 503 itself: the main process answers in well under a millisecond unless it
# is wedged, and a wedged one must not hang every request of every worker.
ANSWER_TIMEOUT_SECONDS = 10.0
# Retry-After of the 503s the worker answers when the main process cannot
# (it died, or is wedged): the worker is about to be replaced.
CONTROL_RETRY_AFTER_SECONDS = 1
CONTROL_LOST = "the server is restarting this process; send the request again"
CONTROL_LATE = "the server did not decide on the upload in time; send the request again"


class AcquireSlot(amp.Command):
    """Worker → main: take an upload slot for ``peer`` under the worker's id ``grant``."""

    arguments = [(b"grant", amp.Integer()), (b"peer", amp.Unicode())]
    # A refusal is an answer, not an AMP error: it carries the detail and the
    # Retry-After the client gets, which an AMP error could not.
    response = [
        (b"granted", amp.Boolean()),
        (b"detail", amp.Unicode()),
        (b"retry_after", amp.Integer()),
    ]


class ReleaseSlot(amp.Command):
    """Worker → main: free ``grant`` (sent once; nothing when it was refused)."""

    arguments = [(b"grant", amp.Integer())]
    requiresAnswer = False


class AuthFailed(amp.Command):
    """Worker → main: ``peer`` failed to authenticate once.

    Answered once counted, after any block it starts was sent to every
    worker: the worker holds its 401 for the answer, so the client's next
    try finds the block whichever worker it reaches.
    """

    arguments = [(b"peer", amp.Unicode())]


class PeerBlocked(amp.Command):
    """Main → every worker: refuse ``peer`` (429) for ``seconds`` from now."""

    arguments = [(b"peer", amp.Unicode()), (b"seconds", amp.Float())]
    requiresAnswer = False


class TakeKdf(amp.Command):
    """Worker → main: may a password check costing ``cost`` KDF seconds run now?"""

    arguments = [(b"cost", amp.Float())]
    response = [(b"granted", amp.Boolean())]


class MainControl(amp.AMP):
    """The main process's end of one worker's connection: answers from ``SharedState``."""

    def __init__(self, shared: SharedState, worker_id: str) -> None:
        super().__init__()
        self.shared = shared
        self.worker_id = worker_id
        self.holdings: WorkerHoldings | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.holdings = self.shared.attach(self.worker_id, self._tell_block)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        holdings, self.holdings = self.holdings, None
        if holdings is not None:
            # The worker died (or its connection broke): whatever it held is
            # free now, not when its clients' connections time out.
            freed = holdings.detach()
            if freed:
                log.info(
                    "worker {worker} is gone: its {count} upload slots are free",
                    worker=self.worker_id,
                    count=freed,
                    stow_event="workers.slots_released",
                )
        super().connectionLost(reason)

    def _tell_block(self, peer: str, seconds: float) -> None:
        self.callRemote(PeerBlocked, peer=peer, seconds=seconds)

    @AcquireSlot.responder
    def acquire_slot(self, grant: int, peer: str) -> dict[str, Any]:
        try:
            if self.holdings is None:
                raise ServiceUnavailable(CONTROL_LOST, CONTROL_RETRY_AFTER_SECONDS)
            self.holdings.acquire(grant, peer)
        except ServiceUnavailable as refused:
            return {
                "granted": False,
                "detail": refused.detail,
                "retry_after": refused.retry_after_seconds,
            }
        return {"granted": True, "detail": "", "retry_after": 0}

    @ReleaseSlot.responder
    def release_slot(self, grant: int) -> dict[str, Any]:
        if self.holdings is not None:
            self.holdings.release(grant)
        return {}

    @AuthFailed.responder
    def auth_failed(self, peer: str) -> dict[str, Any]:
        block = self.shared.failed(peer)
        if block is not None:
            log.warn(
                "{peer} blocked for {seconds} s after repeated authentication failures",
                peer=peer,
                seconds=block,
            )
        return {}

    @TakeKdf.responder
    def take_kdf(self, cost: float) -> dict[str, Any]:
        return {"granted": self.shared.take_kdf(cost)}


class RemoteSlots:
    """A worker's upload slots, kept by the main process; ``acquire`` answers a Deferred."""

    def __init__(self, control: WorkerControl) -> None:
        self._control = control
        self._grants = itertools.count(1)
        # The slots this worker holds now (granted, not yet released).
        self.active = 0

    def acquire(self, peer: str) -> Deferred[Release]:
        """A Deferred firing with the idempotent release, or failing with ``ServiceUnavailable``.

        Raises ``ServiceUnavailable`` at once when the main process is gone.
        Cancelling the Deferred (the request went away) frees the slot the
        main process may grant meanwhile; so does the answer timeout.
        """
        control = self._control
        if not control.connected:
            raise ServiceUnavailable(CONTROL_LOST, CONTROL_RETRY_AFTER_SECONDS)
        grant = next(self._grants)
        granted = False
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            if granted:
                self.active -= 1
            # Sent also for a grant not yet answered: it follows the acquire.
            control.send(ReleaseSlot, grant=grant)

        def cancelled(_: Deferred[Release]) -> None:
            # The request went away while waiting: free what may be granted.
            if timer.active():
                timer.cancel()
            release()

        result: Deferred[Release] = Deferred(cancelled)

        def late() -> None:
            if not result.called:
                release()
                result.errback(ServiceUnavailable(CONTROL_LATE, CONTROL_RETRY_AFTER_SECONDS))

        timer: IDelayedCall = control.clock.callLater(control.answer_timeout, late)

        def answered(box: dict[str, Any]) -> None:
            nonlocal granted
            if timer.active():
                timer.cancel()
            if result.called:
                return  # cancelled or late: its release is on its way already
            if box["granted"]:
                granted = True
                self.active += 1
                result.callback(release)
            else:
                result.errback(ServiceUnavailable(box["detail"], box["retry_after"]))

        def lost(failure: Failure) -> None:
            if timer.active():
                timer.cancel()
            if not result.called:
                result.errback(ServiceUnavailable(CONTROL_LOST, CONTROL_RETRY_AFTER_SECONDS))

        control.callRemote(AcquireSlot, grant=grant, peer=peer).addCallbacks(answered, lost)
        return result


class RemoteKdfBudget:
    """The main process's ``KdfBudget``, asked per password check; ``take`` answers a Deferred."""

    def __init__(self, control: WorkerControl) -> None:
        self._control = control

    def take(self, cost_seconds: float) -> Deferred[bool]:
        """Fires True when the check may run; False (503) over budget or without an answer."""
        control = self._control
        if not control.connected:
            return succeed(False)
        asked: Deferred[dict[str, Any]] = control.callRemote(TakeKdf, cost=cost_seconds)
        asked.addTimeout(control.answer_timeout, control.clock)

        def unanswered(failure: Failure) -> bool:
            log.warn(
                "no password-check budget from the main process: {why}",
                why=failure.getErrorMessage(),
            )
            return False

        return asked.addCallbacks(lambda box: bool(box["granted"]), unanswered)


class WorkerControl(amp.AMP):
    """A worker's end of its connection to the main process.

    ``slots``, ``throttle`` and ``kdf_budget`` are what ``StowService`` uses
    in place of its local ones.  Connect it before the worker serves: until
    then, as after the connection is lost, uploads are refused with 503.
    """

    def __init__(
        self, clock: Any = None, *, answer_timeout: float = ANSWER_TIMEOUT_SECONDS
    ) -> None:
        super().__init__()
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.answer_timeout = answer_timeout
        self.connected = False
        self.slots = RemoteSlots(self)
        self.throttle = ThrottleMirror(self._report_failure, clock.seconds)
        self.kdf_budget = RemoteKdfBudget(self)

    def connectionMade(self) -> None:
        super().connectionMade()
        self.connected = True

    # Set once the main process asked this worker to drain: the main process
    # then closes the connection as it stops, which is no failure.
    closing_expected = False

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        was_connected, self.connected = self.connected, False
        if was_connected and self.closing_expected:
            log.info(
                "the main process closed its connection while this worker drains",
                stow_event="workers.control_closed",
            )
        elif was_connected:
            log.error(
                "lost the connection to the main process ({why}); refusing new uploads",
                why=reason.getErrorMessage(),
                stow_event="workers.control_lost",
            )
        # Fails every question still waiting for an answer (the 503s).
        super().connectionLost(reason)

    def send(self, command: type[amp.Command], **arguments: Any) -> None:
        """Send a command that needs no answer; nothing once the connection is gone
        (the main process freed what this worker held when it saw it go)."""
        if self.connected:
            self.callRemote(command, **arguments)

    def _report_failure(self, peer: str) -> Deferred[None] | None:
        """Report a failure; a Deferred firing once the main process counted it (or
        did not answer in time: the 401 is not held longer), None when it is gone."""
        if not self.connected:
            return None
        asked: Deferred[Any] = self.callRemote(AuthFailed, peer=peer)
        asked.addTimeout(self.answer_timeout, self.clock)
        return asked.addBoth(lambda _: None)

    @PeerBlocked.responder
    def peer_blocked(self, peer: str, seconds: float) -> dict[str, Any]:
        self.throttle.block(peer, seconds)
        return {}


def main_side(
    shared: SharedState, worker_id: str, *, protocol: type[MainControl] = MainControl
) -> MainControl:
    """The main process's protocol for worker ``worker_id``'s connection."""
    return protocol(shared, worker_id)


def worker_side(
    clock: Any = None, *, protocol: type[WorkerControl] = WorkerControl
) -> WorkerControl:
    """The worker's protocol for its connection to the main process (``clock``: the reactor)."""
    return protocol(clock)
