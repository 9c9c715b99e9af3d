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
while the others wait.  ../shared/TWISTED.md Q4 measured batches handed to
worker threads as the fastest shape that keeps all syscalls off the reactor
(a thread hop per 64 KiB chunk was 2-3x slower).

A commit is reported only once everything leading to the file is durable:
the staged file is fsynced before it is linked; the parent of a study or
series directory is fsynced the first time this process meets the directory,
whoever created it; then the index directory, then the series directory.

Staging names are ``<pid>-<run token>-<random>.part``.  Start-up removes the
files of processes that are gone, and those with our pid but another run's
token: in a container the server is often pid 1 after every restart.
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ..flow import BytesInFlight
from ..interfaces import IPartWriter, IStorage
from ..outcomes import InstanceRef
from . import CommitResult, StorageFull

T = TypeVar("T")

# One handover to the writer thread per MiB: below that the per-operation
# cost (queue, wake-up, GIL hand-off) dominates; TWISTED.md Q4/Q6.
BATCH_BYTES = 1024 * 1024
# Writes to the same file from different parts run in parallel on this many
# threads; fsync of one large part must not stall every other upload.
DEFAULT_WRITER_THREADS = 4
STAGING_DIR_NAME = ".staging"
INDEX_DIR_NAME = ".sop-index"
_COMPARE_BLOCK_BYTES = 1024 * 1024
# Above this many buffers in one batch (tiny HTTP chunks), the writer thread
# joins them into one: copying about a MiB costs less than walking thousands
# of iovecs.  A batch of ordinary 64 KiB chunks holds 16 and is not copied.
_JOIN_ABOVE_BUFFERS = 64
# How many directories (study and series) are remembered as durable.  Past
# that the set is cleared: forgetting costs only a repeated fsync, and the
# set must not grow with every series a long-running server ever received.
_DURABLE_DIRS_MAX = 100_000


def _iov_max() -> int:
    """The kernel's limit on buffers per writev (more fails with EINVAL)."""
    try:
        value = os.sysconf("SC_IOV_MAX")
    except (ValueError, OSError):
        value = -1
    # -1 means "indeterminate"; 16 is POSIX's guaranteed minimum
    # (_XOPEN_IOV_MAX).  Linux reports 1024.
    return value if value > 0 else 16


_IOV_MAX = _iov_max()
# Errors that mean "the disk is full" rather than "storage is broken"; the
# first maps to FailureReason 0xA700, everything else to 0x0110.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

log = Logger()


def _translate(exc: OSError) -> Exception:
    if exc.errno in _FULL_ERRNOS:
        return StorageFull(os.strerror(exc.errno or 0))
    return exc


def fsync_directory(path: Path) -> None:
    """Make a directory's entries (new names, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


class _Jobs:
    """The shared thread pool as the part queues see it.

    ``ThreadPool.callInThread`` silently drops a job once ``stop`` has begun,
    and a queue re-submits itself after every operation: without this gate a
    part's remaining operations would be dropped at shutdown instead of run.
    ``close`` (called just before the pool stops) makes ``submit`` refuse, so
    a worker runs the rest of its part's queue itself.
    """

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job`` on the pool; False once the pool is stopping."""
        with self._lock:
            if self._closed:
                return False
            self.pool.callInThread(job)
            return True

    def close(self) -> None:
        with self._lock:
            self._closed = True


