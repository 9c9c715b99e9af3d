"""Local-disk storage: stage each part, fsync it, then link it into place.

Layout: ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``,
staging files in ``<root>/.staging/`` (same filesystem, so moving a file into
place is atomic).

Every blocking call (open, writev, fsync, link, mkdir) runs in a worker
thread.  The reactor side gathers a part's chunks into batches of at least
``BATCH_BYTES`` and hands each batch over with one queue operation.  A part's
operations run strictly in order (one part is never written by two threads at
once), one pool job per operation: a part with more work queued goes to the
back of the pool's queue, so a few fast uploads cannot hold every thread
while the others wait.  Measurements (docs/STREAMING.md) found batches handed to
worker threads as the fastest shape that keeps all syscalls off the reactor
(a thread hop per 64 KiB chunk was 2-3x slower).

A commit is reported only once everything leading to the file is durable:
the staged file is fsynced before it is linked; the parent of a study or
series directory is fsynced the first time this process meets the directory,
whoever created it; then the index directory, then the series directory.
Directory fsyncs are shared (``syncgroup``): one fsync of a directory
answers every commit that linked into it before the fsync began, so
concurrent commits into one series, and every commit's index entry, cost
one fsync per group instead of one each (docs/STORAGE.md).

A small part (one batch) whose commit ingest decided as it ended costs one
pool job (``finish_then_commit``): written, hashed, synced, linked and its
directories synced, in that order, with one trip back to the reactor.  Any
other part costs ``finish``'s job (its last batch goes with the sync) and
``commit``'s.

Staging names are ``<pid>-<run token>-<random>.part``.  Start-up removes the
files of processes that are gone, and those with our pid but another run's
token: in a container the server is often pid 1 after every restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..core.outcomes import InstanceRef
from ..core.policy import CommitResult
from ..deferreds import detached
from ..durable import fsync_directory, pid_alive
from ..interfaces import IOneStepPartWriter, IStorage
from .serial import Completions, Jobs, SerialQueue
from .staging import StagingFile, translate_os_error
from .syncgroup import SyncGroups

log = Logger()

# One handover to the writer thread per MiB: below that the per-operation
# cost (queue, wake-up, GIL hand-off) dominates (docs/STREAMING.md).
BATCH_BYTES = 1024 * 1024
# Writes to the same file from different parts run in parallel on this many
# threads; fsync of one large part must not stall every other upload.
DEFAULT_WRITER_THREADS = 4
STAGING_DIR_NAME = ".staging"
INDEX_DIR_NAME = ".sop-index"
_COMPARE_BLOCK_BYTES = 1024 * 1024
# How many directories (study and series) are remembered as durable.  Past
# that the set is cleared: forgetting costs only a repeated fsync, and the
# set must not grow with every series a long-running server ever received.
_DURABLE_DIRS_MAX = 100_000


# os.getpid() is a syscall each time (glibc no longer caches it), and every
# part's staging name starts with it: kept here, renewed in a forked child.
_pid = os.getpid()


def _renew_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_renew_pid)


def _unlink_quietly(path: Path) -> None:
    """Remove ``path`` while undoing a failed step: a second error must not hide the first."""
    try:
        os.unlink(path)
    except OSError:
        log.warn("could not remove {path} while undoing a failed commit", path=path)


def _same_contents(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            block_a = fa.read(_COMPARE_BLOCK_BYTES)
            if block_a != fb.read(_COMPARE_BLOCK_BYTES):
                return False
            if not block_a:
                return True


def indexed_file(index: Path, entry: Path | str) -> Path | None:
    """The stored file the index entry ``entry`` (in directory ``index``) names,
    or None: no such entry, or it dangles.  The one reading of the index, for
    the backend and ``stow-verify`` alike.
    """
    try:
        # Lexical, not resolve(): the root itself may sit behind a symlink.
        target = Path(os.path.normpath(index / os.readlink(entry)))
    except FileNotFoundError:
        return None
    return target if target.is_file() else None


@implementer(IOneStepPartWriter)
class FilesystemPartWriter:
    """Stages one part on disk; see ``IPartWriter`` for the lifecycle.

    Each ``write`` joins the batch being gathered; the batch goes to the
    part's queue once it holds ``BATCH_BYTES`` (or at ``finish``), and the
    Deferreds of its writes fire together when the writer thread is done
    with it, written or not.  A failed write is kept and reported by
    ``finish`` and ``commit``.
    """

    def __init__(self, storage: FilesystemStorage, staged_path: Path) -> None:
        self._storage = storage
        self._queue = SerialQueue(storage.jobs, storage.completions)
        # The part's SHA-256 runs on a queue of its own once the part spans
        # batches, so hashing a batch and writing it go on in two threads at
        # once (hashlib and writev both release the GIL): a large upload's
        # one writer thread, hashing and writing in turn, was its limit.  A
        # part of one batch is hashed inline in finish's one job.
        self._hash_queue: SerialQueue | None = None
        self._file = StagingFile(staged_path)
        self.staged_path = staged_path
        """Where the part is staged (for the storage's own tests and sweeps)."""
        self._batch: list[bytes | memoryview] = []
        self._batch_written: list[Deferred[None]] = []
        self._batch_bytes = 0
        self._finishing = False
        self._done = False  # committed or aborted: nothing more to do
        self.sha256: bytes | None = None
        """The part's SHA-256, once ``finish`` has fired (computed in the writer thread)."""

    @property
    def drainable(self) -> bool:
        """Whether all it holds will be written without more bytes (``IPartWriter``):
        a batch being gathered waits for ``BATCH_BYTES`` or ``finish``."""
        return self._batch_bytes == 0 or self._finishing or self._done

    def write(self, data: bytes | memoryview) -> Deferred[None]:
        if self._finishing or self._done:
            raise RuntimeError("write after finish/abort")
        written: Deferred[None] = Deferred()
        self._batch.append(data)
        self._batch_written.append(written)
        self._batch_bytes += len(data)
        if self._batch_bytes >= BATCH_BYTES:
            self._flush()
        return written

    def _take_batch(self) -> tuple[list[bytes | memoryview], list[Deferred[None]]]:
        """The batch being gathered and its writes' Deferreds; the next starts empty."""
        taken = self._batch, self._batch_written
        self._batch, self._batch_written, self._batch_bytes = [], [], 0
        return taken

    def _flush(self) -> None:
        batch, written = self._take_batch()
        if not batch:
            return
        if self._hash_queue is None:
            self._hash_queue = SerialQueue(self._storage.jobs, self._storage.completions)
        # Released once both threads are done with the batch, whether the
        # write worked or not: failures surface in finish(); the upload's
        # flow must never stay paused on them.  The thread that finishes
        # second reports, so a batch still costs one completion.
        done = _BatchUsers(self._storage.completions, self._release, written)

        def write() -> None:
            try:
                self._file.write(batch, hash=False)
            except Exception:
                done.finished(Failure())
            else:
                done.finished(None)

        def hash_batch() -> None:
            self._file.hash(batch)
            done.finished(None)

        self._queue.submit_reporting(write)
        self._hash_queue.submit_reporting(hash_batch)

    def _release(self, failure: Failure | None, written: list[Deferred[None]]) -> None:
        if failure is not None:
            self._failure = failure
        _fire_all(written)

    _failure: Failure | None = None

    def finish(self) -> Deferred[int]:
        self._finishing = True
        # The last batch goes with the sync, in one job: a part of one batch
        # (most instances) costs one thread hop here, not two.  It runs
        # after every queued write, in order; a failed write left its
        # Failure on the reactor side, but this thread sees the same file
        # state (StagingFile.error re-raised).
        if self._hash_queue is None:
            batch, written = self._take_batch()
            d = self._queue.submit(lambda: self._file.sync_and_close(batch))
            return d.addBoth(self._finished, written)
        # Several batches: the sync (which stores the digest) waits for the
        # hash queue's last batch; the write queue keeps its order by itself.
        self._flush()
        sync = self._queue.submit
        hashed = self._hash_queue.submit(lambda: None)
        d = hashed.addCallback(lambda _: sync(self._file.sync_and_close))
        return d.addBoth(self._finished, [])

    def finish_then_commit(
        self, instance: InstanceRef, *, overwrite: bool
    ) -> tuple[Deferred[int], Deferred[CommitResult]] | None:
        """``finish`` and then ``commit``, in one writer-thread job; None when the
        part spans batches (then ``finish`` and ``commit`` as usual).

        For a part whose commit was decided before it ended (ingest: header
        valid, no digest claim to check): the link follows the fsync in the
        same job, so a small instance costs one job and one trip back to the
        reactor instead of two.  The order on disk is ``finish``'s then
        ``commit``'s: written, digest set, fsynced and closed under the
        staging name, then linked and its directories synced.  Should
        staging fail, the staged file is removed in the same job, nothing is
        linked, and both Deferreds fail with the staging error.
        """
        if self._hash_queue is not None or self._finishing or self._done:
            return None
        self._finishing = True
        self._done = True
        batch, written = self._take_batch()
        staged: Deferred[int] = Deferred()
        answer: Deferred[CommitResult] = Deferred()
        completions = self._storage.completions
        settle = self._settler(answer)

        def job() -> None:
            try:
                size = self._file.sync_and_close(batch)
            except BaseException:
                failure = Failure()
                try:
                    self._file.discard()
                except OSError:
                    log.failure("could not remove staging file")
                completions.send(staged.errback, failure)
                completions.send(answer.errback, failure)
                return
            completions.send(staged.callback, size)
            self._link(instance, overwrite, settle)

        self._queue.submit_reporting(job)
        return staged.addBoth(self._finished, written), answer

    def _settler(
        self, answer: Deferred[CommitResult]
    ) -> Callable[[CommitResult | Exception], None]:
        """Called in a writer thread with the commit's result: fires ``answer`` on the reactor."""
        completions = self._storage.completions

        def settle(result: CommitResult | Exception) -> None:
            if isinstance(result, Exception):
                completions.send(answer.errback, Failure(result))
            else:
                completions.send(answer.callback, result)

        return settle

    def _link(
        self,
        instance: InstanceRef,
        overwrite: bool,
        settle: Callable[[CommitResult | Exception], None],
    ) -> None:
        """Blocking: link the synced file into place; ``settle`` gets the result
        once its directories are synced, maybe in another thread's group fsync."""
        try:
            self._storage.place(self._file.path, instance, overwrite=overwrite, then=settle)
        except Exception as e:  # the link failed: ``then`` is never called
            settle(e)

    def _finished(self, result: int | Failure, written: list[Deferred[None]]) -> int | Failure:
        _fire_all(written)
        if not isinstance(result, Failure):
            self.sha256 = self._file.sha256
        return result

    def commit(self, instance: InstanceRef, *, overwrite: bool) -> Deferred[CommitResult]:
        if self._failure is not None:
            return fail(self._failure)
        self._done = True
        # The link runs as the part's last queued job; the answer comes once
        # the directories are synced, maybe in another thread's group fsync
        # (one completion either way).
        answer: Deferred[CommitResult] = Deferred()
        settle = self._settler(answer)
        self._queue.submit_reporting(lambda: self._link(instance, overwrite, settle))
        return answer

    def abort(self) -> Deferred[None]:
        if self._discarded is not None:
            return detached(self._discarded)
        if self._done:  # committed: the staged name is gone already
            return succeed(None)
        self._done = True
        # Bytes never handed to the writer thread are dropped here and now.
        _fire_all(self._take_batch()[1])
        discarded = self._queue.submit(self._file.discard)
        discarded.addErrback(lambda f: log.failure("could not remove staging file", f))
        if self._hash_queue is not None:
            # Batches still being hashed are released (their writes' Deferreds
            # fired) only when the hash thread is done with them.
            hashed = self._hash_queue.submit(lambda: None)
            discarded.addCallback(lambda _: hashed)
        self._discarded = discarded
        return detached(self._discarded)

    _discarded: Deferred[None] | None = None


def sweep_run_staging(root: Path, run_token: str) -> int:
    """Blocking: remove the staging files of the run ``run_token``; how many.

    A worker's main process calls it once the worker has exited, so its
    half-received parts go at once and by name (a pid may be reused, and a
    zombie looks alive), not at the next start-up's sweep.
    """
    removed = 0
    staging = Path(root).absolute() / STAGING_DIR_NAME
    try:
        entries = list(staging.iterdir())
    except FileNotFoundError:
        return 0
    for entry in entries:
        fields = entry.name.split("-")
        if len(fields) == 3 and fields[1] == run_token:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed += 1
    return removed


class _BatchUsers:
    """The two threads using one batch (write and hash); the second to finish reports."""

    __slots__ = ("_completions", "_failure", "_left", "_lock", "_release", "_written")

    def __init__(
        self,
        completions: Completions,
        release: Callable[[Failure | None, list[Deferred[None]]], None],
        written: list[Deferred[None]],
    ) -> None:
        self._completions = completions
        self._release = release
        self._written = written
        self._lock = threading.Lock()
        self._left = 2
        self._failure: Failure | None = None

    def finished(self, failure: Failure | None) -> None:
        """Called in a writer thread once this user is done with the batch."""
        with self._lock:
            self._left -= 1
            if failure is not None:
                self._failure = failure
            last = not self._left
        if last:
            self._completions.send(self._release, self._failure, self._written)


def _fire_all(written: list[Deferred[None]]) -> None:
    """Tell each write's caller that storage no longer holds its bytes."""
    for d in written:
        d.callback(None)


@implementer(IStorage)
class FilesystemStorage:
    """Instances as files under ``root``; see the module docstring."""

    def __init__(
        self,
        root: Path | str,
        reactor: IReactorFromThreads,
        *,
        writer_threads: int = DEFAULT_WRITER_THREADS,
        run_token: str | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.staging = self.root / STAGING_DIR_NAME
        self.index = self.root / INDEX_DIR_NAME
        self._root_prefix = str(self.root) + os.sep
        # Check-and-link of one SOP Instance UID must not interleave with
        # another commit of the same UID (two uploads to two studies).
        self._index_lock = threading.Lock()
        # The same across processes (worker processes share the storage): an
        # flock on the root directory, taken inside the thread lock (flock
        # belongs to the open file, which this process's threads share).
        self._root_fd: int | None = None
        # Study and series directories whose entry in their parent this
        # process has fsynced.  Added to only after the fsync, so a thread
        # that finds a directory here may rely on it; two threads that both
        # miss it both fsync, which is harmless.  (Single set operations are
        # atomic, no lock needed.)
        self._durable_dirs: set[Path] = set()
        # Directory fsyncs shared between concurrent commits.
        self.syncs = SyncGroups()
        # Tells this run's staging files from an earlier run's with the same
        # pid (a restarted container); see _staging_is_stale.  A worker's
        # main process chooses it, to sweep the files of a worker that died.
        self._run_token = run_token or secrets.token_hex(8)
        self._staging_names = itertools.count()
        self.reactor = reactor
        self.jobs = Jobs(writer_threads)
        self.completions = Completions(reactor)

    def start(self) -> None:
        """Create the directories, sweep stale staging files, start threads."""
        self.staging.mkdir(parents=True, exist_ok=True)
        self.index.mkdir(exist_ok=True)
        fsync_directory(self.root)
        self._sweep_stale_staging()
        self._open_root()
        self.jobs.start()

    def _open_root(self) -> int:
        """The root directory's descriptor, which the commit lock flocks (opened once)."""
        if self._root_fd is None:
            self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._root_fd

    def stop(self) -> None:
        """Wait for queued operations and stop the threads."""
        self.jobs.stop()
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None

    @contextlib.contextmanager
    def _commit_lock(self) -> Iterator[None]:
        """Blocking: no other commit, in this process or another, checks the index meanwhile.

        Without the flock, two worker processes storing one SOP Instance UID
        under two studies could both find the index empty and both store it.
        """
        with self._index_lock:
            root = self._open_root()
            fcntl.flock(root, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(root, fcntl.LOCK_UN)

    def _sweep_stale_staging(self) -> None:
        # Files of a run that no longer exists are leftovers of a crash (their
        # removal is never fsynced, so a crash can resurrect a few of them).
        for entry in self.staging.iterdir():
            if not self._staging_is_stale(entry.name):
                continue
            try:
                entry.unlink()
            except OSError:
                log.warn("could not remove stale staging file {path}", path=entry)

    def _staging_is_stale(self, name: str) -> bool:
        """Whether a staging file's run is gone: ``<pid>-<run token>-<random>.part``."""
        fields = name.split("-")
        if not fields[0].isdigit():
            return True
        pid = int(fields[0])
        if pid == os.getpid():
            # Our pid, but maybe not our run: a container restarts its server
            # with the same pid (often 1), so the pid alone would keep a
            # crashed run's files forever.  Names without a token (older
            # versions) cannot be ours either.
            return len(fields) != 3 or fields[1] != self._run_token
        return not pid_alive(pid)

    def unavailable(self) -> None:
        """A local directory is never "down": its faults surface per write."""
        return None

    def open_writer(self) -> FilesystemPartWriter:
        # A counter, not a random name: the run token already tells runs
        # apart, and O_EXCL refuses a collision anyway (uuid4 cost a
        # getrandom syscall on the reactor per part).
        name = f"{_pid}-{self._run_token}-{next(self._staging_names)}.part"
        return FilesystemPartWriter(self, self.staging / name)

    def instance_path(self, instance: InstanceRef) -> Path:
        """Where ``instance`` is (or would be) stored."""
        return (
            self.root
            / instance.study_instance_uid
            / instance.series_instance_uid
            / f"{instance.sop_instance_uid}.dcm"
        )

    def link_into_place(
        self, staged: Path, instance: InstanceRef, *, overwrite: bool
    ) -> CommitResult:
        """Blocking: ``place``, then wait for its directory fsyncs."""
        finished = threading.Event()
        results: list[CommitResult | Exception] = []

        def then(result: CommitResult | Exception) -> None:
            results.append(result)
            finished.set()

        self.place(staged, instance, overwrite=overwrite, then=then)
        finished.wait()
        if isinstance(results[0], Exception):
            raise results[0]
        return results[0]

    def place(
        self,
        staged: Path,
        instance: InstanceRef,
        *,
        overwrite: bool,
        then: Callable[[CommitResult | Exception], None],
    ) -> None:
        """Blocking: move ``staged`` to its final name; ``then`` gets the result
        once every directory it created or changed is synced (or the error).

        Raises, without calling ``then``, when the link itself fails.  A SOP
        Instance UID is unique across studies, so the duplicate check goes
        through the index (``.sop-index/<SOPInstanceUID>``, a symlink to the
        stored file), not only through the instance's own path.
        """
        final = self.instance_path(instance)
        try:
            new_dirs = self._make_dirs(final.parent)
            result, elsewhere = self._place(staged, final, instance, overwrite=overwrite)
        except OSError as e:
            raise translate_os_error(e) from e
        finally:
            # The staging name is only a temporary alias: the final name (or
            # the older copy) holds the bytes now, or nothing should.
            try:
                os.unlink(staged)
            except FileNotFoundError:
                pass
        if result is CommitResult.CONFLICTING_DUPLICATE:
            then(result)
            return
        # Also for an identical duplicate: a retry racing the original
        # commit (between its link and its fsyncs) must not be told "stored"
        # before the entries are durable.  New directories' parents first
        # (root before study), then the index, then the series: a crash
        # between the index and the series fsyncs leaves at worst a dangling
        # entry (reads as absent), not a stored file that escapes the index.
        # (The kernel may still write the link earlier on its own; excluding
        # that would need an fsync between index and link, under the lock.)
        changed_dirs = [directory.parent for directory in new_dirs]
        changed_dirs += [self.index, final.parent]
        if elsewhere is not None:
            changed_dirs.append(elsewhere.parent)

        def synced(error: OSError | None) -> None:
            if error is not None:
                then(translate_os_error(error))
                return
            # Known durable only now, so a commit that finds one in the set
            # may rely on it.
            if len(self._durable_dirs) + len(new_dirs) > _DURABLE_DIRS_MAX:
                self._durable_dirs.clear()
            self._durable_dirs.update(new_dirs)
            then(result)

        self.syncs.submit(changed_dirs, synced)

    def _place(
        self, staged: Path, final: Path, instance: InstanceRef, *, overwrite: bool
    ) -> tuple[CommitResult, Path | None]:
        """Link the file and its index entry; returns what happened and the
        older copy's path when it lived elsewhere.

        The index lock covers only what must not interleave with another
        commit of the same UID: the index check, the index entry and the
        link or replace, a few metadata syscalls.  Comparing two whole files
        (hundreds of MiB for a large instance) runs outside it.
        """
        entry = self.index / instance.sop_instance_uid
        while True:
            with self._commit_lock():
                previous = self._indexed(entry)
                if previous is not None and previous != final:
                    # The same SOP Instance UID stored under another
                    # study/series: other bytes, since the UIDs are in the data
                    # set, so no comparison is needed.
                    if not overwrite:
                        return CommitResult.CONFLICTING_DUPLICATE, None
                    self._move(staged, final, entry, previous)
                    return CommitResult.OVERWRITTEN, previous
                # Index first: a crash between the two steps leaves a dangling
                # entry, which reads as absent, never an instance that escapes
                # the index.
                if previous is None:
                    self._point(entry, final)
                # else the entry names ``final`` already (an identical
                # retry, or a stray file at ``final``): nothing to change.
                try:
                    # link() is a rename that refuses to replace: atomic like
                    # rename(), but an instance already stored is never
                    # silently lost.
                    os.link(staged, final)
                    return CommitResult.STORED, None
                except FileExistsError:
                    pass
            try:
                same = _same_contents(staged, final)
            except FileNotFoundError:
                continue  # moved to another study meanwhile: decide again
            if same:
                return CommitResult.IDENTICAL_DUPLICATE, None
            if not overwrite:
                return CommitResult.CONFLICTING_DUPLICATE, None
            with self._commit_lock():
                # Replacing the same path is atomic by itself, but a
                # concurrent overwrite may have moved the instance to another
                # study while we compared: replacing then would leave a second
                # copy outside the index.
                if self._indexed(entry) == final:
                    os.replace(staged, final)
                    return CommitResult.OVERWRITTEN, None

    def _move(self, staged: Path, final: Path, entry: Path, previous: Path) -> None:
        """Overwrite ``previous`` (another study or series) with ``staged`` at ``final``.

        All or nothing (issue 17 point 7): every step that can fail for lack
        of space comes before the one step that switches instances, the
        atomic rename of the index entry, and each failure undoes what came
        before it.  So a failure leaves exactly the old instance, indexed,
        or (past the switch) exactly the new one.  In order:

        1. the new index entry, and the old one to restore, as temporary
           symlinks (ENOSPC: nothing changed; undoing then needs no space);
        2. the staged file moved to ``final`` (a stray file there, outside
           the index, is replaced; failure: the temporaries are removed);
        3. the switch: the new entry renamed over the old (failure: the new
           file is removed, the old instance stays indexed);
        4. the old file unlinked (failure: the old entry is renamed back and
           the new file removed, so the old one stays the only one).

        The caller then fsyncs the index, the new and the old directory.
        """
        switch = self._new_entry(entry, final)
        try:
            restore = self._new_entry(entry, previous)
        except BaseException:
            _unlink_quietly(switch)
            raise
        try:
            os.replace(staged, final)
        except BaseException:
            _unlink_quietly(switch)
            _unlink_quietly(restore)
            raise
        try:
            os.replace(switch, entry)
        except BaseException:
            _unlink_quietly(switch)
            _unlink_quietly(restore)
            _unlink_quietly(final)
            raise
        try:
            os.unlink(previous)
        except BaseException:
            try:
                os.replace(restore, entry)
                os.unlink(final)
            except OSError as undo:
                log.error(
                    "overwrite of {previous} by {final} failed and could not be undone: {error}",
                    previous=previous,
                    final=final,
                    error=undo,
                )
            raise
        _unlink_quietly(restore)

    def _indexed(self, entry: Path) -> Path | None:
        """The stored file an index entry names, or None (no entry, dangling)."""
        return indexed_file(self.index, entry)

    def _point(self, entry: Path, final: Path) -> None:
        """Make the index entry name ``final``, where ``_indexed`` found none.

        Usually there is no entry at all, and the symlink is made under its
        own name, atomically, in one syscall.  A dangling one (its file gone)
        is replaced atomically through a temporary name.
        """
        try:
            os.symlink(self._index_target(final), entry)
            return
        except (FileExistsError, FileNotFoundError):
            pass  # dangling entry, or the index directory is gone: the slow way
        temporary = self._new_entry(entry, final)
        try:
            os.replace(temporary, entry)
        except BaseException:
            _unlink_quietly(temporary)
            raise

    def _index_target(self, final: Path) -> str:
        """What an index entry's symlink holds for ``final``: its path from the index.

        The index sits in the root, so a file under the root is ``../`` and
        its path below the root; ``os.path.relpath`` gives the same text at
        ~14 us a commit (it normalises both paths), kept for any other path.
        """
        text = str(final)
        if text.startswith(self._root_prefix):
            below = text[len(self._root_prefix) :]
            if not below.startswith(".") and "/." not in below:
                return "../" + below
        return os.path.relpath(final, self.index)

    def _new_entry(self, entry: Path, final: Path) -> Path:
        """A temporary symlink beside ``entry`` naming ``final``, to rename over it."""
        target = self._index_target(final)
        temporary = entry.with_name(f"{entry.name}.{uuid.uuid4().hex}.tmp")
        try:
            os.symlink(target, temporary)
        except FileNotFoundError:
            # The index directory was removed under a running server (an
            # operator's clean-up): recreate it rather than fail every store,
            # and make its entry in the root durable before any entry in it.
            self.index.mkdir(exist_ok=True)
            self.syncs.sync(self.root)
            os.symlink(target, temporary)
        return temporary

    def _make_dirs(self, series_dir: Path) -> list[Path]:
        """Create the study and series directories; return those whose entry
        in their parent the commit must sync.

        Not only when this commit created them: a commit that created them
        and then failed, or a concurrent commit that has created them but
        not synced their parents yet, would otherwise leave a later instance
        reported stored under a directory whose entry a crash can lose.  So
        each directory not yet known durable in this process gets its parent
        fsynced, whoever made it (with the commit's other directories, after
        the link and before the answer).  The directory itself is synced
        with the file it receives.
        """
        not_durable: list[Path] = []
        for directory in (series_dir.parent, series_dir):
            if directory in self._durable_dirs:
                continue
            directory.mkdir(exist_ok=True)
            not_durable.append(directory)
        return not_durable
