"""FilesystemStorage on a real disk with its real worker threads."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from tests.dicom_files import CT, read, uids
from tests.fakes import RecordingProducer
from tests.integration.observe import staging_files
from twisted_stow.core.multipart import PartData, PartEnded, PartStarted
from twisted_stow.core.outcomes import Failed, FailureReason, InstanceRef, Stored
from twisted_stow.core.policy import CommitResult, IngestPolicy, StorageFull
from twisted_stow.core.validation import DEFAULT_POLICY
from twisted_stow.flow import BytesInFlight
from twisted_stow.ingest import Ingest
from twisted_stow.interfaces import IPartWriter, IStorage
from twisted_stow.storage import filesystem, serial, staging
from twisted_stow.storage.filesystem import BATCH_BYTES, FilesystemStorage

INSTANCE = InstanceRef("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4.5.6", "1.2.3", "1.2.3.4")


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[FilesystemStorage]:
    from twisted.internet import reactor

    store = FilesystemStorage(tmp_path / "store", reactor)
    store.start()
    yield store
    store.stop()


@pytest.fixture
def flow() -> BytesInFlight:
    return BytesInFlight(RecordingProducer())


def ingest_on(store: FilesystemStorage) -> Ingest:
    """An Ingest with the default policy, validating in the reactor's threads."""

    return Ingest(store, IngestPolicy(DEFAULT_POLICY), RecordingProducer())


def staged(store: FilesystemStorage) -> list[Path]:
    return staging_files(store.root)


def send(flow: BytesInFlight, writer: IPartWriter, data: bytes) -> None:
    """Write ``data`` as Ingest does: counted in flight until the write's Deferred fires."""
    flow.add(len(data))
    writer.write(data).addCallback(lambda _: flow.done(len(data)))


async def write_part(store: FilesystemStorage, flow: BytesInFlight, data: bytes, piece: int) -> Any:
    writer = store.open_writer()
    for offset in range(0, len(data), piece):
        send(flow, writer, data[offset : offset + piece])
    size = await writer.finish()
    assert size == len(data)
    return writer


def test_provides_interfaces(storage: FilesystemStorage, flow: BytesInFlight) -> None:
    """FilesystemStorage and its writers implement IStorage and IPartWriter."""
    verifyObject(IStorage, storage)
    writer = storage.open_writer()
    verifyObject(IPartWriter, writer)
    writer.abort()


@pytest_twisted.ensureDeferred
async def test_commit_stores_bytes_exactly(storage: FilesystemStorage, flow: BytesInFlight) -> None:
    """Several batches of odd-sized chunks land byte-identical at the instance path."""
    data = os.urandom(3 * BATCH_BYTES + 12345)
    writer = await write_part(storage, flow, data, 64 * 1024 + 7)
    result = await writer.commit(INSTANCE, overwrite=False)
    assert result is CommitResult.STORED
    assert storage.instance_path(INSTANCE).read_bytes() == data
    assert staged(storage) == []
    assert flow.in_flight_bytes == 0


def record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Patch ``os.fsync`` in the storage module; the list gets each synced path."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(filesystem.os, "fsync", fsync)
    return synced


