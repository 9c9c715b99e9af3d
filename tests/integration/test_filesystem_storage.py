"""FilesystemStorage on a real disk with its real worker threads."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import maybeDeferred
from zope.interface.verify import verifyObject

from tests.dicom_files import CT, read, uids
from twisted_stow.flow import BytesInFlight
from twisted_stow.ingest import Ingest, IngestPolicy
from twisted_stow.interfaces import IPartWriter, IStorage
from twisted_stow.multipart import PartData, PartEnded, PartStarted
from twisted_stow.outcomes import Failed, FailureReason, InstanceRef, Stored
from twisted_stow.storage import CommitResult, StorageFull, filesystem
from twisted_stow.storage.filesystem import BATCH_BYTES, FilesystemStorage
from twisted_stow.validation import DEFAULT_POLICY

INSTANCE = InstanceRef("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4.5.6", "1.2.3", "1.2.3.4")


class NoPause:
    """A producer for BytesInFlight that records pause/resume calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[FilesystemStorage]:
    from twisted.internet import reactor

    store = FilesystemStorage(tmp_path / "store", reactor)
    store.start()
    yield store
    store.stop()


@pytest.fixture
def flow() -> BytesInFlight:
    return BytesInFlight(NoPause())


def staged(store: FilesystemStorage) -> list[Path]:
    return list(store.staging.iterdir())


async def write_part(store: FilesystemStorage, flow: BytesInFlight, data: bytes, piece: int) -> Any:
    writer = store.open_writer(flow)
    for offset in range(0, len(data), piece):
        writer.write(data[offset : offset + piece])
    size = await writer.finish()
    assert size == len(data)
    return writer


def test_provides_interfaces(storage: FilesystemStorage, flow: BytesInFlight) -> None:
    """FilesystemStorage and its writers implement IStorage and IPartWriter."""
    verifyObject(IStorage, storage)
    writer = storage.open_writer(flow)
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


@pytest_twisted.ensureDeferred
async def test_file_and_every_changed_directory_are_synced_before_commit_returns(
    storage: FilesystemStorage, flow: BytesInFlight, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync the file before it gets its final name, then every directory that changed."""
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
    assert events[0] == ("fsync", staged_name)
    assert events[1] == ("link", str(final))
    synced_dirs = {path for kind, path in events[2:] if kind == "fsync"}
    # The root gained the study directory, the study directory the series
    # directory, the series directory the file, the index its entry.
    assert synced_dirs == {str(storage.root), str(study_dir), str(series_dir), str(storage.index)}


@pytest_twisted.ensureDeferred
async def test_second_instance_syncs_only_its_series_directory(
    storage: FilesystemStorage, flow: BytesInFlight, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Directories that did not change are not synced again."""
    first = await write_part(storage, flow, b"one", 10)
    await first.commit(INSTANCE, overwrite=False)
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        filesystem.os,
        "fsync",
        lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))[1],
    )
    other = InstanceRef(INSTANCE.sop_class_uid, "1.2.3.4.5.7", "1.2.3", "1.2.3.4")
    second = await write_part(storage, flow, b"two", 10)
    await second.commit(other, overwrite=False)
    assert synced[1:] == [str(storage.instance_path(other).parent), str(storage.index)]


@pytest_twisted.ensureDeferred
async def test_abort_mid_part_leaves_nothing(
    storage: FilesystemStorage, flow: BytesInFlight
) -> None:
    """Abort after some batches: the staging file is removed, the flow released."""
    writer = storage.open_writer(flow)
    writer.write(os.urandom(2 * BATCH_BYTES))
    writer.write(b"tail not yet flushed")
    writer.abort()
    writer.abort()
    # A barrier: an operation queued behind the discard on the same pool.
    await maybeDeferred(lambda: None)
    for _ in range(100):
        if not staged(storage) and flow.in_flight_bytes == 0:
            break
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.01, lambda: None)
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
    writer = storage.open_writer(flow)
    writer.write(os.urandom(BATCH_BYTES + 1))
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
    from twisted.internet.threads import deferToThread

    ingest = Ingest(storage, IngestPolicy(DEFAULT_POLICY), BytesInFlight(NoPause()), deferToThread)
    ingest.handle(
        [PartStarted((("content-type", "application/dicom"),)), PartData(read(CT)), PartEnded()]
    )
    result = await ingest.close()
    assert len(result.outcomes) == 1
    outcome = result.outcomes[0]
    assert isinstance(outcome, Failed) and outcome.reason is reason
    assert reactor.running
    for _ in range(100):
        if not staged(storage):
            break
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.01, lambda: None)
    assert staged(storage) == []


@pytest_twisted.ensureDeferred
async def test_ingest_stores_a_real_instance(storage: FilesystemStorage) -> None:
    """Events of one real part end as Stored with the file in place."""
    from twisted.internet.threads import deferToThread

    ingest = Ingest(storage, IngestPolicy(DEFAULT_POLICY), BytesInFlight(NoPause()), deferToThread)
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
    dead = store.staging / "999999999-deadbeef.part"
    alive = store.staging / f"{os.getpid()}-cafe.part"
    dead.write_bytes(b"x")
    alive.write_bytes(b"y")
    store.start()
    try:
        assert not dead.exists()
        assert alive.exists()
    finally:
        store.stop()
