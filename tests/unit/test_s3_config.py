"""Issue 13: the s3:// options, the early-name hook in Ingest, and the S3 backend's interfaces."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.attacks import item_bomb
from tests.dicom_files import CT, read, uids
from tests.fakes import RecordingProducer
from twisted_stow.core.multipart import PartData, PartEnded, PartStarted
from twisted_stow.core.outcomes import InstanceRef
from twisted_stow.core.policy import IngestPolicy
from twisted_stow.core.validation import DEFAULT_POLICY
from twisted_stow.ingest import CAPTURE_STEPS_PER_READ, Ingest
from twisted_stow.interfaces import INamedPartWriter, IPartWriter, IStorage
from twisted_stow.storage.memory import MemoryPartWriter, MemoryStorage
from twisted_stow.storage.s3 import S3Storage, part_digest
from twisted_stow.storage.s3client import ChunksProducer, S3Client, S3Location, signed_headers
from twisted_stow.tap import Options


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_s3_storage_option_sets_bucket_prefix_endpoint_region() -> None:
    """``--storage s3://B/P/Q`` with endpoint and region lands in ``config.s3``."""
    config = parse(
        "--storage=s3://my-bucket/site/one/",
        "--s3-endpoint=http://127.0.0.1:8333/",
        "--s3-region=eu-west-1",
    ).config
    assert config.s3 is not None
    assert (config.s3.bucket, config.s3.prefix) == ("my-bucket", "site/one/")
    assert config.s3.endpoint == "http://127.0.0.1:8333"
    assert config.s3.region == "eu-west-1"
    assert config.storage_root == "s3://my-bucket/site/one"


def test_s3_defaults_and_local_spool() -> None:
    """No prefix, AWS endpoint, us-east-1; the workflow spool is a local directory."""
    config = parse("--storage=s3://bucket").config
    assert config.s3 is not None
    assert (config.s3.prefix, config.s3.endpoint, config.s3.region) == ("", None, "us-east-1")
    assert config.workflow_spool_dir == Path("stow-workflow-spool")
    assert parse("--storage=dir").config.s3 is None


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--storage=s3://A_B"], "--storage"),
        (["--storage=s3://ab"], "--storage"),
        (["--storage=s3://bucket/.sop-index"], "--storage"),
        (["--storage=s3://bucket", "--s3-endpoint=ftp://h"], "--s3-endpoint"),
        (["--storage=s3://bucket", "--s3-endpoint=http://h/path"], "--s3-endpoint"),
        (["--storage=s3://bucket", "--s3-region=EU WEST"], "--s3-region"),
        (["--storage=dir", "--s3-endpoint=http://h"], "--s3-endpoint"),
    ],
)
def test_bad_s3_values_are_usage_errors(argv: list[str], names: str) -> None:
    """A bad bucket, prefix, endpoint or region is a usage error naming the option."""
    with pytest.raises(usage.UsageError, match=names):
        parse(*argv)


def test_signing_covers_the_given_payload_hash() -> None:
    """The signer signs the caller's payload SHA-256 as is (no second hash of the body)."""
    from botocore.credentials import Credentials

    credentials = Credentials("AK", "SK")
    url = "http://127.0.0.1:1/b/k"
    one = signed_headers(credentials, "us-east-1", "PUT", url, {}, "ab" * 32)
    two = signed_headers(credentials, "us-east-1", "PUT", url, {}, "cd" * 32)
    assert one["X-Amz-Content-SHA256"] == "ab" * 32
    assert one["Authorization"] != two["Authorization"]


def test_a_part_digest_covers_its_chunks_as_they_are() -> None:
    """A part's SHA-256 is taken over its chunks, bytes and memoryviews, never joined."""
    import hashlib

    assert part_digest([b"a", memoryview(b"bc")]) == hashlib.sha256(b"abc").digest()
    assert part_digest([]) == hashlib.sha256(b"").digest()


