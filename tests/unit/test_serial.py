"""Writer threads and their hand-back to the reactor (storage/serial.py).

Batched, in order, failures kept.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import provider

from twisted_stow.storage import serial


class HeldReactor:
    """callFromThread that keeps the calls until ``run`` (a reactor busy elsewhere)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self._lock = threading.Lock()

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:
        with self._lock:
            self.calls.append((f, args))

    def run(self) -> int:
        with self._lock:
            calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)
        return len(calls)


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def test_completions_sent_while_the_reactor_is_busy_take_one_wake_up_in_order() -> None:
    reactor = HeldReactor()
    completions = serial.Completions(reactor)  # type: ignore[arg-type]
    seen: list[int] = []
    for number in range(5):
        completions.send(seen.append, number)
    assert len(reactor.calls) == 1
    assert reactor.run() == 1
    assert seen == [0, 1, 2, 3, 4]
    # Taken: the next completion wakes the reactor again.
    completions.send(seen.append, 5)
    assert len(reactor.calls) == 1
    reactor.run()
    assert seen == [0, 1, 2, 3, 4, 5]


def test_a_failing_completion_is_logged_and_the_rest_still_run(logged: list[LogEvent]) -> None:
    reactor = HeldReactor()
    completions = serial.Completions(reactor)  # type: ignore[arg-type]
    seen: list[str] = []

    def broken() -> None:
        raise ValueError("broken completion")

    completions.send(seen.append, "before")
    completions.send(broken)
    completions.send(seen.append, "after")
    reactor.run()
    assert seen == ["before", "after"]
    failures = [e["log_failure"] for e in logged if "log_failure" in e]
    assert len(failures) == 1 and failures[0].check(ValueError)


def test_results_and_errors_of_several_queues_come_back_in_completion_order() -> None:
    """Operations of two parts on the writer threads: each Deferred gets its own
    result or error, the order of completion is kept, and one wake-up carries
    everything that finished while the reactor was busy."""
    reactor = HeldReactor()
    completions = serial.Completions(reactor)  # type: ignore[arg-type]
    jobs = serial.Jobs(2)
    part_a = serial.SerialQueue(jobs, completions)
    part_b = serial.SerialQueue(jobs, completions)
    finished = threading.Event()
    order: list[str] = []

    def op(name: str, *, fails: bool = False) -> Callable[[], str]:
        def run() -> str:
            order.append(name)
            if fails:
                raise OSError(5, f"{name} failed")
            if len(order) == 4:
                finished.set()
            return name

        return run

    results: list[Deferred[str]] = [
        part_a.submit(op("a0")),
        part_a.submit(op("a1", fails=True)),
        part_b.submit(op("b0")),
        part_b.submit(op("b1")),
    ]
    outcomes: list[str] = []
    for d in results:
        d.addCallbacks(outcomes.append, lambda f: outcomes.append(f"error {f.value.strerror}"))
    jobs.start()
    try:
        assert finished.wait(10)
    finally:
        jobs.stop()
    assert not any(d.called for d in results)  # nothing runs on the writer threads
    assert reactor.run() == 1
    expected = {"a0": "a0", "a1": "error a1 failed", "b0": "b0", "b1": "b1"}
    assert outcomes == [expected[name] for name in order]
    assert order.index("a0") < order.index("a1") and order.index("b0") < order.index("b1")


def test_a_raising_job_does_not_take_a_writer_thread(logged: list[LogEvent]) -> None:
    jobs = serial.Jobs(1)
    ran = threading.Event()

    def broken() -> None:
        raise RuntimeError("job bug")

    jobs.start()
    try:
        assert jobs.submit(broken)
        assert jobs.submit(ran.set)
        assert ran.wait(10)
    finally:
        jobs.stop()
    assert not jobs.submit(ran.set)  # refused once stopping
    failures = [e["log_failure"] for e in logged if "log_failure" in e]
    assert [f.type for f in failures] == [RuntimeError]
    assert isinstance(failures[0], Failure)
