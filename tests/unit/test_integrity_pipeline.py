"""BodyPipeline and Ingest with digests and a gzip body, over MemoryStorage (no sockets)."""

from __future__ import annotations

import base64
import gzip
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Cooperator

from tests.dicom_files import CT, MR, read, uids
from tests.fakes import RecordingProducer
from tests.helpers import build_multipart, multipart_content_type
from twisted_stow.core.admission import BodyLimits
from twisted_stow.core.contentcoding import BodyDecoder
from twisted_stow.core.digests import content_digests
from twisted_stow.core.errors import BodyTooLarge
from twisted_stow.core.mediatype import reader_for
from twisted_stow.core.multipart import PartData, PartEnded, PartStarted
from twisted_stow.core.outcomes import Failed, Stored
from twisted_stow.core.policy import IngestPolicy
from twisted_stow.core.validation import DEFAULT_POLICY
from twisted_stow.ingest import Ingest
from twisted_stow.storage.memory import MemoryStorage
from twisted_stow.upload import DECODED_BYTES_PER_READ, BodyPipeline, ReadGate

BOUNDARY = "pipeline-boundary"


def result(d: Deferred[Any]) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


class Steps:
    """A cooperator run by hand: ``run()`` takes every step now queued."""

    def __init__(self) -> None:
        self.work: list[Callable[[], None]] = []
        self.cooperator = Cooperator(
            scheduler=self.work.append, terminationPredicateFactory=lambda: lambda: True
        )

    def cooperate(self, iterator: Iterator[Any]) -> Any:
        return self.cooperator.cooperate(iterator)

    def run(self) -> int:
        turns = 0
        while self.work:
            self.work.pop(0)()
            turns += 1
        return turns


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def test_a_part_digest_mismatch_names_the_digest_and_stores_nothing() -> None:
    """Content-Digest sha-256 of other bytes: Failed 0xC000 whose detail names the digest."""
    storage = MemoryStorage()
    ingest = Ingest(storage, IngestPolicy(DEFAULT_POLICY), RecordingProducer())
    claimed = f"sha-256=:{b64(hashlib.sha256(b'other').digest())}:"
    ingest.handle([PartStarted((("content-digest", claimed),)), PartData(read(CT)), PartEnded()])
    (outcome,) = result(ingest.close()).outcomes
    assert isinstance(outcome, Failed) and outcome.reason == 0xC000
    assert outcome.detail.startswith("Content-Digest sha-256 mismatch")
    assert outcome.sop_instance_uid == uids(CT)[1]
    assert storage.instances == []


def test_a_stored_outcome_carries_hashlibs_sha256() -> None:
    """Stored.sha256 is the hex SHA-256 of the part's bytes (and the writer's digest)."""
    storage = MemoryStorage()
    ingest = Ingest(storage, IngestPolicy(DEFAULT_POLICY), RecordingProducer())
    data = read(MR)
    ingest.handle([PartStarted(()), PartData(data[:10]), PartData(data[10:]), PartEnded()])
    (outcome,) = result(ingest.close()).outcomes
    assert isinstance(outcome, Stored)
    assert outcome.sha256 == hashlib.sha256(data).hexdigest()
    assert storage.writers[0].sha256 == hashlib.sha256(data).digest()


