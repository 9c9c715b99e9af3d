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


class Recorder:
    """A ``done`` callback: each member's result, in the order they finished."""

    def __init__(self) -> None:
        self.results: list[object] = []
        self.finished = threading.Semaphore(0)

    def __call__(self, error: OSError | None) -> None:
        self.results.append("ok" if error is None else error.errno)
        self.finished.release()

    def wait(self, count: int) -> None:
        for _ in range(count):
            assert self.finished.acquire(timeout=WAIT)


def lead(groups: SyncGroups, directories: list[Path], done: Recorder) -> threading.Thread:
    """``submit`` from a thread of its own (it may become the directory's owner)."""
    thread = threading.Thread(target=groups.submit, args=(directories, done), daemon=True)
    thread.start()
    return thread


def test_members_joining_during_an_fsync_share_the_next_one() -> None:
    """One fsync runs; three commits arriving meanwhile return at once and share the next."""
    fsync = GatedFsync()
    groups = SyncGroups(fsync)
    first, later = Recorder(), Recorder()
    owner = lead(groups, [DIR], first)
    assert fsync.entered.acquire(timeout=WAIT)
    for _ in range(3):
        groups.submit([DIR], later)  # returns at once: the directory has an owner
    # The running fsync may have begun before their entries were made: it
    # must not answer them.
    fsync.release(0)
    first.wait(1)
    assert first.results == ["ok"]
    assert fsync.entered.acquire(timeout=WAIT)  # the owner runs the next generation
    assert later.results == []
    fsync.release(1)
    later.wait(3)
    owner.join(WAIT)
    assert later.results == ["ok"] * 3
    assert fsync.calls == [DIR, DIR]
    assert (groups.joined, groups.fsyncs) == (4, 2)
    assert groups._groups == {}


def test_a_commits_directories_are_synced_in_order() -> None:
    """The next directory's fsync begins only after the previous one succeeded."""
    fsync = GatedFsync()
    groups = SyncGroups(fsync)
    done = Recorder()
    owner = lead(groups, [Path("/index"), DIR], done)
    assert fsync.entered.acquire(timeout=WAIT)
    assert fsync.calls == [Path("/index")]
    assert not fsync.entered.acquire(timeout=0.05)  # the series waits for the index
    fsync.release(0)
    assert fsync.entered.acquire(timeout=WAIT)
    assert fsync.calls == [Path("/index"), DIR]
    assert done.results == []
    fsync.release(1)
    done.wait(1)
    owner.join(WAIT)
    assert done.results == ["ok"]


def test_directories_are_grouped_separately() -> None:
    """An fsync of one directory never answers a commit waiting for another."""
    fsync = GatedFsync()
    groups = SyncGroups(fsync)
    done = Recorder()
    a = lead(groups, [Path("/a")], done)
    assert fsync.entered.acquire(timeout=WAIT)
    b = lead(groups, [Path("/b")], done)
    assert fsync.entered.acquire(timeout=WAIT)  # /b does not wait for /a
    assert sorted(map(str, fsync.calls)) == ["/a", "/b"]
    fsync.release(0)
    fsync.release(1)
    done.wait(2)
    a.join(WAIT)
    b.join(WAIT)
    assert done.results == ["ok", "ok"]


def test_a_failed_fsync_fails_each_of_its_members_and_only_them() -> None:
    """Every member of a failed generation gets the error; the next generation is fresh."""
    fsync = GatedFsync()
    fsync.fail_call = 1
    groups = SyncGroups(fsync)
    first, failed = Recorder(), Recorder()
    owner = lead(groups, [DIR], first)
    assert fsync.entered.acquire(timeout=WAIT)
    groups.submit([DIR, Path("/never")], failed)
    groups.submit([DIR], failed)
    fsync.release(0)
    assert fsync.entered.acquire(timeout=WAIT)
    fsync.release(1)
    failed.wait(2)
    owner.join(WAIT)
    assert first.results == ["ok"]
    assert failed.results == [errno.EIO, errno.EIO]
    assert Path("/never") not in fsync.calls  # a failed step ends the commit
    # Nothing of the failure stays behind: a later commit gets its own fsync.
    after = Recorder()
    later = lead(groups, [DIR], after)
    assert fsync.entered.acquire(timeout=WAIT)
    fsync.release(2)
    after.wait(1)
    later.join(WAIT)
    assert after.results == ["ok"]
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
