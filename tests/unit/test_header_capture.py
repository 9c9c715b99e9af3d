"""HeaderCapture: the same verdict however a part is split, bounded in bytes, elements and depth."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from pathlib import Path

import pydicom.data
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_stow.core import dicomheader
from twisted_stow.core.dicomheader import (
    MAX_CAPTURED_VALUE_BYTES,
    MAX_HEADER_DEPTH,
    MAX_HEADER_ELEMENTS,
    DicomHeader,
    HeaderCapture,
    capture_header,
)
from twisted_stow.core.outcomes import Failed, FailureReason

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
FILES = ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm"]

EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.1"
STUDY = "1.2.826.0.1.3680043.8.498.2"
SERIES = "1.2.826.0.1.3680043.8.498.3"


def padded(uid: str) -> bytes:
    """A UI value NUL-padded to even length (PS3.5 §6.2)."""
    raw = uid.encode()
    return raw + b"\x00" * (len(raw) % 2)


def ui(tag: int, uid: str) -> bytes:
    """An Explicit VR Little Endian UI element."""
    value = padded(uid)
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, b"UI", len(value)) + value


def part(body: bytes, *, transfer_syntax: str = EXPLICIT) -> bytes:
    """Preamble, "DICM", a File Meta group with ``transfer_syntax``, then ``body`` verbatim."""
    return bytes(128) + b"DICM" + ui(0x00020010, transfer_syntax) + body


def deflated(body: bytes) -> bytes:
    """``body`` as the raw deflate stream of a deflated transfer syntax (PS3.5 §A.5)."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return part(deflater.compress(body) + deflater.flush(), transfer_syntax=DEFLATED)


def uids() -> bytes:
    """The four data set UIDs, in tag order."""
    return (
        ui(0x00080016, CT_IMAGE_STORAGE)
        + ui(0x00080018, SOP_INSTANCE)
        + ui(0x0020000D, STUDY)
        + ui(0x0020000E, SERIES)
    )


def sequence_header(tag: int) -> bytes:
    """An explicit VR SQ element header of undefined length."""
    return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, 0xFFFFFFFF)


EMPTY_ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, 0)
ITEM_UNDEFINED = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def fed(data: bytes, cuts: list[int]) -> DicomHeader | Failed:
    """The capture's result with ``data`` fed in pieces split at ``cuts``."""
    capture = HeaderCapture()
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        capture.feed(memoryview(data)[start:cut])
        start = cut
    return capture.result()


def reason(outcome: DicomHeader | Failed) -> str:
    """The detail of a CANNOT_UNDERSTAND ``outcome`` (fails if it is anything else)."""
    assert isinstance(outcome, Failed), outcome
    assert outcome.reason is FailureReason.CANNOT_UNDERSTAND
    return outcome.detail


@pytest.mark.parametrize("name", FILES)
def test_one_byte_at_a_time_is_the_same_as_whole(name: str) -> None:
    """Fed a byte at a time, a real file gives exactly the header it gives whole."""
    data = (TEST_FILES / name).read_bytes()
    capture = HeaderCapture()
    for index in range(len(data)):
        capture.feed(data[index : index + 1])
        if capture.done:
            break
    assert isinstance(capture.result(), DicomHeader)
    assert capture.result() == capture_header(data)


@pytest.mark.parametrize("name", FILES)
def test_held_bytes_counts_every_queued_view_while_the_walk_is_behind(name: str) -> None:
    """Fed 512-byte chunks with no steps, then walked a few steps at a time (deflated
    files included): ``held_bytes`` is always the copies plus every view still queued,
    and the walk ends with the header it gives whole."""
    data = (TEST_FILES / name).read_bytes()[: 64 * 1024]
    capture = HeaderCapture()

    def queued() -> int:
        return capture.buffered_bytes + sum(len(view) for view in capture._queue)

    for offset in range(0, len(data), 512):
        capture.feed(data[offset : offset + 512], max_steps=0)
        assert capture.held_bytes == queued()
    while capture.pending:
        capture.run(3)
        assert capture.held_bytes == queued()
    if capture.done:
        assert capture.held_bytes == 0
        assert capture.result() == capture_header(data)


