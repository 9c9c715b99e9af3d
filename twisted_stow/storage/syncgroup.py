"""Group commit of directory fsyncs: one fsync of a directory answers every
commit that linked into it before that fsync started.

A commit needs its directory entries durable before its answer is sent, not
an fsync of its own: an fsync of a directory makes every entry made in it
before the fsync began durable, whoever made it.  So a commit that needs
directory D synced joins D's next *generation*; if no fsync of D is running,
the joining thread runs one at once (it leads that generation), else it
waits, and when the running fsync ends one of the waiters leads the next
generation, for everyone who joined meanwhile.  This is the group commit of
databases: under concurrent commits (the parts of one request are committed
in parallel, several requests store into one series, every commit touches
the index) one fsync answers many.

Blocking, for the storage's writer threads: a commit is one pool job, so
grouping costs no thread hop or Deferred; a waiting thread is a thread that
would otherwise be in its own fsync.  The fsync always runs in a thread that
is itself waiting for it, so no generation depends on a free pool thread.
Pure threading and ``os``, no Twisted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from ..durable import fsync_directory


class _Group:
    """One directory's generations: started, finished, and who still waits."""

    __slots__ = ("done", "errors", "members", "running", "started")

    def __init__(self) -> None:
        self.started = 0  # generations started so far (the last one's number)
        self.done = 0  # the last generation that finished
        self.running = False
        # generation → how many commits wait for it (joined, not yet returned)
        self.members: dict[int, int] = {}
        # generation → the error its fsync raised (only failed ones)
        self.errors: dict[int, OSError] = {}


class SyncGroups:
    """Per-directory group fsync; ``sync`` is called from writer threads."""

    def __init__(self, fsync: Callable[[Path], None] = fsync_directory) -> None:
        self._fsync = fsync
        # One lock for every directory: the critical sections are a few
        # dict operations, and a handful of writer threads contend for it.
        self._changed = threading.Condition()
        # Only directories with a commit waiting or an fsync running: a
        # long-running server meets a new series for every study.
        self._groups: dict[Path, _Group] = {}
        self.fsyncs = 0
        """Directory fsyncs run so far (read by tests and benchmarks)."""
        self.joined = 0
        """Syncs asked for so far: ``joined - fsyncs`` is what grouping saved."""

    def sync(self, directory: Path) -> None:
        """Blocking: return once an fsync of ``directory`` that began after this
        call has succeeded (raise its ``OSError`` if it failed).

        Every entry the caller made in ``directory`` before calling is then
        durable.  A failed fsync is never retried for its members: after an
        fsync error Linux may report the next fsync clean although the
        entries were not written, so each member of that generation fails.
        """
        with self._changed:
            self.joined += 1
            group = self._groups.get(directory)
            if group is None:
                group = self._groups[directory] = _Group()
            # The next generation to start has this number; it starts after
            # this call (under the same lock), so it covers the caller's entries.
            ticket = group.started + 1
            group.members[ticket] = group.members.get(ticket, 0) + 1
            while group.done < ticket:
                if group.running:
                    self._changed.wait()
                    continue
                # Nobody runs an fsync of this directory: lead the next
                # generation (it is ours: started == done == ticket - 1).
                group.running = True
                group.started += 1
                generation = group.started
                self.fsyncs += 1
                error: OSError | None = None
                self._changed.release()
                try:
                    self._fsync(directory)
                except OSError as e:
                    error = e
                finally:
                    self._changed.acquire()
                group.running = False
                group.done = generation
                if error is not None:
                    group.errors[generation] = error
                self._changed.notify_all()
            failure = group.errors.get(ticket)
            waiting = group.members[ticket] - 1
            if waiting:
                group.members[ticket] = waiting
            else:
                del group.members[ticket]
                group.errors.pop(ticket, None)
                if not group.members and not group.running:
                    del self._groups[directory]
        if failure is not None:
            # A fresh exception per member: they are raised in several threads.
            raise OSError(failure.errno, failure.strerror, failure.filename)