def test_a_gzip_bomb_is_inflated_within_the_backpressure_budget() -> None:
    """Per socket read at most DECODED_BYTES_PER_READ is handed on; the rest waits, paused."""
    body = build_multipart([read(CT) + bytes(64 * 1024 * 1024)], BOUNDARY)
    encoded = gzip.compress(body, compresslevel=9)
    storage = MemoryStorage(held=True, keep_data=False)
    producer = RecordingProducer()
    gate = ReadGate(producer)
    steps = Steps()
    ingest = Ingest(storage, IngestPolicy(DEFAULT_POLICY), gate, cooperate=steps.cooperate)
    reader = reader_for(multipart_content_type(BOUNDARY))
    pipeline = BodyPipeline(
        reader,
        ingest,
        BodyLimits(),
        decoder=BodyDecoder("gzip"),
        gate=gate,
        cooperate=steps.cooperate,
    )
    pipeline.feed(encoded)  # one "socket read" holding the whole bomb
    assert pipeline.decoded_bytes <= DECODED_BYTES_PER_READ
    assert producer.calls == ["pause"]
    while pipeline.decoded_bytes < len(body):
        before = pipeline.decoded_bytes
        steps.run()  # stops while storage is behind: nothing more is inflated
        assert ingest.flow.in_flight_bytes <= 9 * 1024 * 1024
        storage.release_all()
        steps.run()
        assert pipeline.decoded_bytes > before
    storage.release_all()
    steps.run()
    assert producer.calls[-1] == "resume"
    outcomes = result(pipeline.close()).outcomes
    assert [type(o) for o in outcomes] == [Stored]


@pytest.mark.parametrize("body_in", [True, False], ids=["body-in", "body-arriving"])
def test_a_limit_met_inflating_behind_the_socket_fails_the_part_in_flight(body_in: bool) -> None:
    """The whole bomb came in one read; the limit is met on the cooperator.

    Either way the part in flight is dropped (its writer aborted), the part
    before it kept, and the outcomes carry the limit.  While the body still
    arrives on_limit (the request's refusal mid-body) is called with it; once
    close() waits (the last byte is in) it is not: the route answers from the
    outcomes, and a refusal too would be a second response.
    """
    body = build_multipart([read(MR), read(CT) + bytes(64 * 1024 * 1024)], BOUNDARY)
    storage = MemoryStorage()
    gate = ReadGate(RecordingProducer())
    steps = Steps()
    ingest = Ingest(storage, IngestPolicy(DEFAULT_POLICY), gate, cooperate=steps.cooperate)
    pipeline = BodyPipeline(
        reader_for(multipart_content_type(BOUNDARY)),
        ingest,
        BodyLimits(max_body_bytes=16 * 1024 * 1024),
        decoder=BodyDecoder("gzip"),
        gate=gate,
        cooperate=steps.cooperate,
    )
    limits: list[Exception] = []
    pipeline.on_limit = limits.append
    pipeline.feed(gzip.compress(body, compresslevel=9))
    if body_in:
        closed = pipeline.close()  # the last byte is in; inflating is still behind
        steps.run()
    else:
        steps.run()  # the limit is met before the last byte
        closed = pipeline.close()
    outcome = result(closed)
    assert limits == ([] if body_in else [outcome.request_error])
    assert isinstance(outcome.request_error, BodyTooLarge)
    assert "decoded body is larger" in outcome.request_error.detail
    stored, failed = outcome.outcomes
    assert isinstance(stored, Stored) and stored.instance.sop_instance_uid == uids(MR)[1]
    assert isinstance(failed, Failed) and failed.sop_instance_uid is None
    mr_writer, ct_writer = storage.writers
    assert ct_writer.aborted and not mr_writer.aborted
    assert [i.sop_instance_uid for i in storage.instances] == [uids(MR)[1]]


def test_held_commits_fail_together_on_a_body_digest_mismatch() -> None:
    """hold_commits: no part is committed before the body digest; a mismatch fails each."""
    body = build_multipart([read(CT), read(MR)], BOUNDARY)
    storage = MemoryStorage()
    ingest = Ingest(storage, IngestPolicy(DEFAULT_POLICY), RecordingProducer())
    claims = content_digests([f"sha-256=:{b64(hashlib.sha256(b'other').digest())}:"])
    reader = reader_for(multipart_content_type(BOUNDARY))
    pipeline = BodyPipeline(reader, ingest, BodyLimits(), body_digests=claims, hold_commits=True)
    pipeline.feed(body)
    assert storage.instances == []  # both parts staged and judged, none committed
    assert ingest.flow.pending_parts == 0  # held parts do not block reading
    outcomes = result(pipeline.close()).outcomes
    assert [o.reason for o in outcomes if isinstance(o, Failed)] == [0xC000, 0xC000]
    assert storage.instances == []
