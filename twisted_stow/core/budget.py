"""One memory budget per process: the windows uploads buffer in, granted in turn.

Every byte an upload holds (received but not yet written to the disk,
waiting in an object store's part buffer, kept by a header capture) counts
against its ``Share`` of the process's ``MemoryBudget``.  To buffer, an
upload needs a *window*: a lease of ``window_bytes`` taken from the budget.
Windows are granted whole, first come first served, and only while the
leases granted fit in ``total_bytes``; the others wait with their sockets
paused.  So at most ``total_bytes // window_bytes`` uploads buffer at once,
whatever the number of connections.

Inside its window an upload pauses at ``window_bytes`` held and resumes
below half of it (the low-water mark).  A window is given back when the
upload holds nothing and another waits (the client is slower than storage,
or the upload just yielded), and an upload that has read a window's worth
since its grant while others wait *yields*: it stops reading at the end of a
socket read at which its storage can drain everything it holds without more
bytes, and once it holds nothing it gives its window back and queues again.

Why it never deadlocks (docs/DESIGN.md, "One memory budget"):

- a window is at most the whole budget (``window_bytes`` is clamped), so
  the oldest waiter is granted as soon as enough holders give theirs back;
- a holder never waits for the budget: everything it needs to progress fits
  in its own window (storage sizes its buffers from ``window_bytes``: an S3
  part is cut at half a window, below the low-water mark, so a paused upload
  always has a part to send), and storage drains what a holder holds in
  finite time (writes complete or fail);
- a holder that waiters wait for gives its window back in finite time: once
  it has read a window since its grant it yields at the next read that ends
  drainable (at the latest a window later, or at its part's end), and its
  held bytes drain to nothing;
- so every waiter reaches the head of the FIFO queue and is granted, and no
  upload is paused for good.  An upload without a window reads at most one
  socket read (which then asks for a window), so bytes held outside windows
  are bounded by one read per upload.

Pure: no clock, no I/O; the Twisted edge (``twisted_stow.flow``) turns a
share's ``paused`` into ``pauseProducing``/``resumeProducing``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

MiB = 1024 * 1024
# The process's budget unless --memory-budget says otherwise: a server rests
# at ~95 MiB RSS (pydicom, Twisted, the connections), so 32 MiB of buffers
# keeps a process under 150 MiB with 64 concurrent uploads (64 MiB peaked at
# 166 MiB into S3; benchmarks/budget_rss.py, docs/DESIGN.md).
DEFAULT_BUDGET_BYTES = 32 * MiB
# A budget below this could not hold one socket read per window.
MIN_BUDGET_BYTES = 1 * MiB
# An upload's window on the filesystem: the 8 MiB high-water mark measured
# before the budget existed (docs/STREAMING.md, "Backpressure": flat RSS at
# 20 MB/s with 125 pauses over 54 s); 4 uploads buffer at once by default.
FILESYSTEM_WINDOW_BYTES = 8 * MiB
# An upload's window into S3: one 8 MiB part sending while the next fills;
# 2 uploads buffer a part at once by default.
S3_WINDOW_BYTES = 16 * MiB
# The smallest S3 window: two parts of S3's 5 MiB minimum, so that half a
# window (the low-water mark) still holds a whole part to send.
MIN_S3_WINDOW_BYTES = 10 * MiB


def upload_window_bytes(total_bytes: int, *, s3: bool) -> int:
    """The window each upload gets of a budget of ``total_bytes`` (clamped to it)."""
    return min(S3_WINDOW_BYTES if s3 else FILESYSTEM_WINDOW_BYTES, total_bytes)


class MemoryBudget:
    """The process's buffer bytes, handed out as windows in FIFO order.

    ``window_bytes`` is clamped to ``total_bytes``: a request for more than
    the whole budget would wait forever, so it is granted the whole budget
    (storage sizes its buffers from the clamped window).
    """

    def __init__(self, total_bytes: int, window_bytes: int) -> None:
        if total_bytes < 1 or window_bytes < 1:
            raise ValueError("a memory budget and its window need at least one byte")
        self.total_bytes = total_bytes
        self.window_bytes = min(window_bytes, total_bytes)
        self.leased_bytes = 0
        """Bytes of the windows granted (never above ``total_bytes``)."""
        self.held_bytes = 0
        """Bytes every share holds (above ``leased_bytes`` by at most a read per upload)."""
        self.peak_held_bytes = 0
        self.grants = 0
        self._queue: deque[Share] = deque()

    @property
    def waiting(self) -> int:
        """Shares queued for a window."""
        return len(self._queue)

    def share(self, changed: Callable[[], None]) -> Share:
        """A new upload's share; ``changed`` is called whenever its ``paused`` may have changed."""
        return Share(self, changed)

    def _request(self, share: Share) -> None:
        share.queued = True
        self._queue.append(share)
        self._grant_waiting()

    def _leave(self, share: Share) -> None:
        if share.queued:
            share.queued = False
            self._queue.remove(share)

    def _give_back(self, share: Share) -> None:
        share.leased = False
        self.leased_bytes -= self.window_bytes
        self._grant_waiting()

    def _grant_waiting(self) -> None:
        # Strict FIFO: the head is never overtaken, so it cannot starve.
        while self._queue and self.leased_bytes + self.window_bytes <= self.total_bytes:
            share = self._queue.popleft()
            share.queued = False
            share.leased = True
            share.read_since_grant = 0
            self.leased_bytes += self.window_bytes
            self.grants += 1
            share.changed()


