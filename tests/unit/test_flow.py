"""BytesInFlight: pause above either high-water mark, resume below both low ones."""

from __future__ import annotations

import pytest

from tests.fakes import RecordingProducer
from twisted_stow.core.budget import MemoryBudget
from twisted_stow.flow import WAITING_READ_BYTES, WINDOW_READ_BYTES, BytesInFlight


def make(window: int = 100, **marks: int) -> tuple[BytesInFlight, RecordingProducer]:
    producer = RecordingProducer()
    return BytesInFlight(producer, budget=MemoryBudget(10 * window, window), **marks), producer


def test_bytes_pause_and_resume_once() -> None:
    """Filling the window pauses once; falling under half of it resumes once."""
    flow, producer = make(window=100)
    flow.add(60)
    flow.add(60)
    flow.add(60)
    assert producer.calls == ["pause"]
    flow.done(120)
    assert producer.calls == ["pause"]  # 60 left: between the marks
    flow.done(15)
    assert producer.calls == ["pause", "resume"]
    assert flow.pause_count == 1


def test_second_upload_waits_for_a_window_of_the_shared_budget() -> None:
    """Two uploads, one window's budget: the second pauses on its first bytes until the first
    gives its window back."""
    budget = MemoryBudget(100, 100)
    first, second = RecordingProducer(), RecordingProducer()
    a = BytesInFlight(first, budget=budget)
    b = BytesInFlight(second, budget=budget)
    a.add(10)
    b.add(10)
    assert first.calls == [] and second.calls == ["pause"]
    a.done(10)  # a holds nothing while b waits: its window goes to b
    assert second.calls == ["pause", "resume"]
    a.add(5)
    assert first.calls == ["pause"]
    b.close()
    b.done(10)
    assert first.calls == ["pause", "resume"]


def test_pending_parts_pause_even_without_bytes() -> None:
    """Many small parts awaiting validation pause reading although few bytes are queued."""
    flow, producer = make(high_water_parts=3, low_water_parts=1)
    for _ in range(4):
        flow.part_started()
    assert producer.calls == ["pause"]
    for _ in range(3):
        flow.part_finished()
    assert producer.calls == ["pause"]  # one left: not under the low mark of 1
    flow.part_finished()
    assert producer.calls == ["pause", "resume"]


def test_resume_needs_both_measures_low() -> None:
    """Parts drained but bytes still high: stay paused."""
    flow, producer = make(window=100, high_water_parts=2, low_water_parts=1)
    flow.add(200)
    for _ in range(3):
        flow.part_started()
    for _ in range(3):
        flow.part_finished()
    assert producer.calls == ["pause"]
    flow.done(200)
    assert producer.calls == ["pause", "resume"]


def test_marks_must_be_ordered() -> None:
    """A low mark at or above the high mark is a configuration error."""
    with pytest.raises(ValueError):
        make(high_water_parts=1, low_water_parts=2)


def test_captures_behind_pause_and_hold_the_resume() -> None:
    """Header captures behind pause at once; the resume waits for them even with bytes low."""
    flow, producer = make(window=100)
    flow.captures_behind_changed(True)
    assert producer.calls == ["pause"]
    flow.add(5)
    flow.done(5)
    assert producer.calls == ["pause"]
    flow.captures_behind_changed(False)
    assert producer.calls == ["pause", "resume"]


def test_reads_are_large_only_inside_a_window() -> None:
    """An upload reads 1 MiB at a time while it holds a window of the budget, where the bytes
    are counted, and 256 KiB while it waits for one (that read is beyond the budget)."""
    budget = MemoryBudget(100, 100)
    a = BytesInFlight(RecordingProducer(), budget=budget)
    b = BytesInFlight(RecordingProducer(), budget=budget)
    sizes: dict[str, list[int]] = {"a": [], "b": []}
    a.watch_read_size(sizes["a"].append)
    b.watch_read_size(sizes["b"].append)
    assert sizes == {"a": [WAITING_READ_BYTES], "b": [WAITING_READ_BYTES]}
    a.add(10)  # granted the only window
    b.add(10)  # queued behind it
    assert sizes == {"a": [WAITING_READ_BYTES, WINDOW_READ_BYTES], "b": [WAITING_READ_BYTES]}
    a.done(10)  # a's window goes to b
    assert sizes["a"] == [WAITING_READ_BYTES, WINDOW_READ_BYTES, WAITING_READ_BYTES]
    assert sizes["b"] == [WAITING_READ_BYTES, WINDOW_READ_BYTES]
    assert a.read_size_bytes == WAITING_READ_BYTES and b.read_size_bytes == WINDOW_READ_BYTES
