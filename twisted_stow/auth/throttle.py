"""Slowing down a peer that keeps failing to authenticate.

After ``max_failures`` failures within ``window_seconds`` a peer is blocked:
its requests get 429 with Retry-After, and no credential is checked (so it
cannot keep the password KDF busy).  Each new block of the same peer lasts
twice as long as the previous one, up to ``max_block_seconds``; a peer
forgotten after a quiet spell starts again at ``base_block_seconds``.  A
success does not clear the count: one valid account must not let a peer
keep guessing another's password.  Pure: the clock is passed in.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

# Five tries a minute lets a person mistype; it makes guessing hopeless.
DEFAULT_MAX_FAILURES = 5
DEFAULT_WINDOW_SECONDS = 60.0
DEFAULT_BASE_BLOCK_SECONDS = 10.0
DEFAULT_MAX_BLOCK_SECONDS = 3600.0
# Bounded memory whatever the number of peers: the least recently failed go first.
DEFAULT_MAX_PEERS = 10_000


class Throttle(Protocol):
    """What the guard asks: this process's ``FailureThrottle``, or a worker's
    ``ThrottleMirror`` of the one the main process keeps."""

    def retry_after(self, peer: str) -> int | None: ...

    def failed(self, peer: str) -> int | Deferred[None] | None:
        """Count a failure: the block it starts (seconds), or, where the count lives
        in another process, a Deferred firing once it is counted there."""
        ...

    def __len__(self) -> int: ...


@dataclass
class _Peer:
    failures: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0
    blocks: int = 0
    last_failure: float = 0.0


class FailureThrottle:
    """Per-peer failure counts and blocks; ``clock()`` gives seconds."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        max_failures: int = DEFAULT_MAX_FAILURES,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        base_block_seconds: float = DEFAULT_BASE_BLOCK_SECONDS,
        max_block_seconds: float = DEFAULT_MAX_BLOCK_SECONDS,
        max_peers: int = DEFAULT_MAX_PEERS,
    ) -> None:
        self._clock = clock
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.base_block_seconds = base_block_seconds
        self.max_block_seconds = max_block_seconds
        self.max_peers = max_peers
        self._peers: OrderedDict[str, _Peer] = OrderedDict()

    def retry_after(self, peer: str) -> int | None:
        """Whole seconds until ``peer`` may try again, or None when it is not blocked."""
        record = self._peers.get(peer)
        if record is None:
            return None
        remaining = record.blocked_until - self._clock()
        return math.ceil(remaining) if remaining > 0 else None

    def blocked_for(self, peer: str) -> float | None:
        """Seconds (not rounded) until ``peer``'s block ends; None when it is not blocked."""
        record = self._peers.get(peer)
        if record is None:
            return None
        remaining = record.blocked_until - self._clock()
        return remaining if remaining > 0 else None

    def blocks(self) -> list[tuple[str, float]]:
        """Every peer blocked now, with the seconds its block still lasts."""
        now = self._clock()
        return [
            (peer, record.blocked_until - now)
            for peer, record in self._peers.items()
            if record.blocked_until > now
        ]

    def failed(self, peer: str) -> int | None:
        """Record a failure; the block in seconds when this one starts a block."""
        now = self._clock()
        record = self._peers.get(peer)
        if record is None or now - record.last_failure > self._forget_after():
            record = _Peer()
        self._peers[peer] = record
        self._peers.move_to_end(peer)
        while len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)
        record.last_failure = now
        while record.failures and now - record.failures[0] > self.window_seconds:
            record.failures.popleft()
        record.failures.append(now)
        if len(record.failures) < self.max_failures:
            return None
        block = min(self.max_block_seconds, self.base_block_seconds * 2.0**record.blocks)
        record.blocks += 1
        record.blocked_until = now + block
        record.failures.clear()
        return math.ceil(block)

    def _forget_after(self) -> float:
        # Long enough that the longest block is still remembered when it ends.
        return self.max_block_seconds + self.window_seconds

    def __len__(self) -> int:
        return len(self._peers)


class ThrottleMirror:
    """A worker process's copy of the blocks the main process's ``FailureThrottle`` decided.

    ``retry_after`` answers from the copy at once, as the throttle itself
    does; ``failed`` only reports the failure (``report(peer)``, a message to
    the main process) and decides nothing, so the count of a peer's failures
    is one across all workers.  ``block(peer, seconds)`` is the main
    process's broadcast.  The copy lags the decision by one message, and
    forgets a block once it is over; it holds at most ``max_peers`` blocks,
    the oldest dropped first (the main process bounds its own list alike).
    """

    def __init__(
        self,
        report: Callable[[str], Deferred[None] | None],
        clock: Callable[[], float],
        *,
        max_peers: int = DEFAULT_MAX_PEERS,
    ) -> None:
        self._report = report
        self._clock = clock
        self.max_peers = max_peers
        self._until: OrderedDict[str, float] = OrderedDict()

    def retry_after(self, peer: str) -> int | None:
        """Whole seconds until ``peer`` may try again, or None when it is not blocked."""
        until = self._until.get(peer)
        if until is None:
            return None
        remaining = until - self._clock()
        if remaining <= 0:
            del self._until[peer]
            return None
        return math.ceil(remaining)

    def failed(self, peer: str) -> Deferred[None] | None:
        """Report a failure to the owner of the count: a Deferred firing once it is
        counted (None: no owner to wait for); the block, if any, arrives as ``block``."""
        return self._report(peer)

    def block(self, peer: str, seconds: float) -> None:
        """The main process blocked ``peer`` for ``seconds`` from now."""
        self._until[peer] = self._clock() + seconds
        self._until.move_to_end(peer)
        while len(self._until) > self.max_peers:
            self._until.popitem(last=False)

    def __len__(self) -> int:
        return len(self._until)


# Seconds of password KDF per second of wall time, all peers together: a
# budget of time, not of checks, because one scrypt entry at n=2**17 costs as
# much as eight at the default n=2**14 (~50 ms here; benchmarks/auth_cost.py).
# Half a core leaves the rest for uploads even when many addresses guess at
# once, which the per-peer block cannot stop.
DEFAULT_KDF_SECONDS_PER_SECOND = 0.5


class KdfBudget:
    """A token bucket of KDF seconds; ``take(cost)`` says whether a check may run now.

    The bucket holds at most one second's worth.  A check may run whenever
    the balance is positive, and its whole cost is taken, so a single entry
    dearer than the bucket still gets checked and the debt is paid back
    before the next one: over any stretch of time the KDF runs at most
    ``seconds_per_second`` of it, plus one check.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        seconds_per_second: float = DEFAULT_KDF_SECONDS_PER_SECOND,
    ) -> None:
        self._clock = clock
        self.rate = seconds_per_second
        self._balance = seconds_per_second
        self._updated = clock()

    def take(self, cost_seconds: float) -> bool:
        """Spend ``cost_seconds`` if the balance is positive; False (spend nothing) if not."""
        self._refill()
        if self._balance <= 0.0:
            return False
        self._balance -= cost_seconds
        return True

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        self._balance = min(self.rate, self._balance + elapsed * self.rate)
