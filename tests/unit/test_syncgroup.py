"""Group commit of directory fsyncs (``storage.syncgroup``), with a controllable fsync."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

from twisted_stow.storage.syncgroup import SyncGroups

WAIT = 10.0
DIR = Path("/series")


class GatedFsync:
    """An fsync that records each call and blocks until the test releases it."""

    def __init__(self) -> None:
        self.calls: list[Path] = []
        self.entered = threading.Semaphore(0)
        self.gates: list[threading.Event] = []
        self.fail_call: int | None = None  # index of the call that raises EIO
        self._lock = threading.Lock()

    def __call__(self, directory: Path) -> None:
        with self._lock:
            index = len(self.calls)
            self.calls.append(directory)
            gate = threading.Event()
            self.gates.append(gate)
        self.entered.release()
        assert gate.wait(WAIT)
        if index == self.fail_call:
            raise OSError(errno.EIO, "injected", str(directory))

    def release(self, index: int) -> None:
        self.gates[index].set()


def start(groups: SyncGroups, directory: Path, results: list[object]) -> threading.Thread:
    def run() -> None:
        try:
            groups.sync(directory)
            results.append("ok")
        except OSError as e:
            results.append(e.errno)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_for_waiters(groups: SyncGroups, joined: int) -> None:
    """Until ``joined`` syncs have been asked for (the threads are inside sync)."""
    for _ in range(1000):
        if groups.joined >= joined:
            return
        threading.Event().wait(0.005)
    raise AssertionError(f"only {groups.joined} joined")


def test_members_joining_during_an_fsync_share_the_next_one() -> None:
    """One leader's fsync runs; three commits arriving meanwhile get one fsync together."""
    fsync = GatedFsync()
    groups = SyncGroups(fsync)
    first: list[object] = []
    later: list[object] = []
    leader = start(groups, DIR, first)
    assert fsync.entered.acquire(timeout=WAIT)
    followers = [start(groups, DIR, later) for _ in range(3)]
    wait_for_waiters(groups, 4)
    # The running fsync may have begun before their entries were made: it
    # must not answer them.
    fsync.release(0)
    leader.join(WAIT)
    assert first == ["ok"]
    assert fsync.entered.acquire(timeout=WAIT)  # the next generation started
    assert later == []
    fsync.release(1)
    for follower in followers:
        follower.join(WAIT)
    assert later == ["ok"] * 3
    assert fsync.calls == [DIR, DIR]
    assert (groups.joined, groups.fsyncs) == (4, 2)


def test_directories_are_grouped_separately() -> None:
    """An fsync of one directory never answers a commit waiting for another."""
    fsync = GatedFsync()
    groups = SyncGroups(fsync)
    results: list[object] = []
    a = start(groups, Path("/a"), results)
    assert fsync.entered.acquire(timeout=WAIT)
    b = start(groups, Path("/b"), results)
    assert fsync.entered.acquire(timeout=WAIT)  # /b does not wait for /a
    assert sorted(map(str, fsync.calls)) == ["/a", "/b"]
    fsync.release(0)
    fsync.release(1)
    a.join(WAIT)
    b.join(WAIT)
    assert results == ["ok", "ok"]


def test_a_failed_fsync_fails_each_of_its_members_and_only_them() -> None:
    """Every member of a failed generation gets the error; the next generation is fresh."""
    fsync = GatedFsync()
    fsync.fail_call = 1
    groups = SyncGroups(fsync)
    first: list[object] = []
    failed: list[object] = []
    leader = start(groups, DIR, first)
    assert fsync.entered.acquire(timeout=WAIT)
    members = [start(groups, DIR, failed) for _ in range(2)]
    wait_for_waiters(groups, 3)
    fsync.release(0)
    assert fsync.entered.acquire(timeout=WAIT)
    fsync.release(1)
    for thread in [leader, *members]:
        thread.join(WAIT)
    assert first == ["ok"]
    assert failed == [errno.EIO, errno.EIO]
    # Nothing of the failure stays behind: a later commit gets its own fsync.
    after: list[object] = []
    later = start(groups, DIR, after)
    assert fsync.entered.acquire(timeout=WAIT)
    fsync.release(2)
    later.join(WAIT)
    assert after == ["ok"]
    assert groups._groups == {}


def test_idle_directories_are_forgotten() -> None:
    """No state is kept per directory once nobody waits: memory stays flat."""
    groups = SyncGroups(lambda directory: None)
    for n in range(100):
        groups.sync(Path(f"/series/{n}"))
    assert groups._groups == {}
    assert (groups.joined, groups.fsyncs) == (100, 100)


def test_real_directory_fsync(tmp_path: Path) -> None:
    """The default fsync opens the real directory; a missing one raises."""
    groups = SyncGroups()
    groups.sync(tmp_path)
    with pytest.raises(FileNotFoundError):
        groups.sync(tmp_path / "missing")