class Share:
    """One upload's bytes held and its window; see the module docstring.

    ``hold`` when bytes are taken into memory, ``free`` when they leave it,
    ``read_ended`` after each socket read, ``close`` when no more bytes will
    come.  ``paused`` says whether the upload may read.
    """

    def __init__(self, budget: MemoryBudget, changed: Callable[[], None]) -> None:
        self._budget = budget
        self.changed = changed
        self.held_bytes = 0
        self.leased = False
        self.queued = False
        self.yielding = False
        self.closed = False
        self.read_since_grant = 0
        self._above_high = False

    @property
    def high_water_bytes(self) -> int:
        return self._budget.window_bytes

    @property
    def low_water_bytes(self) -> int:
        return self._budget.window_bytes // 2

    @property
    def paused(self) -> bool:
        """Whether the upload must not read: no window yet, over its window, or yielding."""
        return self.queued or self.yielding or self._above_high

    def hold(self, nbytes: int) -> None:
        """``nbytes`` more are held (received, not yet stored)."""
        budget = self._budget
        self.held_bytes += nbytes
        budget.held_bytes += nbytes
        budget.peak_held_bytes = max(budget.peak_held_bytes, budget.held_bytes)
        if self.held_bytes >= self.high_water_bytes:
            self._above_high = True
        if self.yielding:
            # Bytes after the decision to yield (a socket read holds several
            # HTTP chunks, handled one by one): what is held may no longer
            # drain unaided, so the next read's end decides again.
            self.yielding = False
        if not self.leased and not self.queued and not self.closed:
            budget._request(self)
        # After the request: a grant restarts the count, and these bytes are its first.
        self.read_since_grant += nbytes
        self.changed()

    def free(self, nbytes: int) -> None:
        """``nbytes`` held before have left memory (stored or dropped)."""
        self.held_bytes -= nbytes
        self._budget.held_bytes -= nbytes
        if self._above_high and self.held_bytes < self.low_water_bytes:
            self._above_high = False
        if self.held_bytes == 0 and self.leased:
            if self.closed or self.yielding or self._budget.waiting:
                again = self.yielding and not self.closed
                self.yielding = False
                self._budget._give_back(self)
                if again:
                    # Interrupted mid-body: back in the queue, paused until its turn.
                    self._budget._request(self)
        self.changed()

    def read_ended(self, *, drainable: bool) -> None:
        """A socket read was handled; ``drainable``: storage can drain all held without more.

        Past a window read since its grant, with others waiting, the upload
        yields here (only when drainable: a paused upload must never hold a
        part its storage cannot send).
        """
        if (
            self.leased
            and not self.yielding
            and drainable
            and self._budget.waiting
            and self.read_since_grant >= self._budget.window_bytes
        ):
            self.yielding = True
            if self.held_bytes == 0:
                self.free(0)  # gives the window back, and tells the upload
            else:
                self.changed()

    def close(self) -> None:
        """No more bytes will come: leave the queue; the window goes once nothing is held."""
        if self.closed:
            return
        self.closed = True
        self.yielding = False
        self._budget._leave(self)
        if self.leased and self.held_bytes == 0:
            self._budget._give_back(self)
        self.changed()
