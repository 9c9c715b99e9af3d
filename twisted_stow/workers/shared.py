"""``SharedState``: the server-wide limits, kept once by the main process.

With several worker processes a limit counted in each would hold per worker,
not for the server: ``--max-requests 4`` with four workers would admit
sixteen uploads, and a guesser spreading its tries over the workers would get
four times the failures before a block.  So the main process keeps the one
``UploadSlots``, ``FailureThrottle`` and ``KdfBudget`` and the workers ask it
(``workers.control``).  Pure: the clock is passed in, and what a worker is
told of a new block goes through the callable it attached with.
"""

from __future__ import annotations

from collections.abc import Callable

from ..auth.throttle import FailureThrottle, KdfBudget
from ..core.config import StowConfig
from ..core.errors import ServiceUnavailable
from ..limits import Release, UploadSlots

# How the main process tells one worker "peer P is blocked for S seconds".
OnBlock = Callable[[str, float], None]


class SharedState:
    """The one set of server-wide limits, and what each attached worker holds of them."""

    def __init__(self, config: StowConfig, clock: Callable[[], float]) -> None:
        self.slots = UploadSlots(config.max_requests, config.max_requests_per_peer)
        self.throttle = FailureThrottle(clock)
        self.kdf_budget = KdfBudget(clock)
        self._workers: set[WorkerHoldings] = set()

    def attach(self, worker_id: str, on_block: OnBlock) -> WorkerHoldings:
        """A worker connected: its holdings, told of every block from now on.

        The blocks already in force are told at once, so a worker started
        (or restarted) later refuses a blocked peer as the others do.
        """
        holdings = WorkerHoldings(self, worker_id, on_block)
        self._workers.add(holdings)
        for peer, seconds in self.throttle.blocks():
            on_block(peer, seconds)
        return holdings

    def failed(self, peer: str) -> int | None:
        """A worker saw ``peer`` fail to authenticate; the block (seconds) if this starts one.

        A new block is told to every attached worker, the reporting one too.
        """
        block = self.throttle.failed(peer)
        if block is not None:
            seconds = self.throttle.blocked_for(peer) or float(block)
            for worker in list(self._workers):
                worker.on_block(peer, seconds)
        return block

    def take_kdf(self, cost_seconds: float) -> bool:
        """May a password check costing ``cost_seconds`` run now (``KdfBudget.take``)?"""
        return self.kdf_budget.take(cost_seconds)

    @property
    def workers(self) -> int:
        return len(self._workers)

    def _detached(self, holdings: WorkerHoldings) -> None:
        self._workers.discard(holdings)


class WorkerHoldings:
    """The slots one worker connection holds, by the grant ids the worker chose.

    The worker picks each grant's id, so it can send the release before it
    has the answer (a request cancelled while waiting): the connection keeps
    messages in order, the acquire is judged first, and a release of a grant
    that was refused, or is unknown, does nothing.
    """

    def __init__(self, shared: SharedState, worker_id: str, on_block: OnBlock) -> None:
        self.shared = shared
        self.worker_id = worker_id
        self.on_block = on_block
        self._held: dict[int, Release] = {}
        self._detached = False

    def acquire(self, grant: int, peer: str) -> None:
        """Take a slot for ``peer`` under ``grant``; raises ``ServiceUnavailable`` over a cap."""
        if self._detached:
            # A message that raced the connection's end: nothing may stay held.
            raise ServiceUnavailable("this worker's connection to the server is gone", 1)
        if grant in self._held:
            return  # asked twice: one slot, as the one release will free one
        self._held[grant] = self.shared.slots.acquire(peer)

    def release(self, grant: int) -> None:
        """Free ``grant``'s slot; nothing when it was refused, released already, or unknown."""
        release = self._held.pop(grant, None)
        if release is not None:
            release()

    @property
    def held(self) -> int:
        return len(self._held)

    def detach(self) -> int:
        """The worker is gone (it died, or its connection broke): free all it held.

        Returns how many slots that was.
        """
        self._detached = True
        self.shared._detached(self)
        held, self._held = self._held, {}
        for release in held.values():
            release()
        return len(held)
