"""MemoryStorage: a real IStorage with the filesystem's duplicate rules and held writes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from tests.attacks import item_bomb
from tests.dicom_files import CT, read, uids
from tests.fakes import RecordingProducer
from twisted_stow.core.dicomheader import MAX_HEADER_ELEMENTS
from twisted_stow.core.multipart import PartData, PartEnded, PartStarted
from twisted_stow.core.outcomes import Failed, InstanceRef, Stored
from twisted_stow.core.policy import CommitResult, IngestPolicy
from twisted_stow.core.validation import DEFAULT_POLICY
from twisted_stow.ingest import CAPTURE_STEPS_PER_SLICE, Ingest
from twisted_stow.interfaces import IPartWriter, IStorage
from twisted_stow.storage.memory import MemoryPartWriter, MemoryStorage

INSTANCE = InstanceRef("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4.5.6", "1.2.3", "1.2.3.4")
ELSEWHERE = InstanceRef(INSTANCE.sop_class_uid, INSTANCE.sop_instance_uid, "1.2.9", "1.2.9.1")


def result(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has already fired (fails the test if not)."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


def finished(storage: MemoryStorage, data: bytes) -> MemoryPartWriter:
    """A writer that has received ``data`` in two writes and finished."""
    writer = storage.open_writer()
    writer.write(data[:3])
    writer.write(data[3:])
    assert result(writer.finish()) == len(data)
    return writer


def store(storage: MemoryStorage, data: bytes, instance: InstanceRef, overwrite: bool) -> Any:
    """Write, finish and commit ``data`` as ``instance``; the CommitResult."""
    return result(finished(storage, data).commit(instance, overwrite=overwrite))


def test_provides_interfaces() -> None:
    """MemoryStorage and its writers implement IStorage and IPartWriter."""
    storage = MemoryStorage()
    verifyObject(IStorage, storage)
    verifyObject(IPartWriter, storage.open_writer())


def test_start_and_stop() -> None:
    """start() and stop() mark the storage as serving or not."""
    storage = MemoryStorage()
    storage.start()
    assert storage.started
    storage.stop()
    assert not storage.started


def test_commit_stores_the_bytes_under_the_sop_instance_uid() -> None:
    """Committed bytes can be looked up by SOP Instance UID; nothing is listed before commit."""
    storage = MemoryStorage()
    writer = finished(storage, b"payload bytes")
    assert storage.lookup(INSTANCE.sop_instance_uid) is None
    assert result(writer.commit(INSTANCE, overwrite=False)) is CommitResult.STORED
    stored = storage.lookup(INSTANCE.sop_instance_uid)
    assert stored is not None
    assert (stored.instance, stored.data, stored.size_bytes) == (INSTANCE, b"payload bytes", 13)
    assert storage.instances == [INSTANCE]


@pytest.mark.parametrize(
    ("again", "where", "overwrite", "expected", "kept"),
    [
        (b"original", INSTANCE, False, CommitResult.IDENTICAL_DUPLICATE, b"original"),
        (b"different", INSTANCE, False, CommitResult.CONFLICTING_DUPLICATE, b"original"),
        (b"different", INSTANCE, True, CommitResult.OVERWRITTEN, b"different"),
        (b"other study", ELSEWHERE, False, CommitResult.CONFLICTING_DUPLICATE, b"original"),
        (b"other study", ELSEWHERE, True, CommitResult.OVERWRITTEN, b"other study"),
    ],
)
def test_duplicates_follow_the_filesystem_rules(
    again: bytes, where: InstanceRef, overwrite: bool, expected: CommitResult, kept: bytes
) -> None:
    """Same UID: identical bytes are a retry; other bytes conflict or overwrite, across studies."""
    storage = MemoryStorage()
    assert store(storage, b"original", INSTANCE, False) is CommitResult.STORED
    assert store(storage, again, where, overwrite) is expected
    stored = storage.lookup(INSTANCE.sop_instance_uid)
    assert stored is not None and stored.data == kept
    assert len(storage.instances) == 1


def test_held_writes_complete_only_when_released_in_order() -> None:
    """Held storage: each write's Deferred fires once all its bytes are released, oldest first."""
    storage = MemoryStorage(held=True)
    writer = storage.open_writer()
    first, second = writer.write(b"abcd"), writer.write(b"efgh")
    finish = writer.finish()
    assert (first.called, second.called, finish.called) == (False, False, False)
    writer.release(6)
    assert (first.called, second.called) == (True, False)
    assert writer.held == 2
    storage.release_all()
    assert second.called and result(finish) == 8
    assert writer.data == b"abcdefgh"


def test_abort_drops_held_bytes_and_is_idempotent() -> None:
    """abort() completes every held write, lists nothing, and can be called again."""
    storage = MemoryStorage(held=True)
    writer = storage.open_writer()
    pending = writer.write(b"held")
    assert result(writer.abort()) is None
    assert pending.called and writer.held == 0 and writer.aborted
    assert result(writer.abort()) is None
    assert storage.instances == []
    with pytest.raises(RuntimeError):
        writer.write(b"more")
    assert isinstance(result(writer.commit(INSTANCE, overwrite=False)).value, RuntimeError)


