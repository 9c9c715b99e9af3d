"""The reader for a bare application/dicom body."""

from __future__ import annotations

import pytest

from twisted_stow.core.multipart import BodyEnded, PartData, PartEnded, PartStarted
from twisted_stow.core.singlepart import SINGLE_PART_HEADERS, BodyReader, SinglePartReader

STARTED = PartStarted((("content-type", "application/dicom"),))


def test_headers_are_those_of_a_dicom_part() -> None:
    """The one part carries Content-Type: application/dicom, like a multipart part."""
    assert SINGLE_PART_HEADERS == (("content-type", "application/dicom"),)


def test_whole_body() -> None:
    """One chunk gives PartStarted and PartData; close gives PartEnded and BodyEnded."""
    reader = SinglePartReader()
    assert reader.feed(b"DICM") == [STARTED, PartData(b"DICM")]
    assert reader.close() == [PartEnded(), BodyEnded()]


def test_chunks_are_passed_on_without_copy() -> None:
    """Each chunk is the PartData itself, and only the first one starts the part."""
    reader = SinglePartReader()
    first, second = b"a" * 1000, b"b" * 1000
    events = reader.feed(first) + reader.feed(b"") + reader.feed(second)
    assert events == [STARTED, PartData(first), PartData(second)]
    assert isinstance(events[1], PartData) and events[1].data is first
    assert reader.buffered_bytes == 0


def test_one_byte_at_a_time() -> None:
    """A body fed byte by byte gives one PartStarted and its bytes in order."""
    reader = SinglePartReader()
    events = [event for byte in b"xyz" for event in reader.feed(bytes([byte]))]
    assert events == [STARTED, PartData(b"x"), PartData(b"y"), PartData(b"z")]
    assert reader.close() == [PartEnded(), BodyEnded()]


def test_empty_body_yields_only_body_ended() -> None:
    """An empty body starts no part: close gives just BodyEnded."""
    reader = SinglePartReader()
    assert reader.feed(b"") == []
    assert reader.close() == [BodyEnded()]


def test_close_twice_and_feed_after_close() -> None:
    """A second close returns nothing; feeding after close is a caller bug."""
    reader = SinglePartReader()
    reader.feed(b"x")
    reader.close()
    assert reader.close() == []
    with pytest.raises(RuntimeError):
        reader.feed(b"y")


def test_satisfies_body_reader() -> None:
    """SinglePartReader fits the BodyReader protocol the request edge uses."""
    reader: BodyReader = SinglePartReader()
    assert reader.close() == [BodyEnded()]


def test_events_is_the_lazy_form_of_feed() -> None:
    """events() yields what feed() returns, and starts the part only once."""
    reader = SinglePartReader()
    first = reader.events(b"ab")
    assert next(first) == STARTED
    assert list(first) == [PartData(b"ab")]
    assert list(reader.events(b"cd")) == [PartData(b"cd")]
