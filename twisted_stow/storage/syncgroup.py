"""Group commit of directory fsyncs: one fsync of a directory answers every
commit that changed it before that fsync began.

A commit needs its directory entries durable before its answer is sent, not
an fsync of its own: an fsync of a directory makes every entry made in it
before the fsync began durable, whoever made it.  So a commit, once linked,
*joins* the group of the first directory it needs synced.  If no thread owns
that directory, the joining thread takes it and runs the fsync at once; if
one does, the commit only waits in the group, and the joining thread goes
back to the pool.  Each fsync takes the group's members *as it starts* (all
of them joined before it began, so it covers their entries); those joining
while it runs wait for the next one, which the owner runs next.  This is
the group commit of databases: under concurrent commits (a request's parts
are committed in parallel, several requests store into one series, every
commit changes the index) one fsync answers many.

A commit needing several directories (the parents of new directories, the
index, then the series) moves to the next one only once the previous fsync
succeeded, so their order holds.  The owner of a directory owns it until a
generation finds nobody waiting; one thread may own several and runs their
fsyncs in turn.  No thread ever blocks waiting for another's fsync (the
storage has few threads, and a waiting one could not link or write), so
grouping costs no thread hop or Deferred: ``done`` is called in the thread
that ran the last fsync.  Pure threading and ``os``, no Twisted.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from ..durable import fsync_directory

# Called once per submitted commit: None when every directory is synced,
# else the error of the fsync that failed.
Done = Callable[[OSError | None], None]


class _Member:
    """One commit's directories still to sync, in order."""

    __slots__ = ("directories", "done", "next")

    def __init__(self, directories: Sequence[Path], done: Done) -> None:
        self.directories = directories
        self.done = done
        self.next = 0


class _Group:
    """A directory's commits waiting for its next fsync, and whether a thread owns it."""

    __slots__ = ("owned", "waiting")

    def __init__(self) -> None:
        self.waiting: list[_Member] = []
        self.owned = False


class SyncGroups:
    """Per-directory group fsync, used from the storage's writer threads."""

    def __init__(self, fsync: Callable[[Path], None] = fsync_directory) -> None:
        self._fsync = fsync
        # One lock for every directory: each critical section is a few list
        # and dict operations.
        self._lock = threading.Lock()
        # Only directories with a commit waiting or an owner: a long-running
        # server meets a new series for every study.
        self._groups: dict[Path, _Group] = {}
        self.fsyncs = 0
        """Directory fsyncs run so far (read by tests and benchmarks)."""
        self.joined = 0
        """Directory syncs asked for so far: ``joined - fsyncs`` is what grouping saved."""

    def submit(self, directories: Sequence[Path], done: Done) -> None:
        """Sync ``directories`` in order, each by an fsync begun after the
        previous one succeeded (the first: after this call), then ``done(None)``;
        or ``done(error)`` at the first fsync that failed.

        Returns at once when other threads own the directories; else this
        thread runs fsyncs (for other commits too) until nobody waits.
        ``done`` runs in whichever thread ran the last fsync, and must not
        raise.  A failed fsync is never retried for its members: after an
        fsync error Linux may report the next fsync clean although the
        entries were not written, so each member of that generation fails.
        """
        owned: deque[Path] = deque()
        self._join(_Member(directories, done), owned)
        if owned:
            self._run(owned)

    def sync(self, directory: Path) -> None:
        """Blocking: ``submit`` of one directory, raising its error (rare paths)."""
        finished = threading.Event()
        errors: list[OSError | None] = []

        def done(error: OSError | None) -> None:
            errors.append(error)
            finished.set()

        self.submit([directory], done)
        finished.wait()
        if errors[0] is not None:
            raise errors[0]

    def _join(self, member: _Member, owned: deque[Path]) -> None:
        """Queue ``member`` for its next directory; take the directory if nobody owns it."""
        if member.next == len(member.directories):
            member.done(None)
            return
        directory = member.directories[member.next]
        with self._lock:
            self.joined += 1
            group = self._groups.get(directory)
            if group is None:
                group = self._groups[directory] = _Group()
            group.waiting.append(member)
            if group.owned:
                return
            group.owned = True
        owned.append(directory)

    def _run(self, owned: deque[Path]) -> None:
        """Run the owned directories' fsyncs in turn until none has anyone waiting."""
        while owned:
            directory = owned.popleft()
            with self._lock:
                group = self._groups[directory]
                # Taken as the fsync starts: everyone here joined before it.
                batch, group.waiting = group.waiting, []
                if not batch:
                    group.owned = False
                    del self._groups[directory]
                    continue
                self.fsyncs += 1
            error: OSError | None = None
            try:
                self._fsync(directory)
            except OSError as e:
                error = e
            for member in batch:
                if error is not None:
                    # A fresh exception each: members may raise it in other threads.
                    member.done(OSError(error.errno, error.strerror, error.filename))
                else:
                    member.next += 1
                    self._join(member, owned)
            # Whoever joined during this fsync waits for the next one.
            owned.append(directory)
