"""Backpressure for one upload: what it holds, within its share of the process's budget.

One owner decides when to stop reading the socket: the upload's ``Ingest``.
It adds the bytes it hands to a part writer and subtracts them when that
write's Deferred fires (storage wrote, sent or dropped them: they left
memory).  Those bytes are the upload's ``Share`` of the process-wide
``core.budget.MemoryBudget``: the upload reads only inside a window granted
by the budget, pauses at the window and resumes below half of it, and yields
its window to waiting uploads in turn (the pure rules are in
``core/budget.py``).  Like ``twisted.internet.abstract.FileDescriptor.
_maybePauseProducer``, but counted in bytes held rather than in a write
buffer.  Backends do no accounting of their own: they fire a write's
Deferred once its bytes left memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .core.budget import DEFAULT_BUDGET_BYTES, FILESYSTEM_WINDOW_BYTES, MemoryBudget
from .ops.metrics import STORAGE_PAUSES

# An upload's own high-water mark when it is given no process budget (tests,
# tools): the filesystem's window.
HIGH_WATER_BYTES = FILESYSTEM_WINDOW_BYTES
# Parts between "received whole" and "outcome known".  Each costs storage a
# few milliseconds (the filesystem: an fsync on a writer thread; validation
# is a few comparisons on the reactor); 64 queued keeps every thread busy
# for a 2,000-instance CT without letting tiny-part bodies pile up work.
HIGH_WATER_PARTS = 64
LOW_WATER_PARTS = 16
# The socket's read size.  Inside a window of the budget, where every byte
# read is counted, 1 MiB: 8-20% less CPU per GB than 256 KiB (fewer reads,
# parser and hash calls; 256 KiB-1 MiB already halved the cost of Twisted's
# 64 KiB default; docs/DESIGN.md).  Without a window an upload may take one
# read beyond the budget before it waits for one, so that read stays small:
# 64 uploads waiting hold 16 MiB, not 64.
WINDOW_READ_BYTES = 1024 * 1024
WAITING_READ_BYTES = 256 * 1024


class Pausable(Protocol):
    """What the flow controller drives: the request's read side."""

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


class BytesInFlight:
    """Counts what the upload holds; pauses the producer while it may not read.

    Four reasons pause, any one is enough: the upload's ``Share`` of the
    memory budget says so (no window yet, a window's bytes held, or yielding
    to waiting uploads), parts received whole but not yet validated and
    committed, and header captures whose walk is behind the bytes received
    (``Ingest`` spreads a long walk over reactor turns, and reading on would
    only queue more).  Bytes alone would let a body of many tiny parts queue
    unbounded per-part work (a file, an fsync and a validation each) while
    never crossing a byte mark.

    Without a ``budget`` the upload gets one of its own (tests and tools).
    """

    def __init__(
        self,
        producer: Pausable,
        *,
        budget: MemoryBudget | None = None,
        high_water_parts: int = HIGH_WATER_PARTS,
        low_water_parts: int = LOW_WATER_PARTS,
    ) -> None:
        if not 0 <= low_water_parts < high_water_parts:
            raise ValueError("need 0 <= low water < high water (parts)")
        self._producer = producer
        if budget is None:
            budget = MemoryBudget(DEFAULT_BUDGET_BYTES, HIGH_WATER_BYTES)
        self.budget = budget
        self._high_parts = high_water_parts
        self._low_parts = low_water_parts
        self.pending_parts = 0
        # Header captures with bytes still to walk (their walk was cut into
        # steps): while any is behind, nothing more is read.
        self.captures_behind = False
        self.paused = False
        self.pause_count = 0
        self._parts_high = False
        self._on_read_size: Callable[[int], None] | None = None
        self._read_size = 0
        self.share = budget.share(self._update)

    @property
    def in_flight_bytes(self) -> int:
        """Bytes the upload holds: handed to storage and not yet out of memory."""
        return self.share.held_bytes

    def add(self, nbytes: int) -> None:
        """``nbytes`` were handed to storage, which still holds them."""
        self.share.hold(nbytes)

    def done(self, nbytes: int) -> None:
        """Storage stored (or dropped) ``nbytes`` it held: they left memory."""
        self.share.free(nbytes)

    def read_ended(self, *, drainable: bool) -> None:
        """One socket read was handled; ``drainable``: storage can empty itself unaided."""
        self.share.read_ended(drainable=drainable)

    def close(self) -> None:
        """The body ended (or the client left): no window is needed any more."""
        self.share.close()

    def part_started(self) -> None:
        """A complete part went on to validation and commit."""
        self.pending_parts += 1
        self._update()

    def part_finished(self) -> None:
        """A part has its outcome."""
        self.pending_parts -= 1
        self._update()

    def captures_behind_changed(self, behind: bool) -> None:
        """Header captures fell behind the bytes received (True) or caught up (False)."""
        self.captures_behind = behind
        self._update()

    @property
    def read_size_bytes(self) -> int:
        """How much one socket read may take now: more inside a window."""
        return WINDOW_READ_BYTES if self.share.leased else WAITING_READ_BYTES

    def watch_read_size(self, apply: Callable[[int], None]) -> None:
        """Call ``apply`` with the read size now and whenever it changes."""
        self._on_read_size = apply
        self._read_size = self.read_size_bytes
        apply(self._read_size)

    def _update(self) -> None:
        if self._on_read_size is not None and self.read_size_bytes != self._read_size:
            self._read_size = self.read_size_bytes
            self._on_read_size(self._read_size)
        if self.pending_parts > self._high_parts:
            self._parts_high = True
        elif self.pending_parts < self._low_parts:
            self._parts_high = False
        want = self.share.paused or self._parts_high or self.captures_behind
        if want and not self.paused:
            self.paused = True
            self.pause_count += 1
            STORAGE_PAUSES.inc()
            self._producer.pauseProducing()
        elif not want and self.paused:
            self.paused = False
            self._producer.resumeProducing()