@settings(max_examples=50, deadline=None)
@given(name=st.sampled_from(FILES), cuts=st.lists(st.integers(0, 4096), max_size=20))
def test_random_splits_give_the_same_result(name: str, cuts: list[int]) -> None:
    """However a real file is split, the captured header is the same."""
    data = (TEST_FILES / name).read_bytes()
    assert fed(data, cuts) == capture_header(data)


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=600),
    deflate=st.booleans(),
    cuts=st.lists(st.integers(0, 800), max_size=8),
)
def test_arbitrary_bytes_never_raise_and_ignore_splits(
    body: bytes, deflate: bool, cuts: list[int]
) -> None:
    """Arbitrary data sets (deflated or not) never raise, and splits never change the result."""
    data = deflated(body) if deflate else part(body)
    whole = capture_header(data)
    assert isinstance(whole, DicomHeader | Failed)
    assert fed(data, cuts) == whole


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_parts_never_raise(data: bytes) -> None:
    """Any bytes at all give a header or a CANNOT_UNDERSTAND failure, never an exception."""
    outcome = capture_header(data)
    if isinstance(outcome, Failed):
        assert outcome.reason is FailureReason.CANNOT_UNDERSTAND


def test_done_as_soon_as_the_element_past_the_series_uid_arrives() -> None:
    """The UIDs are known before the rest of the part (Pixel Data) has arrived."""
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 1 << 30)
    capture = HeaderCapture()
    capture.feed(part(uids()))
    assert not capture.done
    capture.feed(pixel_header)
    assert capture.done
    result = capture.result()
    assert isinstance(result, DicomHeader) and result.series == SERIES
    capture.feed(b"\xff" * 1000)  # the Pixel Data: ignored
    assert capture.result() is result


def test_a_refused_header_is_done_at_once() -> None:
    """A part without "DICM" is refused after its first 132 bytes."""
    capture = HeaderCapture()
    capture.feed(bytes(132))
    assert capture.done
    assert "DICM" in reason(capture.result())


def test_issue_17_deflated_item_bomb_is_refused_quickly() -> None:
    """~12 KB deflated holding ~950,000 empty items: refused by the element limit, small.

    "Quickly" as work, not wall time: the walk takes about ``MAX_HEADER_ELEMENTS``
    steps (each O(1)), not one per item of the bomb.
    """
    items = EMPTY_ITEM * 950_000
    data = deflated(sequence_header(0x00081140) + items + SEQUENCE_END + uids())
    assert len(data) < 16 * 1024
    assert len(items) < dicomheader.MAX_HEADER_READ_BYTES  # under the byte budget
    tracemalloc.start()
    steps = 0
    try:
        capture = HeaderCapture()
        for offset in range(0, len(data), 1024):
            steps += capture.feed(data[offset : offset + 1024])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    detail = reason(capture.result())
    assert f"more than {MAX_HEADER_ELEMENTS} elements, items and delimiters" in detail
    # A few steps over the limit: the inflated slices and the File Meta.
    assert MAX_HEADER_ELEMENTS <= steps < MAX_HEADER_ELEMENTS + 1000
    assert peak < 1024 * 1024


def test_the_same_bomb_without_deflate_is_refused_too() -> None:
    """The undeflated item bomb (7.6 MB) meets the same element limit."""
    items = EMPTY_ITEM * 200_000
    outcome = capture_header(part(sequence_header(0x00081140) + items + SEQUENCE_END + uids()))
    assert "elements, items and delimiters" in reason(outcome)


def test_deeply_nested_sequences_are_refused() -> None:
    """Sequences nested past MAX_HEADER_DEPTH are refused, not walked recursively."""
    nested = (sequence_header(0x00081140) + ITEM_UNDEFINED) * (MAX_HEADER_DEPTH + 1)
    outcome = capture_header(part(nested))
    assert f"nested more than {MAX_HEADER_DEPTH}" in reason(outcome)


