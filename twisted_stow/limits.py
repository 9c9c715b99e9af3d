"""Upload slots: how many STOW uploads run at once, in total and per peer.

Decided at header time, so a client over a limit gets ``503`` with
``Retry-After`` before it sends its body, never a hang.  Slots are released
when the response is finished or the connection is lost, not from
``notifyFinish`` callbacks, which run only after HTTPChannel has already
started the next pipelined request (docs/STREAMING.md, "the accounting trap").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .core.errors import ServiceUnavailable

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

# What we ask a refused client to wait: long enough for an upload slot to
# free up on a busy server, short enough not to stall a modality's queue.
RETRY_AFTER_SECONDS = 5


# Frees one slot; calling it again does nothing.
Release = Callable[[], None]


class Slots(Protocol):
    """What ``StowService`` takes a slot from: these local ``UploadSlots``, or a
    worker's slots kept by the main process (``workers.control.RemoteSlots``),
    whose answer is a Deferred (firing with the release, failing with
    ``ServiceUnavailable``).  ``active``: the slots held through this object."""

    @property
    def active(self) -> int: ...

    def acquire(self, peer: str) -> Release | Deferred[Release]: ...


class UploadSlots:
    """Counts running uploads; ``acquire`` refuses above the configured caps."""

    def __init__(
        self,
        max_total: int | None = None,
        max_per_peer: int | None = None,
        *,
        retry_after_seconds: int = RETRY_AFTER_SECONDS,
    ) -> None:
        self._max_total = max_total
        self._max_per_peer = max_per_peer
        self._retry_after = retry_after_seconds
        self.active = 0
        self.per_peer: Counter[str] = Counter()

    def acquire(self, peer: str) -> Release:
        """Take a slot for ``peer``; returns its idempotent release function.

        Raises ``ServiceUnavailable`` when a cap is reached.
        """
        # The client's own share first: a client over it is told so, busy
        # server or not (it is the one to slow down).
        if self._max_per_peer is not None and self.per_peer[peer] >= self._max_per_peer:
            raise ServiceUnavailable(
                f"{self.per_peer[peer]} uploads from {peer} are running, the limit per client",
                self._retry_after,
            )
        if self._max_total is not None and self.active >= self._max_total:
            raise ServiceUnavailable(
                f"the server is receiving {self.active} uploads, its limit",
                self._retry_after,
            )
        self.active += 1
        self.per_peer[peer] += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.active -= 1
            self.per_peer[peer] -= 1
            if not self.per_peer[peer]:
                del self.per_peer[peer]

        return release