class _Consumer:
    """A transport that pauses its producer after every write, as a full socket buffer does."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer: ChunksProducer | None = None

    def write(self, data: bytes) -> None:
        assert type(data) is bytes  # Twisted's transports take bytes only
        self.written.append(data)
        assert self.producer is not None
        self.producer.pauseProducing()


def test_a_part_is_sent_chunk_by_chunk_while_the_transport_wants_more() -> None:
    """The body producer writes one chunk per resume, never the joined part."""
    data = bytes(range(256)) * 40
    chunks: list[bytes | memoryview] = [data[:1000], memoryview(data)[1000:5000], data[5000:]]
    producer = ChunksProducer(chunks, len(data))
    consumer = _Consumer()
    consumer.producer = producer
    assert producer.length == len(data)
    done = producer.startProducing(consumer)
    fired: list[object] = []
    done.addCallback(fired.append)
    assert len(consumer.written) == 1 and not fired
    producer.resumeProducing()
    producer.resumeProducing()
    assert b"".join(consumer.written) == data and fired == [None]
    assert [len(w) for w in consumer.written] == [len(c) for c in chunks]  # never joined
    # The HTTP client keeps a pooled connection's last request: the part must not stay with it.
    producer.release()
    assert producer.held_chunks == 0


def test_a_stopped_part_body_is_sent_again_from_its_first_chunk() -> None:
    """A connection lost mid-body stops the producer; a retry starts it again and
    gets every byte, from the first chunk."""
    data = bytes(range(256)) * 40
    chunks: list[bytes | memoryview] = [data[:1000], memoryview(data)[1000:5000], data[5000:]]
    producer = ChunksProducer(chunks, len(data))
    first = _Consumer()
    first.producer = producer
    lost: list[object] = []
    producer.startProducing(first).addBoth(lost.append)
    producer.stopProducing()  # the connection went away after one chunk
    producer.resumeProducing()
    assert len(first.written) == 1 and lost == []  # no writes, no firing after stop
    again = _Consumer()
    again.producer = producer
    fired: list[object] = []
    producer.startProducing(again).addCallback(fired.append)
    producer.resumeProducing()
    producer.resumeProducing()
    assert b"".join(again.written) == data and fired == [None]


def test_only_a_failure_before_any_answer_is_retried() -> None:
    """Retried: not sent, failed while sending, or closed before the status line.
    Not: a timeout or cancel, a refused connection, an answer cut short, anything else."""
    from twisted.internet.defer import CancelledError
    from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
    from twisted.python.failure import Failure
    from twisted.web._newclient import (
        RequestNotSent,
        RequestTransmissionFailed,
        ResponseFailed,
        ResponseNeverReceived,
    )

    from twisted_stow.storage.s3client import retryable

    lost = [Failure(ConnectionLost())]
    assert retryable(RequestNotSent())
    assert retryable(RequestTransmissionFailed(lost))
    assert retryable(ResponseNeverReceived([Failure(ConnectionDone())]))
    assert not retryable(ResponseNeverReceived([Failure(CancelledError())]))
    assert not retryable(RequestTransmissionFailed([*lost, Failure(CancelledError())]))
    assert not retryable(ResponseFailed(lost))  # an answer had begun
    assert not retryable(ConnectionRefusedError())
    assert not retryable(TimeoutError())
    assert not retryable(ValueError())


def test_s3_buffers_are_sized_from_the_upload_window() -> None:
    """A part is cut at half a window (S3's 5 MiB at least); a window under 10 MiB is refused."""
    from botocore.credentials import Credentials

    reactor = MemoryReactorClock()
    location = S3Location("bucket", "p/", "http://127.0.0.1:1", "us-east-1")
    client = S3Client(location, Credentials("AK", "SK"), reactor)
    mib = 1024 * 1024
    assert S3Storage(client, reactor).cut_bytes == 8 * mib
    small = S3Storage(client, reactor, window_bytes=10 * mib)
    assert small.cut_bytes == 5 * mib and small.unnamed_limit_bytes == 10 * mib
    with pytest.raises(ValueError, match="window"):
        S3Storage(client, reactor, window_bytes=10 * mib - 1)


def test_s3_storage_provides_interfaces() -> None:
    """S3Storage and its writers implement IStorage, IPartWriter and INamedPartWriter."""
    from botocore.credentials import Credentials

    reactor = MemoryReactorClock()
    location = S3Location("bucket", "p/", "http://127.0.0.1:1", "us-east-1")
    storage = S3Storage(S3Client(location, Credentials("AK", "SK"), reactor), reactor)
    verifyObject(IStorage, storage)
    writer = storage.open_writer()
    verifyObject(IPartWriter, writer)
    verifyObject(INamedPartWriter, writer)


@implementer(INamedPartWriter)
class NamedMemoryWriter(MemoryPartWriter):
    """A memory writer that also records what ``named`` told it."""

    told: list[InstanceRef | None]

    def named(self, instance: InstanceRef | None) -> None:
        self.told.append(instance)


class NamedMemoryStorage(MemoryStorage):
    def open_writer(self) -> NamedMemoryWriter:
        writer = NamedMemoryWriter(self)
        writer.told = []
        self.writers.append(writer)
        return writer


def test_ingest_names_the_writer_while_the_part_streams() -> None:
    """A named writer learns its instance once the header is captured, before the part ends."""
    storage = NamedMemoryStorage()
    ingest = Ingest(storage, IngestPolicy(DEFAULT_POLICY), RecordingProducer())
    data = read(CT)
    ingest.handle([PartStarted([]), PartData(memoryview(data[:4096]))])
    (writer,) = storage.writers
    assert isinstance(writer, NamedMemoryWriter)
    assert [ref.sop_instance_uid for ref in writer.told if ref] == [uids(CT)[1]]
    ingest.handle([PartData(memoryview(data[4096:])), PartEnded()])
    assert len(writer.told) == 1


def test_a_named_part_is_validated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The verdict the writer was named with is the part's verdict at its end: its
    header is validated once, not again when the part ends; and it is stored."""
    import twisted_stow.ingest as ingest_module

    calls: list[object] = []
    validate = ingest_module.validate_header

    def counting(*args: Any) -> Any:
        calls.append(args)
        return validate(*args)

    monkeypatch.setattr(ingest_module, "validate_header", counting)
    storage = NamedMemoryStorage()
    ingest = Ingest(storage, IngestPolicy(DEFAULT_POLICY), RecordingProducer())
    data = read(CT)
    ingest.handle([PartStarted([]), PartData(memoryview(data)), PartEnded()])
    (outcome,) = [d.result for d in ingest._pending]  # memory storage: settled at once
    assert outcome.instance.sop_instance_uid == uids(CT)[1], outcome
    assert len(calls) == 1


def test_ingest_tells_none_for_a_part_it_will_not_store() -> None:
    """A header that fails validation tells the writer None (its bytes may be dropped)."""
    storage = NamedMemoryStorage()
    ingest = Ingest(storage, IngestPolicy(DEFAULT_POLICY), RecordingProducer())
    ingest.handle([PartStarted([]), PartData(memoryview(b"\0" * 128 + b"NOPE" + b"\0" * 64))])
    (writer,) = storage.writers
    assert isinstance(writer, NamedMemoryWriter)
    assert writer.told == [None]


def test_ingest_names_the_writer_once_a_walk_left_behind_catches_up() -> None:
    """A header walked in cooperator slices names its writer when the walk ends, once."""
    tasks: list[Iterator[None]] = []

    def cooperate(work: Iterator[None]) -> Any:
        tasks.append(work)
        return object()

    storage = NamedMemoryStorage()
    ingest = Ingest(storage, IngestPolicy(DEFAULT_POLICY), RecordingProducer(), cooperate=cooperate)
    # Explicit VR, so the walk meets Series Number (0020,0011) past the UIDs and ends.
    series_number = b"\x20\x00\x11\x00IS\x02\x001 "
    data = item_bomb(items=4 * CAPTURE_STEPS_PER_READ, deflate=False) + series_number
    ingest.handle([PartStarted(()), PartData(data)])
    (writer,) = storage.writers
    assert isinstance(writer, NamedMemoryWriter)
    assert writer.told == [] and len(tasks) == 1  # behind: not known yet
    for _ in tasks.pop():
        pass
    (told,) = writer.told
    sop_instance_uid = pydicom.dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID
    assert told is not None and told.sop_instance_uid == str(sop_instance_uid)
    ingest.handle([PartData(memoryview(b"\0" * 64)), PartEnded()])
    assert len(writer.told) == 1


def test_plain_writers_are_never_named() -> None:
    """The filesystem's and memory's writers do not provide the hook."""
    assert not INamedPartWriter.providedBy(MemoryStorage().open_writer())
