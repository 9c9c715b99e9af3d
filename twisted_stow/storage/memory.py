"""In-memory storage: a real ``IStorage`` for tests and experiments, not a mock.

It keeps the filesystem backend's semantics where a caller can see them: a
part is listed as stored only once ``commit`` has fired; a SOP Instance UID
is unique across studies; the same UID again with identical bytes is an
``IDENTICAL_DUPLICATE``, with other bytes a ``CONFLICTING_DUPLICATE`` (or
``OVERWRITTEN`` when overwriting, the older copy moved if it lived in another
study or series).  Bytes are compared by SHA-256, so ``keep_data=False``
stores a gigabyte as a count and a digest.

Slow storage without a fake: with ``held=True`` no write completes on its
own; the test releases bytes (``MemoryPartWriter.release``) and each write's
Deferred fires once all its bytes are released, in order, as a disk that
falls behind would.  ``finish`` waits for every write, as the filesystem's
sync waits for the writer thread.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from ..core.outcomes import InstanceRef
from ..core.policy import CommitResult
from ..interfaces import IPartWriter, IStorage


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """One committed instance: where it is filed, its size and digest, its bytes if kept."""

    instance: InstanceRef
    size_bytes: int
    sha256: bytes
    data: bytes | None


@implementer(IPartWriter)
class MemoryPartWriter:
    """One part in memory; see ``IPartWriter`` for the lifecycle."""

    def __init__(self, storage: MemoryStorage) -> None:
        self._storage = storage
        self._chunks: list[bytes | memoryview] = []
        self._digest = hashlib.sha256()
        # Writes not yet completed (held storage): [bytes left, Deferred].
        self._unwritten: deque[list[object]] = deque()
        self._finished: list[Deferred[int]] = []
        self._finishing = False
        self.received = 0
        """Bytes accepted by ``write``."""
        self.written = 0
        """Bytes whose write has completed (or been dropped by ``abort``)."""
        self.aborted = False
        self.committed: InstanceRef | None = None
        self.sha256: bytes | None = None
        """The part's SHA-256 once ``finish`` has fired (``IPartWriter.sha256``)."""
        self.drainable = True
        """Memory gathers nothing: held bytes wait only for ``release`` (``IPartWriter``)."""

    @property
    def held(self) -> int:
        """Bytes accepted but not yet written."""
        return self.received - self.written

    @property
    def data(self) -> bytes:
        """Every byte this writer received (empty with ``keep_data=False``).

        Kept after ``abort`` for the test to inspect; the storage itself
        lists only committed instances.
        """
        return b"".join(self._chunks)

    def write(self, data: bytes | memoryview) -> Deferred[None]:
        if self._finishing or self.aborted or self.committed is not None:
            raise RuntimeError("write after finish/abort")
        written: Deferred[None] = Deferred()
        self.received += len(data)
        self._digest.update(data)
        if self._storage.keep_data:
            self._chunks.append(data)
        if self._storage.held:
            self._unwritten.append([len(data), written])
        else:
            self.written += len(data)
            written.callback(None)
        return written

    def release(self, nbytes: int | None = None) -> None:
        """Held storage writes ``nbytes`` more (all it holds when None), oldest first."""
        left = self.held if nbytes is None else nbytes
        while self._unwritten and left > 0:
            entry = self._unwritten[0]
            pending = entry[0]
            assert isinstance(pending, int)
            step = min(pending, left)
            entry[0] = pending - step
            self.written += step
            left -= step
            if step == pending:
                self._unwritten.popleft()
                written = entry[1]
                assert isinstance(written, Deferred)
                written.callback(None)
        if not self._unwritten:
            finished, self._finished = self._finished, []
            if finished:
                self.sha256 = self._digest.digest()
            for waiter in finished:
                waiter.callback(self.received)

    def finish(self) -> Deferred[int]:
        """Fires with the size once every write has completed (at once unless held)."""
        self._finishing = True
        if not self._unwritten:
            self.sha256 = self._digest.digest()
            return succeed(self.received)
        waiter: Deferred[int] = Deferred()
        self._finished.append(waiter)
        return waiter

    def commit(self, instance: InstanceRef, *, overwrite: bool) -> Deferred[CommitResult]:
        if self.aborted or self._unwritten:
            return fail(RuntimeError("commit of an aborted or unfinished part"))
        data = self.data if self._storage.keep_data else None
        self._chunks = []
        self.committed = instance
        stored = StoredInstance(instance, self.received, self._digest.digest(), data)
        return succeed(self._storage.place(stored, overwrite=overwrite))

    def abort(self) -> Deferred[None]:
        if self.committed is not None or self.aborted:
            return succeed(None)
        self.aborted = True
        # Dropped bytes are no longer held: their writes complete now.
        self.release()
        return succeed(None)


@implementer(IStorage)
class MemoryStorage:
    """Instances in a dict keyed by SOP Instance UID; see the module docstring."""

    def __init__(self, *, held: bool = False, keep_data: bool = True) -> None:
        self.held = held
        self.keep_data = keep_data
        self.started = False
        self.writers: list[MemoryPartWriter] = []
        """Every writer opened, oldest first (tests step and inspect them)."""
        self._stored: dict[str, StoredInstance] = {}

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def unavailable(self) -> None:
        """Memory is never "down"."""
        return None

    def open_writer(self) -> MemoryPartWriter:
        writer = MemoryPartWriter(self)
        self.writers.append(writer)
        return writer

    def release_all(self) -> None:
        """Held storage catches up: every writer writes all it holds."""
        for writer in self.writers:
            writer.release()

    def lookup(self, sop_instance_uid: str) -> StoredInstance | None:
        """The committed instance with this SOP Instance UID, if any."""
        return self._stored.get(sop_instance_uid)

    @property
    def instances(self) -> list[InstanceRef]:
        """Every committed instance, in the order first stored."""
        return [stored.instance for stored in self._stored.values()]

    def place(self, stored: StoredInstance, *, overwrite: bool) -> CommitResult:
        """File ``stored`` under its SOP Instance UID, with the filesystem's duplicate rules."""
        uid = stored.instance.sop_instance_uid
        previous = self._stored.get(uid)
        if previous is None:
            self._stored[uid] = stored
            return CommitResult.STORED
        here = _filed_under(previous.instance) == _filed_under(stored.instance)
        if here and previous.sha256 == stored.sha256:
            return CommitResult.IDENTICAL_DUPLICATE
        # Under another study or series the bytes differ (the UIDs are in the
        # data set), so no comparison is needed, as on the filesystem.
        if not overwrite:
            return CommitResult.CONFLICTING_DUPLICATE
        self._stored[uid] = stored
        return CommitResult.OVERWRITTEN


def _filed_under(instance: InstanceRef) -> tuple[str, str]:
    """What names an instance's place besides its SOP Instance UID."""
    return instance.study_instance_uid, instance.series_instance_uid