def test_nested_items_are_walked() -> None:
    """Items of defined and undefined length, nested, before the UIDs: the UIDs are found."""
    inner = sequence_header(0x00081150) + ITEM_UNDEFINED + ui(0x00081155, "1.2.3") + ITEM_END
    inner += SEQUENCE_END
    item = ui(0x00081150, "1.2.4") + inner
    defined = struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item
    body = sequence_header(0x00081140) + defined + ITEM_UNDEFINED + inner + ITEM_END
    body += SEQUENCE_END
    outcome = capture_header(part(body + uids()))
    assert isinstance(outcome, DicomHeader)
    assert (outcome.sop_instance, outcome.study, outcome.series) == (SOP_INSTANCE, STUDY, SERIES)


def test_top_level_values_are_free_nested_ones_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """A top-level value over the budget is skipped free; the same value in an item counts."""
    monkeypatch.setattr(dicomheader, "MAX_HEADER_READ_BYTES", 4096)
    blob = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, 10_000) + bytes(10_000)
    assert isinstance(capture_header(part(blob + uids())), DicomHeader)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, len(blob)) + blob
    nested = sequence_header(0x00081140) + item + SEQUENCE_END
    assert "more than 4096 bytes" in reason(capture_header(part(nested + uids())))


def test_deflated_budget_counts_every_inflated_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deflated, even a top-level value the capture skips counts: inflating it is the cost."""
    monkeypatch.setattr(dicomheader, "MAX_HEADER_READ_BYTES", 4096)
    blob = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, 10_000) + bytes(10_000)
    assert "more than 4096 bytes" in reason(capture_header(deflated(blob + uids())))
    assert isinstance(capture_header(deflated(uids())), DicomHeader)


def test_skipped_values_are_not_buffered() -> None:
    """A 50 MB element before the UIDs, streamed in 256 KiB pieces, is never held."""
    size = 50 * 1024 * 1024
    head = part(struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, size))
    piece = bytes(256 * 1024)
    tracemalloc.start()
    try:
        capture = HeaderCapture()
        capture.feed(head)
        for _ in range(size // len(piece)):
            capture.feed(piece)
        capture.feed(uids())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(capture.result(), DicomHeader)
    assert peak < 64 * 1024


def test_a_long_value_is_kept_cut_and_marked() -> None:
    """A value longer than MAX_CAPTURED_VALUE_BYTES is kept cut, with "...", so never a UID."""
    long_uid = "1." + "2" * 5000
    body = ui(0x00080016, CT_IMAGE_STORAGE) + ui(0x00080018, long_uid) + ui(0x0020000D, STUDY)
    outcome = capture_header(part(body + ui(0x0020000E, SERIES)))
    assert isinstance(outcome, DicomHeader)
    assert outcome.sop_instance == long_uid[:MAX_CAPTURED_VALUE_BYTES] + "..."
    assert outcome.series == SERIES


def test_part_ending_inside_a_wanted_value_keeps_it_marked_cut() -> None:
    """Cut inside the SOP Instance UID value: kept with "...", never a shorter valid UID."""
    data = part(ui(0x00080016, CT_IMAGE_STORAGE) + ui(0x00080018, SOP_INSTANCE))
    outcome = capture_header(data[:-3])
    assert isinstance(outcome, DicomHeader)
    assert outcome.sop_instance == SOP_INSTANCE[:-2] + "..."


def test_part_ending_inside_a_sequence_is_unreadable() -> None:
    """Cut inside a sequence's items: unreadable, as pydicom finds it."""
    data = part(sequence_header(0x00081140) + ITEM_UNDEFINED + ui(0x00081150, "1.2.3"))
    assert reason(capture_header(data)).startswith("unreadable DICOM data: ")


def test_part_ending_between_elements_reads_as_found() -> None:
    """Cut right after the Study UID: a header without Series UID (validation says 0xA900)."""
    body = ui(0x00080016, CT_IMAGE_STORAGE) + ui(0x00080018, SOP_INSTANCE) + ui(0x0020000D, STUDY)
    outcome = capture_header(part(body))
    assert isinstance(outcome, DicomHeader)
    assert (outcome.study, outcome.series) == (STUDY, None)