class _SerialQueue:
    """Runs one part's operations in order on a shared thread pool.

    ``submit`` is called from the reactor thread; each result comes back with
    one ``callFromThread``.  At most one pool job per queue exists at a time
    (``_running``), which keeps a part's operations serial; each job runs a
    single operation and, if more are queued, submits a new job behind every
    other part's, so parts take turns on the threads.
    """

    def __init__(self, jobs: _Jobs, reactor: IReactorFromThreads) -> None:
        self._jobs = jobs
        self._reactor = reactor
        self._ops: deque[tuple[Callable[[], Any], Deferred[Any]]] = deque()
        self._lock = threading.Lock()
        self._running = False

    def submit(self, op: Callable[[], T]) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        with self._lock:
            self._ops.append((op, d))
            start = not self._running
            self._running = True
        if start:
            # Refused only after stop(): as with ThreadPool itself, nothing
            # submitted after that runs (start-up sweeps what it leaves).
            self._jobs.submit(self._run_one)
        return d

    def _run_one(self) -> None:
        while True:
            with self._lock:
                op, d = self._ops.popleft()
            try:
                result = op()
            except BaseException:
                self._reactor.callFromThread(d.errback, Failure())
            else:
                self._reactor.callFromThread(d.callback, result)
            with self._lock:
                if not self._ops:
                    self._running = False
                    return
            if self._jobs.submit(self._run_one):
                return
            # The pool is stopping and takes no new jobs; stop() waits for
            # this thread, so finishing the queue here keeps its promise to
            # wait for every queued operation.


