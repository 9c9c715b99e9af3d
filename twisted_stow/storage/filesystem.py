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

Staging names are ``<pid>-<run token>-<random>.part``.  Start-up removes the
files of processes that are gone, and those with our pid but another run's
token: in a container the server is often pid 1 after every restart.
"""

from __future__ import annotations

import os
import secrets
import threading
import uuid
from pathlib import Path

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ..core.outcomes import InstanceRef
from ..core.policy import CommitResult
from ..deferreds import detached
from ..durable import fsync_directory, pid_alive
from ..interfaces import IPartWriter, IStorage
from .serial import Jobs, SerialQueue
from .staging import StagingFile, translate_os_error

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


@implementer(IPartWriter)
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
        self._queue = SerialQueue(storage.jobs, storage.reactor)
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
        d = self._queue.submit(lambda: self._file.write(batch))
        # Released whether the write worked or not: failures surface in
        # finish(); the upload's flow must never stay paused on them.
        d.addBoth(self._release, written)

    def _release(self, result: object, written: list[Deferred[None]]) -> None:
        if isinstance(result, Failure):
            self._failure = result
        _fire_all(written)

    _failure: Failure | None = None

    def finish(self) -> Deferred[int]:
        self._finishing = True
        self._flush()
        return self._queue.submit(self._sync_after_writes).addCallback(self._finished)

    def _finished(self, size: int) -> int:
        self.sha256 = self._file.sha256
        return size

    def _sync_after_writes(self) -> int:
        # Runs after every queued write, in order; a failed write left its
        # Failure on the reactor side, but this thread sees the same file
        # state: a missing fd after a failed open means nothing to sync.
        return self._file.sync_and_close()

    def commit(self, instance: InstanceRef, *, overwrite: bool) -> Deferred[CommitResult]:
        if self._failure is not None:
            return fail(self._failure)
        self._done = True
        return self._queue.submit(
            lambda: self._storage.link_into_place(self._file.path, instance, overwrite=overwrite)
        )

    def abort(self) -> Deferred[None]:
        if self._discarded is not None:
            return detached(self._discarded)
        if self._done:  # committed: the staged name is gone already
            return succeed(None)
        self._done = True
        # Bytes never handed to the writer thread are dropped here and now.
        _fire_all(self._take_batch()[1])
        self._discarded = self._queue.submit(self._file.discard)
        self._discarded.addErrback(lambda f: log.failure("could not remove staging file", f))
        return detached(self._discarded)

    _discarded: Deferred[None] | None = None


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
        self.jobs = Jobs(self.pool)

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
        return not pid_alive(pid)

    def unavailable(self) -> None:
        """A local directory is never "down": its faults surface per write."""
        return None

    def open_writer(self) -> FilesystemPartWriter:
        name = f"{os.getpid()}-{self._run_token}-{uuid.uuid4().hex}.part"
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
            raise translate_os_error(e) from e
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
                    self._move(staged, final, entry, previous)
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
        try:
            # Lexical, not resolve(): the root itself may sit behind a symlink.
            target = Path(os.path.normpath(self.index / os.readlink(entry)))
        except FileNotFoundError:
            return None
        return target if target.exists() else None

    def _point(self, entry: Path, final: Path) -> None:
        """Make the index entry name ``final`` (atomically replacing any)."""
        try:
            if os.readlink(entry) == os.path.relpath(final, self.index):
                return
        except FileNotFoundError:
            pass
        temporary = self._new_entry(entry, final)
        try:
            os.replace(temporary, entry)
        except BaseException:
            _unlink_quietly(temporary)
            raise

    def _new_entry(self, entry: Path, final: Path) -> Path:
        """A temporary symlink beside ``entry`` naming ``final``, to rename over it."""
        target = os.path.relpath(final, self.index)
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
        return temporary

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