@pytest_twisted.ensureDeferred
async def test_file_and_every_changed_directory_are_synced_before_commit_returns(
    storage: FilesystemStorage, flow: BytesInFlight, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync the file, the parents of new directories, then the index before the series."""
    events: list[tuple[str, str]] = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def link(src: Any, dst: Any) -> None:
        events.append(("link", str(dst)))
        real_link(src, dst)

    monkeypatch.setattr(filesystem.os, "fsync", fsync)
    monkeypatch.setattr(filesystem.os, "link", link)
    writer = await write_part(storage, flow, b"payload", 3)
    staged_name = str(writer.staged_path)
    await writer.commit(INSTANCE, overwrite=False)

    final = storage.instance_path(INSTANCE)
    series_dir, study_dir = final.parent, final.parent.parent
    # The file is synced before its link.  Then every directory the commit
    # changed, before it returns: the root gained the study directory and the
    # study directory the series directory; the index gained its entry and
    # the series directory the file, in that order, so a crash between the
    # two leaves at worst a dangling index entry.
    assert events == [
        ("fsync", staged_name),
        ("link", str(final)),
        ("fsync", str(storage.root)),
        ("fsync", str(study_dir)),
        ("fsync", str(storage.index)),
        ("fsync", str(series_dir)),
    ]


@pytest_twisted.ensureDeferred
async def test_second_instance_syncs_only_the_index_and_its_series_directory(
    storage: FilesystemStorage, flow: BytesInFlight, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A series already known durable: only the index and the series directory are synced."""
    first = await write_part(storage, flow, b"one", 10)
    await first.commit(INSTANCE, overwrite=False)
    other = InstanceRef(INSTANCE.sop_class_uid, "1.2.3.4.5.7", "1.2.3", "1.2.3.4")
    second = await write_part(storage, flow, b"two", 10)
    synced = record_fsyncs(monkeypatch)
    await second.commit(other, overwrite=False)
    assert synced == [str(storage.index), str(storage.instance_path(other).parent)]


@pytest.mark.parametrize("failing", ["link", "fsync of the root"])
@pytest_twisted.ensureDeferred
async def test_directories_of_a_failed_commit_are_durable_before_the_next_is_stored(
    storage: FilesystemStorage, flow: BytesInFlight, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A commit that created the study directory and then failed: the next one syncs it."""
    final = storage.instance_path(INSTANCE)
    study_dir = final.parent.parent
    durable: list[str] = []
    failed: list[str] = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if failing == "fsync of the root" and path == str(storage.root) and not failed:
            failed.append(path)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)
        durable.append(path)

    def link(src: Any, dst: Any) -> None:
        if failing == "link" and str(dst) == str(final):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_link(src, dst)

    monkeypatch.setattr(filesystem.os, "fsync", fsync)
    monkeypatch.setattr(filesystem.os, "link", link)
    writer = await write_part(storage, flow, b"first", 10)
    with pytest.raises(OSError):
        await writer.commit(INSTANCE, overwrite=False)
    assert study_dir.is_dir()  # created, then the commit failed
    other = InstanceRef(INSTANCE.sop_class_uid, "1.2.3.4.5.7", "1.2.3", "1.2.3.4")
    second = await write_part(storage, flow, b"second", 10)
    assert await second.commit(other, overwrite=False) is CommitResult.STORED
    assert str(storage.root) in durable
    assert str(study_dir) in durable


@pytest_twisted.ensureDeferred
async def test_existing_directories_not_known_durable_get_their_parents_synced(
    storage: FilesystemStorage, flow: BytesInFlight, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Study and series made by someone else (a racing commit, a crashed run) are synced once."""
    final = storage.instance_path(INSTANCE)
    series_dir, study_dir = final.parent, final.parent.parent
    series_dir.mkdir(parents=True)
    writer = await write_part(storage, flow, b"one", 10)
    synced = record_fsyncs(monkeypatch)
    assert await writer.commit(INSTANCE, overwrite=False) is CommitResult.STORED
    assert synced == [str(storage.root), str(study_dir), str(storage.index), str(series_dir)]


@pytest_twisted.ensureDeferred
async def test_identical_duplicate_syncs_the_index_and_series_directory(
    storage: FilesystemStorage, flow: BytesInFlight, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry racing the original commit is not acknowledged before the entries are durable."""
    first = await write_part(storage, flow, b"same bytes", 4)
    await first.commit(INSTANCE, overwrite=False)
    again = await write_part(storage, flow, b"same bytes", 4)
    synced = record_fsyncs(monkeypatch)
    assert await again.commit(INSTANCE, overwrite=False) is CommitResult.IDENTICAL_DUPLICATE
    assert synced == [str(storage.index), str(storage.instance_path(INSTANCE).parent)]


@pytest_twisted.ensureDeferred
async def test_abort_mid_part_leaves_nothing(
    storage: FilesystemStorage, flow: BytesInFlight
) -> None:
    """Abort after some batches: the staging file is removed, the flow released."""
    writer = storage.open_writer()
    send(flow, writer, os.urandom(2 * BATCH_BYTES))
    send(flow, writer, b"tail not yet flushed")
    first, second = writer.abort(), writer.abort()
    # abort() fires once the staging file is gone; a second call waits too.
    await first
    await second
    assert staged(storage) == []
    assert flow.in_flight_bytes == 0
    assert not storage.instance_path(INSTANCE).exists()


@pytest_twisted.ensureDeferred
async def test_out_of_space_is_storage_full(
    storage: FilesystemStorage, flow: BytesInFlight, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while writing fails finish() with StorageFull; abort cleans up."""

    def full(fd: int, buffers: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(filesystem.os, "writev", full)
    writer = storage.open_writer()
    send(flow, writer, os.urandom(BATCH_BYTES + 1))
    with pytest.raises(StorageFull):
        await writer.finish()
    writer.abort()
    assert flow.in_flight_bytes == 0


@pytest.mark.parametrize(
    ("error", "reason"),
    [(errno.ENOSPC, FailureReason.OUT_OF_RESOURCES), (errno.EIO, FailureReason.PROCESSING_FAILURE)],
)
@pytest_twisted.ensureDeferred
async def test_ingest_maps_storage_errors_to_failure_reasons(
    storage: FilesystemStorage, monkeypatch: pytest.MonkeyPatch, error: int, reason: FailureReason
) -> None:
    """Out of space → 0xA700, any other storage error → 0x0110; nothing left behind."""

    def broken(fd: int, buffers: Any) -> int:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(filesystem.os, "writev", broken)
    from twisted.internet import reactor

    ingest = ingest_on(storage)
    ingest.handle(
        [PartStarted((("content-type", "application/dicom"),)), PartData(read(CT)), PartEnded()]
    )
    result = await ingest.close()
    assert len(result.outcomes) == 1
    outcome = result.outcomes[0]
    assert isinstance(outcome, Failed) and outcome.reason is reason
    assert reactor.running
    # Ingest waits for the abort before it reports the failure: nothing left.
    assert staged(storage) == []


@pytest_twisted.ensureDeferred
async def test_ingest_stores_a_real_instance(storage: FilesystemStorage) -> None:
    """Events of one real part end as Stored with the file in place."""
    ingest = ingest_on(storage)
    data = read(CT)
    ingest.handle([PartStarted(()), PartData(data[:1000]), PartData(data[1000:]), PartEnded()])
    result = await ingest.close()
    (outcome,) = result.outcomes
    assert isinstance(outcome, Stored)
    assert outcome.instance.sop_instance_uid == uids(CT)[1]
    assert storage.instance_path(outcome.instance).read_bytes() == data


@pytest_twisted.ensureDeferred
async def test_identical_duplicate_is_not_rewritten(
    storage: FilesystemStorage, flow: BytesInFlight
) -> None:
    """Same SOP Instance UID, same bytes: success, the stored file untouched."""
    first = await write_part(storage, flow, b"same bytes", 4)
    await first.commit(INSTANCE, overwrite=False)
    before = storage.instance_path(INSTANCE).stat()
    again = await write_part(storage, flow, b"same bytes", 4)
    assert await again.commit(INSTANCE, overwrite=False) is CommitResult.IDENTICAL_DUPLICATE
    after = storage.instance_path(INSTANCE).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert staged(storage) == []


@pytest_twisted.ensureDeferred
async def test_conflicting_duplicate_keeps_the_old_file(
    storage: FilesystemStorage, flow: BytesInFlight
) -> None:
    """Same SOP Instance UID, other bytes: not stored unless overwriting is on."""
    first = await write_part(storage, flow, b"original", 4)
    await first.commit(INSTANCE, overwrite=False)
    second = await write_part(storage, flow, b"different", 4)
    assert await second.commit(INSTANCE, overwrite=False) is CommitResult.CONFLICTING_DUPLICATE
    assert storage.instance_path(INSTANCE).read_bytes() == b"original"
    third = await write_part(storage, flow, b"replacement", 4)
    assert await third.commit(INSTANCE, overwrite=True) is CommitResult.OVERWRITTEN
    assert storage.instance_path(INSTANCE).read_bytes() == b"replacement"
    assert staged(storage) == []


@pytest_twisted.ensureDeferred
async def test_same_sop_instance_in_another_series_is_a_duplicate(
    storage: FilesystemStorage, flow: BytesInFlight
) -> None:
    """A SOP Instance UID is unique across studies: another path still conflicts."""
    first = await write_part(storage, flow, b"original", 4)
    await first.commit(INSTANCE, overwrite=False)
    moved = InstanceRef(INSTANCE.sop_class_uid, INSTANCE.sop_instance_uid, "1.2.9", "1.2.9.1")
    second = await write_part(storage, flow, b"other study", 4)
    assert await second.commit(moved, overwrite=False) is CommitResult.CONFLICTING_DUPLICATE
    assert not storage.instance_path(moved).exists()
    assert storage.instance_path(INSTANCE).read_bytes() == b"original"
    third = await write_part(storage, flow, b"moved for good", 4)
    assert await third.commit(moved, overwrite=True) is CommitResult.OVERWRITTEN
    assert storage.instance_path(moved).read_bytes() == b"moved for good"
    assert not storage.instance_path(INSTANCE).exists()
    assert staged(storage) == []


@pytest_twisted.ensureDeferred
async def test_dangling_index_entry_reads_as_absent(
    storage: FilesystemStorage, flow: BytesInFlight
) -> None:
    """A crash between indexing and linking leaves an entry that does not block a retry."""
    (storage.index / INSTANCE.sop_instance_uid).symlink_to("../1.2.9/1.2.9.1/gone.dcm")
    writer = await write_part(storage, flow, b"retry", 4)
    assert await writer.commit(INSTANCE, overwrite=False) is CommitResult.STORED
    assert storage.instance_path(INSTANCE).read_bytes() == b"retry"


def test_start_sweeps_staging_files_of_dead_processes(tmp_path: Path) -> None:
    """Leftovers of a crashed server are removed; files of a live process stay."""
    from twisted.internet import reactor

    store = FilesystemStorage(tmp_path / "store", reactor)
    store.staging.mkdir(parents=True)
    dead = store.staging / "999999999-0123abcd-deadbeef.part"
    old_format = store.staging / "999999999-deadbeef.part"
    # The pytest parent process (a shell, an IDE) outlives this test.
    alive = store.staging / f"{os.getppid()}-0123abcd-cafe.part"
    for path in (dead, old_format, alive):
        path.write_bytes(b"x")
    store.start()
    try:
        assert not dead.exists()
        assert not old_format.exists()
        assert alive.exists()
    finally:
        store.stop()


def test_start_sweeps_our_pid_with_another_run_token(tmp_path: Path) -> None:
    """In a container the pid repeats after a restart: the run token tells the runs apart."""
    from twisted.internet import reactor

    store = FilesystemStorage(tmp_path / "store", reactor)
    store.staging.mkdir(parents=True)
    earlier_run = store.staging / f"{os.getpid()}-0123abcd-deadbeef.part"
    pid_only = store.staging / f"{os.getpid()}-deadbeef.part"
    ours = store.open_writer().staged_path
    for path in (earlier_run, pid_only, ours):
        path.write_bytes(b"x")
    assert ours.name.startswith(f"{os.getpid()}-")
    store.start()
    try:
        assert not earlier_run.exists()
        assert not pid_only.exists()
        assert ours.exists()
    finally:
        store.stop()


@pytest.mark.parametrize("size", [40_000, BATCH_BYTES + 40_000])
@pytest_twisted.ensureDeferred
async def test_many_tiny_chunks_are_stored_exactly(
    storage: FilesystemStorage, flow: BytesInFlight, size: int
) -> None:
    """20-byte chunks (thousands per batch, far above IOV_MAX) land byte-identical."""
    data = os.urandom(size)
    writer = await write_part(storage, flow, data, 20)
    assert await writer.commit(INSTANCE, overwrite=False) is CommitResult.STORED
    assert storage.instance_path(INSTANCE).read_bytes() == data
    assert flow.in_flight_bytes == 0


@pytest_twisted.ensureDeferred
async def test_writev_gets_at_most_iov_max_buffers_and_survives_short_writes(
    storage: FilesystemStorage, flow: BytesInFlight, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fewer buffers than the join threshold are still cut to IOV_MAX per writev call."""
    counts: list[int] = []
    real_writev = os.writev

    def short_writev(fd: int, buffers: Any) -> int:
        counts.append(len(buffers))
        # Write at most 3 buffers, the last one only in part: a short write.
        head = list(buffers[:3])
        if len(head) == 3:
            head[2] = memoryview(head[2])[: len(head[2]) // 2]
        return real_writev(fd, head)

    monkeypatch.setattr(staging, "_IOV_MAX", 4)
    monkeypatch.setattr(filesystem.os, "writev", short_writev)
    data = os.urandom(10 * 1000)
    writer = await write_part(storage, flow, data, 1000)
    assert await writer.commit(INSTANCE, overwrite=False) is CommitResult.STORED
    assert storage.instance_path(INSTANCE).read_bytes() == data
    assert counts and max(counts) <= 4


class DirectReactor:
    """callFromThread that runs the call at once, in the calling thread."""

    def callFromThread(self, f: Callable[..., object], *args: object, **kwargs: object) -> None:
        f(*args, **kwargs)


def test_parts_share_a_one_thread_pool_fairly() -> None:
    """With one thread, two parts' queued operations alternate instead of one draining first."""
    jobs = serial.Jobs(1, name="fairness")
    completions = serial.Completions(DirectReactor())  # type: ignore[arg-type]
    part_a = serial.SerialQueue(jobs, completions)
    part_b = serial.SerialQueue(jobs, completions)
    order: list[str] = []
    all_done = threading.Event()

    def op(name: str) -> Callable[[], None]:
        def run() -> None:
            order.append(name)
            if len(order) == 6:
                all_done.set()

        return run

    # Queued before the pool starts, so every operation is waiting at once.
    results: list[Deferred[None]] = []
    for index in range(3):
        results.append(part_a.submit(op(f"a{index}")))
    for index in range(3):
        results.append(part_b.submit(op(f"b{index}")))
    jobs.start()
    try:
        assert all_done.wait(10)
    finally:
        jobs.stop()
    # Within a part strictly in order; across parts, B is not starved by A.
    assert [name for name in order if name[0] == "a"] == ["a0", "a1", "a2"]
    assert [name for name in order if name[0] == "b"] == ["b0", "b1", "b2"]
    assert order.index("b0") < order.index("a2")
    assert all(d.called for d in results)


def test_stop_runs_every_queued_operation(tmp_path: Path) -> None:
    """stop() waits for a part's queued operations, even those queued behind a running one."""
    reactor: Any = DirectReactor()
    store = FilesystemStorage(tmp_path / "store", reactor, writer_threads=1)
    store.start()
    queue = serial.SerialQueue(store.jobs, store.completions)
    order: list[str] = []
    release = threading.Event()

    def blocked() -> None:
        release.wait(10)
        order.append("first")

    results = [
        queue.submit(blocked),
        queue.submit(lambda: order.append("second")),
        queue.submit(lambda: order.append("third")),
    ]
    timer = threading.Timer(0.05, release.set)
    timer.start()
    store.stop()
    timer.join()
    assert order == ["first", "second", "third"]
    assert all(d.called for d in results)


@pytest_twisted.ensureDeferred
async def test_contents_are_compared_outside_the_index_lock(
    storage: FilesystemStorage, flow: BytesInFlight, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading two whole files for a duplicate check never blocks every other commit."""
    held: list[bool] = []
    real_same_contents = filesystem._same_contents

    def same_contents(a: Path, b: Path) -> bool:
        held.append(storage._index_lock.locked())
        return real_same_contents(a, b)

    monkeypatch.setattr(filesystem, "_same_contents", same_contents)
    first = await write_part(storage, flow, b"same bytes", 4)
    await first.commit(INSTANCE, overwrite=False)
    again = await write_part(storage, flow, b"same bytes", 4)
    assert await again.commit(INSTANCE, overwrite=False) is CommitResult.IDENTICAL_DUPLICATE
    assert held == [False]


@pytest_twisted.ensureDeferred
async def test_overwrite_after_a_concurrent_move_follows_the_index(
    storage: FilesystemStorage, flow: BytesInFlight, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instance moved to another study while we compared: overwrite moves it back, no copy."""
    moved = InstanceRef(INSTANCE.sop_class_uid, INSTANCE.sop_instance_uid, "1.2.9", "1.2.9.1")
    real_same_contents = filesystem._same_contents
    raced: list[CommitResult] = []

    def same_contents(a: Path, b: Path) -> bool:
        if not raced:
            # Another upload overwrites the instance into another study now,
            # between our failed link and our replace (no lock is held here,
            # else this blocking call would deadlock).
            assert not storage._index_lock.locked()
            other = storage.staging / "racing.part"
            other.write_bytes(b"moved elsewhere")
            raced.append(storage.link_into_place(other, moved, overwrite=True))
        return real_same_contents(a, b)

    first = await write_part(storage, flow, b"original", 4)
    await first.commit(INSTANCE, overwrite=False)
    monkeypatch.setattr(filesystem, "_same_contents", same_contents)
    again = await write_part(storage, flow, b"replacement", 4)
    assert await again.commit(INSTANCE, overwrite=True) is CommitResult.OVERWRITTEN
    assert raced == [CommitResult.OVERWRITTEN]
    assert storage.instance_path(INSTANCE).read_bytes() == b"replacement"
    assert not storage.instance_path(moved).exists()
    entry = storage.index / INSTANCE.sop_instance_uid
    assert (storage.index / os.readlink(entry)).resolve() == storage.instance_path(INSTANCE)
    assert staged(storage) == []


MOVED = InstanceRef(INSTANCE.sop_class_uid, INSTANCE.sop_instance_uid, "1.2.9", "1.2.9.1")


def _fail_once(
    monkeypatch: pytest.MonkeyPatch, name: str, matches: Callable[..., bool], nth: int = 1
) -> list[int]:
    """Make ``os.<name>`` raise ENOSPC on its ``nth`` call for which ``matches(*args)``."""
    real = getattr(os, name)
    seen: list[int] = []

    def failing(*args: Any, **kwargs: Any) -> Any:
        if matches(*args):
            seen.append(1)
            if len(seen) == nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(filesystem.os, name, failing)
    return seen


def _index_entries(store: FilesystemStorage) -> list[str]:
    return sorted(path.name for path in store.index.iterdir())


# Each step of an overwrite across studies (FilesystemStorage._move), and how to hit it.
_OVERWRITE_STEPS: dict[str, tuple[str, Callable[..., bool], int]] = {
    "new index entry": ("symlink", lambda target, path: str(path).endswith(".tmp"), 1),
    "entry to restore": ("symlink", lambda target, path: str(path).endswith(".tmp"), 2),
    "file into place": ("replace", lambda src, dst: str(src).endswith(".part"), 1),
    "index switch": ("replace", lambda src, dst: str(src).endswith(".tmp"), 1),
    "old file removed": ("unlink", lambda path: str(path).endswith(".dcm"), 1),
}


@pytest.mark.parametrize("step", list(_OVERWRITE_STEPS))
@pytest_twisted.ensureDeferred
async def test_overwrite_failing_at_any_step_leaves_exactly_the_old_instance(
    storage: FilesystemStorage, flow: BytesInFlight, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """--duplicates overwrite into another study, ENOSPC at each step: the old instance
    alone, indexed, no temporary left (issue 17 point 7)."""
    first = await write_part(storage, flow, b"original", 4)
    await first.commit(INSTANCE, overwrite=False)
    second = await write_part(storage, flow, b"replacement", 4)
    name, matches, nth = _OVERWRITE_STEPS[step]
    seen = _fail_once(monkeypatch, name, matches, nth)
    with pytest.raises(StorageFull):
        await second.commit(MOVED, overwrite=True)
    monkeypatch.undo()
    assert len(seen) >= nth  # the step was reached
    assert storage.instance_path(INSTANCE).read_bytes() == b"original"
    assert not storage.instance_path(MOVED).exists()
    assert _index_entries(storage) == [INSTANCE.sop_instance_uid]
    entry = storage.index / INSTANCE.sop_instance_uid
    assert entry.resolve() == storage.instance_path(INSTANCE).resolve()
    assert staged(storage) == []
    # And the overwrite still works once there is room again.
    third = await write_part(storage, flow, b"replacement", 4)
    assert await third.commit(MOVED, overwrite=True) is CommitResult.OVERWRITTEN
    assert storage.instance_path(MOVED).read_bytes() == b"replacement"
    assert not storage.instance_path(INSTANCE).exists()
    assert _index_entries(storage) == [INSTANCE.sop_instance_uid]


@pytest_twisted.ensureDeferred
async def test_abort_while_a_large_part_finishes_leaves_no_file(
    storage: FilesystemStorage, flow: BytesInFlight
) -> None:
    """A part of several batches syncs only after its hash queue: an abort queued
    before that sync makes it fail, and no staging file is recreated."""
    writer = storage.open_writer()
    send(flow, writer, os.urandom(2 * BATCH_BYTES + 5))
    finishing = writer.finish()
    await writer.abort()
    with pytest.raises(OSError):
        await finishing
    assert staged(storage) == []
    assert flow.in_flight_bytes == 0


@pytest_twisted.ensureDeferred
async def test_large_part_hashed_beside_its_writes_has_the_right_digest(
    storage: FilesystemStorage, flow: BytesInFlight
) -> None:
    """Batches hashed on their own queue, in order: the digest is the whole part's."""
    data = os.urandom(3 * BATCH_BYTES + 4321)
    writer = await write_part(storage, flow, data, 200 * 1024 + 3)
    assert writer.sha256 == hashlib.sha256(data).digest()
    assert await writer.commit(INSTANCE, overwrite=False) is CommitResult.STORED
    stored = storage.instance_path(INSTANCE)
    assert os.getxattr(stored, staging.DIGEST_XATTR) == writer.sha256


@pytest.mark.parametrize("root", ["store", "a/../store", ".hidden/store", "x/./store"])
def test_index_entries_name_their_file_as_relpath_would(tmp_path: Path, root: str) -> None:
    """The index's link text, built from strings, is what os.path.relpath gives."""
    store = FilesystemStorage(tmp_path / root, DirectReactor())  # type: ignore[arg-type]
    for final in (
        store.instance_path(INSTANCE),
        store.root / "1.2" / "1.3" / "..hidden.dcm",
        tmp_path / "elsewhere" / "1.dcm",
    ):
        assert store._index_target(final) == os.path.relpath(final, store.index)


def count_jobs(store: FilesystemStorage, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the jobs handed to the storage's writer threads."""
    jobs: list[int] = []
    real_submit = store.jobs.submit

    def submit(job: Callable[[], None]) -> bool:
        jobs.append(1)
        return real_submit(job)

    monkeypatch.setattr(store.jobs, "submit", submit)
    return jobs


def record_steps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Patch the storage module's fsync, link and symlink; the list gets each in order."""
    steps: list[str] = []
    real_fsync, real_link, real_symlink = os.fsync, os.link, os.symlink

    def fsync(fd: int) -> None:
        steps.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}")
        real_fsync(fd)

    def link(src: Any, dst: Any) -> None:
        real_link(src, dst)
        steps.append(f"link {dst}")

    def symlink(src: Any, dst: Any) -> None:
        real_symlink(src, dst)
        steps.append(f"symlink {dst}")

    monkeypatch.setattr(filesystem.os, "fsync", fsync)
    monkeypatch.setattr(filesystem.os, "link", link)
    monkeypatch.setattr(filesystem.os, "symlink", symlink)
    return steps


def one_part(data: bytes, *headers: tuple[str, str]) -> list[Any]:
    return [PartStarted(headers), PartData(data[:1000]), PartData(data[1000:]), PartEnded()]


@pytest_twisted.ensureDeferred
async def test_a_small_valid_part_is_finished_and_committed_in_one_job(
    storage: FilesystemStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decided as it ends: one writer job stages, syncs, links and syncs its
    directories, in that order, before the outcome says Stored."""
    jobs = count_jobs(storage, monkeypatch)
    steps = record_steps(monkeypatch)
    ingest = ingest_on(storage)
    data = read(CT)
    ingest.handle(one_part(data))
    result = await ingest.close()
    (outcome,) = result.outcomes
    assert isinstance(outcome, Stored)
    final = storage.instance_path(outcome.instance)
    assert final.read_bytes() == data
    assert outcome.sha256 == hashlib.sha256(data).hexdigest()
    assert os.getxattr(final, staging.DIGEST_XATTR) == hashlib.sha256(data).digest()
    assert len(jobs) == 1
    kinds = [step.split(" ", 1)[0] for step in steps]
    assert kinds[:3] == ["fsync", "symlink", "link"]
    assert ".staging" in steps[0]
    synced_after_link = {step.split(" ", 1)[1] for step in steps[3:] if step.startswith("fsync")}
    assert {str(storage.index), str(final.parent)} <= synced_after_link
    assert staged(storage) == []


@pytest_twisted.ensureDeferred
async def test_a_part_with_a_digest_claim_is_committed_after_its_digest_is_checked(
    storage: FilesystemStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim needs the writer's digest before commit: two jobs, and a wrong
    claim leaves nothing linked."""
    import base64

    data = read(CT)
    good = base64.b64encode(hashlib.sha256(data).digest()).decode()
    jobs = count_jobs(storage, monkeypatch)
    ingest = ingest_on(storage)
    ingest.handle(one_part(data, ("content-digest", f"sha-256=:{good}:")))
    (outcome,) = (await ingest.close()).outcomes
    assert isinstance(outcome, Stored)
    assert len(jobs) == 2
    storage.instance_path(outcome.instance).unlink()
    (storage.index / outcome.instance.sop_instance_uid).unlink()

    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    ingest = ingest_on(storage)
    ingest.handle(one_part(data, ("content-digest", f"sha-256=:{wrong}:")))
    (outcome,) = (await ingest.close()).outcomes
    assert isinstance(outcome, Failed) and outcome.reason is FailureReason.CANNOT_UNDERSTAND
    assert list(storage.root.glob("*/*/*.dcm")) == []
    assert list(storage.index.iterdir()) == []
    assert staged(storage) == []


@pytest_twisted.ensureDeferred
async def test_a_failed_sync_of_a_part_decided_as_it_ends_links_nothing(
    storage: FilesystemStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's fsync fails in the one job: no link, no index entry, the staged
    file removed, and the part fails 0x0110."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if ".staging" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(staging.os, "fsync", fsync)
    ingest = ingest_on(storage)
    ingest.handle(one_part(read(CT)))
    (outcome,) = (await ingest.close()).outcomes
    assert isinstance(outcome, Failed) and outcome.reason is FailureReason.PROCESSING_FAILURE
    assert list(storage.root.glob("*/*/*.dcm")) == []
    assert list(storage.index.iterdir()) == []
    assert staged(storage) == []