class _StagingFile:
    """Thread-side state of one staged part.  Only touched by its queue."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.size = 0
        # The first write error; later writes and the final sync re-raise it,
        # so a part with a hole in it can never be reported as staged.
        self.error: Exception | None = None

    def write(self, buffers: list[bytes | memoryview]) -> None:
        if self.error is not None:
            raise self.error
        try:
            if self.fd is None:
                # O_EXCL: a name collision must never clobber another part.
                self.fd = os.open(
                    self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
                )
            if len(buffers) > _JOIN_ABOVE_BUFFERS:
                # Many tiny chunks (a client sending 20-byte HTTP chunks puts
                # ~50,000 in a batch): writev refuses more than IOV_MAX
                # buffers with EINVAL, and one copy is cheaper anyway.
                buffers = [b"".join(buffers)]
            while buffers:
                # Still capped: IOV_MAX may be below the join threshold.
                written = os.writev(self.fd, buffers[:_IOV_MAX])
                self.size += written
                buffers = _drop_written(buffers, written)
        except OSError as e:
            self.error = _translate(e)
            raise self.error from e

    def sync_and_close(self) -> int:
        try:
            if self.error is not None:
                raise self.error
            if self.fd is None:  # an empty part still gets a (empty) file
                self.write([])
            assert self.fd is not None
            os.fsync(self.fd)
        except OSError as e:
            raise _translate(e) from e
        finally:
            self._close()
        return self.size

    def discard(self) -> None:
        self._close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def _drop_written(buffers: list[bytes | memoryview], written: int) -> list[bytes | memoryview]:
    """What is left of ``buffers`` after a (possibly short) writev."""
    done = 0
    while done < len(buffers) and written >= len(buffers[done]):
        written -= len(buffers[done])
        done += 1
    rest = buffers[done:]
    if written and rest:
        rest[0] = memoryview(rest[0])[written:]
    return rest


@implementer(IPartWriter)
class FilesystemPartWriter:
    """Stages one part on disk; see ``IPartWriter`` for the lifecycle."""

    def __init__(self, storage: FilesystemStorage, staged_path: Path, flow: BytesInFlight) -> None:
        self._storage = storage
        self._flow = flow
        self._queue = _SerialQueue(storage.jobs, storage.reactor)
        self._file = _StagingFile(staged_path)
        self.staged_path = staged_path
        self._batch: list[bytes | memoryview] = []
        self._batch_bytes = 0
        self._finishing = False
        self._done = False  # committed or aborted: nothing more to do

    def write(self, data: bytes | memoryview) -> None:
        if self._finishing or self._done:
            raise RuntimeError("write after finish/abort")
        self._batch.append(data)
        self._batch_bytes += len(data)
        self._flow.add(len(data))
        if self._batch_bytes >= BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        batch, nbytes = self._batch, self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        if not batch:
            return
        d = self._queue.submit(lambda: self._file.write(batch))
        # Released whether the write worked or not: failures surface in
        # finish(); the upload's flow must never stay paused on them.
        d.addBoth(self._release, nbytes)

    def _release(self, result: object, nbytes: int) -> object:
        self._flow.done(nbytes)
        if isinstance(result, Failure):
            self._failure = result
            return None
        return result

    _failure: Failure | None = None

    def finish(self) -> Deferred[int]:
        self._finishing = True
        self._flush()
        d = self._queue.submit(self._sync_after_writes)
        return d

    def _sync_after_writes(self) -> int:
        # Runs after every queued write, in order; a failed write left its
        # Failure on the reactor side, but this thread sees the same file
        # state: a missing fd after a failed open means nothing to sync.
        return self._file.sync_and_close()

    def commit(self, instance: InstanceRef, *, overwrite: bool) -> Deferred[CommitResult]:
        if self._failure is not None:
            return self._fail_with(self._failure)
        self._done = True
        return self._queue.submit(
            lambda: self._storage.link_into_place(self._file.path, instance, overwrite=overwrite)
        )

    def _fail_with(self, failure: Failure) -> Deferred[CommitResult]:
        d: Deferred[CommitResult] = Deferred()
        d.errback(failure)
        return d

    def abort(self) -> Deferred[None]:
        if self._discarded is not None:
            return _chain(self._discarded)
        if self._done:  # committed: the staged name is gone already
            return succeed(None)
        self._done = True
        batch_bytes, self._batch, self._batch_bytes = self._batch_bytes, [], 0
        if batch_bytes:
            self._flow.done(batch_bytes)
        self._discarded = self._queue.submit(self._file.discard)
        self._discarded.addErrback(lambda f: log.failure("could not remove staging file", f))
        return _chain(self._discarded)

    _discarded: Deferred[None] | None = None


def _chain(d: Deferred[None]) -> Deferred[None]:
    """A new Deferred firing with ``d`` without taking over its result."""
    mirror: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        mirror.callback(None)
        return result

    d.addBoth(fire)
    return mirror


@implementer(IStorage)
class FilesystemStorage:
    """Instances as files under ``root``; see the module docstring."""

    def __init__(
        self,
        root: Path | str,
        reactor: IReactorFromThreads,
        *,
        writer_threads: int = DEFAULT_WRITER_THREADS,
    ) -> None:
        self.root = Path(root).absolute()
        self.staging = self.root / STAGING_DIR_NAME
        self.index = self.root / INDEX_DIR_NAME
        # Check-and-link of one SOP Instance UID must not interleave with
        # another commit of the same UID (two uploads to two studies).
        self._index_lock = threading.Lock()
        # Study and series directories whose entry in their parent this
        # process has fsynced.  Added to only after the fsync, so a thread
        # that finds a directory here may rely on it; two threads that both
        # miss it both fsync, which is harmless.  (Single set operations are
        # atomic, no lock needed.)
        self._durable_dirs: set[Path] = set()
        # Tells this run's staging files from an earlier run's with the same
        # pid (a restarted container); see _staging_is_stale.
        self._run_token = secrets.token_hex(8)
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=writer_threads, name="stow-storage")
        self.jobs = _Jobs(self.pool)

    def start(self) -> None:
        """Create the directories, sweep stale staging files, start threads."""
        self.staging.mkdir(parents=True, exist_ok=True)
        self.index.mkdir(exist_ok=True)
        fsync_directory(self.root)
        self._sweep_stale_staging()
        self.pool.start()

    def stop(self) -> None:
        """Wait for queued operations and stop the threads."""
        self.jobs.close()
        self.pool.stop()

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
        return not _pid_alive(pid)

    def open_writer(self, flow: BytesInFlight) -> FilesystemPartWriter:
        name = f"{os.getpid()}-{self._run_token}-{uuid.uuid4().hex}.part"
        return FilesystemPartWriter(self, self.staging / name, flow)

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
        """Blocking: move ``staged`` to its final name durably.

        A SOP Instance UID is unique across studies, so the duplicate check
        goes through the index (``.sop-index/<SOPInstanceUID>``, a symlink to
        the stored file), not only through the instance's own path.
        """
        final = self.instance_path(instance)
        try:
            self._make_dirs(final.parent)
            result, elsewhere = self._place(staged, final, instance, overwrite=overwrite)
            if result is not CommitResult.CONFLICTING_DUPLICATE:
                # Also for an identical duplicate: a retry racing the original
                # commit (between its link and its fsyncs) must not be told
                # "stored" before the entries are durable.  The index goes
                # first, so a crash between the two fsyncs leaves at worst a
                # dangling entry (reads as absent), not a stored file that
                # escapes the index.  (The kernel may still write the link
                # earlier on its own; excluding that would need an fsync
                # between index and link, under the process-wide lock.)
                changed_dirs = [self.index, final.parent]
                if elsewhere is not None:
                    changed_dirs.append(elsewhere.parent)
                for directory in changed_dirs:
                    fsync_directory(directory)
        except OSError as e:
            raise _translate(e) from e
        finally:
            # The staging name is only a temporary alias: the final name (or
            # the older copy) holds the bytes now, or nothing should.
            try:
                os.unlink(staged)
            except FileNotFoundError:
                pass
        return result

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
            with self._index_lock:
                previous = self._indexed(entry)
                if previous is not None and previous != final:
                    # The same SOP Instance UID stored under another
                    # study/series: other bytes, since the UIDs are in the data
                    # set, so no comparison is needed.
                    if not overwrite:
                        return CommitResult.CONFLICTING_DUPLICATE, None
                    os.replace(staged, final)
                    self._point(entry, final)
                    os.unlink(previous)
                    return CommitResult.OVERWRITTEN, previous
                # Index first: a crash between the two steps leaves a dangling
                # entry, which reads as absent, never an instance that escapes
                # the index.
                self._point(entry, final)
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
            with self._index_lock:
                # Replacing the same path is atomic by itself, but a
                # concurrent overwrite may have moved the instance to another
                # study while we compared: replacing then would leave a second
                # copy outside the index.
                if self._indexed(entry) == final:
                    os.replace(staged, final)
                    return CommitResult.OVERWRITTEN, None

    def _indexed(self, entry: Path) -> Path | None:
        """The stored file an index entry names, or None (no entry, dangling)."""
        try:
            # Lexical, not resolve(): the root itself may sit behind a symlink.
            target = Path(os.path.normpath(self.index / os.readlink(entry)))
        except FileNotFoundError:
            return None
        return target if target.exists() else None

    def _point(self, entry: Path, final: Path) -> None:
        """Make the index entry name ``final`` (atomically replacing any)."""
        target = os.path.relpath(final, self.index)
        try:
            if os.readlink(entry) == target:
                return
        except FileNotFoundError:
            pass
        temporary = entry.with_name(f"{entry.name}.{uuid.uuid4().hex}.tmp")
        try:
            os.symlink(target, temporary)
        except FileNotFoundError:
            # The index directory was removed under a running server (an
            # operator's clean-up): recreate it rather than fail every store,
            # and make its entry in the root durable before any entry in it.
            self.index.mkdir(exist_ok=True)
            fsync_directory(self.root)
            os.symlink(target, temporary)
        os.replace(temporary, entry)

    def _make_dirs(self, series_dir: Path) -> None:
        """Create the study and series directories; make their entries durable.

        Not only when this commit created them: a commit that created them
        and then failed, or a concurrent commit that has created them but
        not synced their parents yet, would otherwise leave a later instance
        reported stored under a directory whose entry a crash can lose.  So
        each directory not yet known durable in this process gets its parent
        fsynced, whoever made it.  The directory itself is synced later,
        with the file it receives.
        """
        for directory in (series_dir.parent, series_dir):
            if directory in self._durable_dirs:
                continue
            directory.mkdir(exist_ok=True)
            fsync_directory(directory.parent)
            if len(self._durable_dirs) >= _DURABLE_DIRS_MAX:
                self._durable_dirs.clear()
            self._durable_dirs.add(directory)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process / pid
        return False
    except PermissionError:
        return True
    return True
