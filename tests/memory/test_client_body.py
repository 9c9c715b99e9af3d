"""stow-upload's streaming body producer, driven step by step (no sockets)."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.internet.task import Cooperator
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface.verify import verifyObject

from tests.helpers import coalesce
from twisted_stow.client.body import FileUnreadable, MultipartFilesProducer, boundary
from twisted_stow.core.multipart import MultipartParser, PartData, PartEnded, PartStarted

PIECE = 1000


class Steps:
    """A Cooperator scheduler run by hand: each ``step`` runs one iteration."""

    def __init__(self) -> None:
        self.calls: list[Callable[[], None]] = []
        self.cooperator = Cooperator(
            scheduler=self.calls.append, terminationPredicateFactory=lambda: lambda: True
        )

    def step(self) -> bool:
        if not self.calls:
            return False
        self.calls.pop(0)()
        return True


class Consumer:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


def files(tmp_path: Path, sizes: list[int]) -> list[Path]:
    paths = []
    for index, size in enumerate(sizes):
        path = tmp_path / f"{index}.dcm"
        path.write_bytes(bytes([index + 1]) * size)
        paths.append(path)
    return paths


def test_provides_ibodyproducer_of_unknown_length(tmp_path: Path) -> None:
    """An IBodyProducer with UNKNOWN_LENGTH, so the Agent sends it chunked."""
    from twisted.web.iweb import UNKNOWN_LENGTH

    producer = MultipartFilesProducer(files(tmp_path, [1]), boundary())
    assert verifyObject(IBodyProducer, producer)
    assert producer.length is UNKNOWN_LENGTH


def test_body_parses_back_into_the_files(tmp_path: Path) -> None:
    """The body is multipart/related whose parts are the files' bytes, in order."""
    paths = files(tmp_path, [0, 1, 2500, 999])
    text = boundary()
    steps, consumer = Steps(), Consumer()
    done: list[object] = []
    producer = MultipartFilesProducer(paths, text, piece_bytes=PIECE, cooperator=steps.cooperator)
    producer.startProducing(consumer).addBoth(done.append)
    while steps.step():
        pass
    assert done == [None]
    parser = MultipartParser(text.encode())
    events = coalesce(parser.feed(b"".join(consumer.writes)) + parser.close())
    parts = [bytes(e.data) for e in events if isinstance(e, PartData)]
    starts = [e for e in events if isinstance(e, PartStarted)]
    assert len(starts) == len([e for e in events if isinstance(e, PartEnded)]) == 4
    assert all(dict(e.headers)["content-type"] == "application/dicom" for e in starts)
    nonempty = [p.read_bytes() for p in paths if p.stat().st_size]
    assert parts == nonempty


def test_reads_in_bounded_pieces_one_per_step(tmp_path: Path) -> None:
    """No write is larger than a piece; each step writes at most one piece of a file."""
    paths = files(tmp_path, [3500])
    steps, consumer = Steps(), Consumer()
    MultipartFilesProducer(
        paths, boundary(), piece_bytes=PIECE, cooperator=steps.cooperator
    ).startProducing(consumer)
    steps.step()
    assert max(len(w) for w in consumer.writes) <= PIECE
    assert sum(len(w) == PIECE for w in consumer.writes) == 1
    while steps.step():
        pass
    assert max(len(w) for w in consumer.writes) <= PIECE


def test_pause_stops_reading_until_resume(tmp_path: Path) -> None:
    """While paused nothing is written; resume continues where it stopped."""
    paths = files(tmp_path, [5000])
    steps, consumer = Steps(), Consumer()
    producer = MultipartFilesProducer(
        paths, boundary(), piece_bytes=PIECE, cooperator=steps.cooperator
    )
    producer.startProducing(consumer)
    steps.step()
    written = len(consumer.writes)
    producer.pauseProducing()
    producer.pauseProducing()  # twice: the transport and the Agent may both pause
    for _ in range(5):
        steps.step()
    assert len(consumer.writes) == written
    producer.resumeProducing()
    while steps.step():
        pass
    assert len(consumer.writes) > written
    assert consumer.writes[-1].endswith(b"--\r\n")


def test_stop_fails_the_deferred_and_closes_the_file(tmp_path: Path) -> None:
    """stopProducing ends the body (the Deferred fails) and no file stays open."""
    paths = files(tmp_path, [5000])
    steps, consumer = Steps(), Consumer()
    producer = MultipartFilesProducer(
        paths, boundary(), piece_bytes=PIECE, cooperator=steps.cooperator
    )
    results: list[object] = []
    producer.startProducing(consumer).addBoth(results.append)
    steps.step()
    producer.stopProducing()
    producer.stopProducing()  # idempotent
    assert len(results) == 1 and isinstance(results[0], Failure)
    assert producer._file is None


def test_vanished_file_fails_with_its_path(tmp_path: Path) -> None:
    """A file deleted after the scan fails the body with FileUnreadable naming it."""
    paths = files(tmp_path, [10, 10])
    paths[1].unlink()
    steps, consumer = Steps(), Consumer()
    results: list[Failure] = []
    MultipartFilesProducer(paths, boundary(), cooperator=steps.cooperator).startProducing(
        consumer
    ).addErrback(results.append)
    while steps.step():
        pass
    assert results and results[0].check(FileUnreadable)
    assert results[0].value.path == paths[1]


@pytest.mark.parametrize("count", [1, 50])
def test_boundaries_are_fresh(count: int) -> None:
    """Each body gets its own boundary (70 characters at most, RFC 2046)."""
    made = {boundary() for _ in range(count)}
    assert len(made) == count and all(len(b) <= 70 for b in made)


def test_gzip_sends_the_same_body_compressed(tmp_path: Path) -> None:
    """--gzip: one gzip stream of exactly the plain body is written; progress counts plain bytes."""
    paths = files(tmp_path, [5000, 3 * PIECE + 7])
    bodies: list[bytes] = []
    counted: list[int] = []
    for gzip_body in (False, True):
        steps, consumer = Steps(), Consumer()
        sent: list[int] = []
        producer = MultipartFilesProducer(
            paths,
            "b",
            piece_bytes=PIECE,
            cooperator=steps.cooperator,
            gzip=gzip_body,
            on_bytes=sent.append,
        )
        producer.startProducing(consumer)
        while steps.step():
            pass
        bodies.append(b"".join(consumer.writes))
        counted.append(sum(sent))
    plain, compressed = bodies
    assert gzip.decompress(compressed) == plain
    assert compressed[:2] == b"\x1f\x8b" and len(compressed) < len(plain)
    assert counted == [len(plain), len(plain)]