def test_deflate_stream_cut_before_the_uids_ends_cleanly() -> None:
    """A deflate stream cut short reads as a shorter data set, like a truncated file."""
    data = deflated(ui(0x00080016, CT_IMAGE_STORAGE) + bytes(2000))
    outcome = capture_header(data[: len(data) - 4])
    assert isinstance(outcome, DicomHeader | Failed)
    assert fed(data[: len(data) - 4], list(range(0, len(data), 7))) == outcome


def test_implicit_vr_data_set_in_an_explicit_file_is_read() -> None:
    """As pydicom does: a first element without a VR means the data set is implicit VR."""
    implicit = b"".join(
        struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(padded(uid))) + padded(uid)
        for tag, uid in (
            (0x00080016, CT_IMAGE_STORAGE),
            (0x00080018, SOP_INSTANCE),
            (0x0020000D, STUDY),
            (0x0020000E, SERIES),
        )
    )
    outcome = capture_header(part(implicit))
    assert isinstance(outcome, DicomHeader)
    assert outcome.sop_instance == SOP_INSTANCE


def test_un_sequence_of_undefined_length_is_implicit_inside() -> None:
    """PS3.5 §6.2.2: a UN element of undefined length is an implicit VR sequence."""
    un = struct.pack("<HH2sHI", 0x0009, 0x1010, b"UN", 0, 0xFFFFFFFF)
    inside = struct.pack("<HHI", 0x0009, 0x1011, 4) + b"abcd"
    body = un + ITEM_UNDEFINED + inside + ITEM_END + SEQUENCE_END
    outcome = capture_header(part(body + uids()))
    assert isinstance(outcome, DicomHeader)
    assert outcome.series == SERIES


def test_encapsulated_value_before_the_uids_is_walked() -> None:
    """An undefined-length OB made of fragments is walked through its delimiter."""
    ob = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, 0xFFFFFFFF)
    fragments = struct.pack("<HHI", 0xFFFE, 0xE000, 6) + b"frag01" + SEQUENCE_END
    outcome = capture_header(part(ob + fragments + uids()))
    assert isinstance(outcome, DicomHeader)
    assert outcome.sop_class == CT_IMAGE_STORAGE
    broken = struct.pack("<HHI", 0x0009, 0x0009, 6) + b"frag01"
    assert "fragment" in reason(capture_header(part(ob + broken + uids())))


def test_an_element_overrunning_its_item_is_unreadable() -> None:
    """A defined-length item shorter than the element inside it is unreadable."""
    inside = ui(0x00081150, "1.2.3")
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 4) + inside
    outcome = capture_header(part(sequence_header(0x00081140) + item + SEQUENCE_END + uids()))
    assert "runs past the end of its item" in reason(outcome)


def test_a_sequence_holding_something_else_than_items_is_unreadable() -> None:
    """Inside a sequence only items and its delimiter may follow (PS3.5 §7.5)."""
    outcome = capture_header(part(sequence_header(0x00081140) + uids()))
    assert "expected an item tag, found (0008,0016)" in reason(outcome)


def test_an_item_delimiter_at_the_top_level_ends_the_data_set() -> None:
    """As in pydicom, (FFFE,E00D) at the top level ends the data set: what follows is unread."""
    outcome = capture_header(part(ui(0x00080016, CT_IMAGE_STORAGE) + ITEM_END + uids()))
    assert isinstance(outcome, DicomHeader)
    assert (outcome.sop_class, outcome.sop_instance) == (CT_IMAGE_STORAGE, None)


def test_the_32_bit_length_vrs_are_pydicoms() -> None:
    """The VRs spelled out as having a 32-bit length are exactly pydicom's EXPLICIT_VR_LENGTH_32."""
    from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

    assert dicomheader._VR_LENGTH_32 == {str(vr).encode() for vr in EXPLICIT_VR_LENGTH_32}