def test_without_kept_data_duplicates_compare_digests() -> None:
    """keep_data=False keeps a size and digest only, and still tells identical from other bytes."""
    storage = MemoryStorage(keep_data=False)
    assert store(storage, b"original", INSTANCE, False) is CommitResult.STORED
    stored = storage.lookup(INSTANCE.sop_instance_uid)
    assert stored is not None and stored.data is None and stored.size_bytes == 8
    assert store(storage, b"original", INSTANCE, False) is CommitResult.IDENTICAL_DUPLICATE
    assert store(storage, b"Original", INSTANCE, False) is CommitResult.CONFLICTING_DUPLICATE


def test_ingest_stores_a_real_instance_in_memory() -> None:
    """Ingest over MemoryStorage: a real CT part ends as Stored, its bytes kept exactly."""
    storage = MemoryStorage()
    producer = RecordingProducer()
    ingest = Ingest(storage, IngestPolicy(DEFAULT_POLICY), producer)
    data = read(CT)
    ingest.handle([PartStarted(()), PartData(data[:1000]), PartData(data[1000:]), PartEnded()])
    (outcome,) = result(ingest.close()).outcomes
    assert isinstance(outcome, Stored)
    stored = storage.lookup(uids(CT)[1])
    assert stored is not None and stored.data == data
    assert ingest.flow.in_flight_bytes == 0 and ingest.flow.pending_parts == 0


def test_ingest_counts_held_bytes_in_flight_and_pauses() -> None:
    """Ingest owns the accounting: held writes stay in flight, pause the producer, then resume."""
    storage = MemoryStorage(held=True)
    producer = RecordingProducer()
    ingest = Ingest(storage, IngestPolicy(DEFAULT_POLICY), producer)
    ingest.handle([PartStarted(())] + [PartData(bytes(1024 * 1024))] * 9)
    assert ingest.flow.in_flight_bytes == 9 * 1024 * 1024
    assert producer.calls == ["pause"]
    storage.release_all()
    assert ingest.flow.in_flight_bytes == 0
    assert producer.calls == ["pause", "resume"]


def test_unparseable_part_content_type_is_0xc000() -> None:
    """A part Content-Type the media-type parser refuses is the same 0xC000 as a non-DICOM one."""
    storage = MemoryStorage()
    ingest = Ingest(storage, IngestPolicy(DEFAULT_POLICY), RecordingProducer())
    for content_type in ("application/dicom; ;=x", "text/plain"):
        ingest.handle(
            [PartStarted((("content-type", content_type),)), PartData(read(CT)), PartEnded()]
        )
    first, second = result(ingest.close()).outcomes
    assert first.reason == second.reason == 0xC000
    assert "is not application/dicom" in first.detail
    assert storage.writers == []


class ManualCooperator:
    """Collects the iterators Ingest hands to its cooperator; the test runs them."""

    def __init__(self) -> None:
        self.tasks: list[Iterator[None]] = []

    def __call__(self, work: Iterator[None]) -> Any:
        self.tasks.append(work)
        return object()

    def run_slices(self) -> int:
        slices = 0
        for task in self.tasks:
            for _ in task:
                slices += 1
        self.tasks.clear()
        return slices


def test_a_long_header_walk_continues_in_slices_with_the_request_paused() -> None:
    """A bomb part: walked past this read's steps in cooperator slices, the producer paused
    until they are done; the honest CT after it in the same read is judged in order."""
    cooperator = ManualCooperator()
    producer = RecordingProducer()
    ingest = Ingest(MemoryStorage(), IngestPolicy(DEFAULT_POLICY), producer, cooperate=cooperator)
    bomb_part = [PartStarted(()), PartData(item_bomb()), PartEnded()]
    ingest.handle([*bomb_part, PartStarted(()), PartData(read(CT)), PartEnded()])
    closed = ingest.close()
    assert producer.calls == ["pause"]
    assert not closed.called  # the bomb's walk is behind: nothing judged yet
    slices = cooperator.run_slices()
    assert slices > MAX_HEADER_ELEMENTS // CAPTURE_STEPS_PER_SLICE // 2
    assert producer.calls == ["pause", "resume"]
    bomb, ct = result(closed).outcomes
    assert isinstance(bomb, Failed) and bomb.reason == 0xC000
    assert f"more than {MAX_HEADER_ELEMENTS} elements" in bomb.detail
    assert isinstance(ct, Stored)


def test_empty_and_skipped_parts_pass_through_the_part_count() -> None:
    """Empty and non-DICOM parts leave the flow's part count where it was, with their outcome."""
    ingest = Ingest(MemoryStorage(), IngestPolicy(DEFAULT_POLICY), RecordingProducer())
    ingest.handle([PartStarted(()), PartEnded()] * 100)
    ingest.handle([PartStarted((("content-type", "text/plain"),)), PartData(b"x"), PartEnded()])
    outcomes = result(ingest.close()).outcomes
    assert len(outcomes) == 101 and ingest.flow.pending_parts == 0
