"""The restart back-off of a worker slot (workers/backoff.py), on a fake clock."""

from __future__ import annotations

import itertools

from twisted_stow.workers.backoff import RestartBackoff


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def die_after(backoff: RestartBackoff, clock: Clock, served: float | None) -> float:
    """A worker that served ``served`` seconds (None: never ready) ends; the delay."""
    if served is not None:
        backoff.serving()
        clock.now += served
    else:
        clock.now += 0.5
    return backoff.ended()


def test_an_isolated_death_is_replaced_at_once() -> None:
    clock = Clock()
    backoff = RestartBackoff(clock)
    assert die_after(backoff, clock, 3600.0) == 0.0
    assert die_after(backoff, clock, 0.2) == 0.0  # young, but the first in a row
    assert die_after(backoff, clock, 3600.0) == 0.0


def test_young_deaths_in_a_row_double_the_delay_up_to_the_cap() -> None:
    clock = Clock()
    backoff = RestartBackoff(clock, first_delay_seconds=0.1, max_delay_seconds=30.0)
    delays = [die_after(backoff, clock, 1.0) for _ in range(14)]
    assert delays[:6] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.6]
    assert delays[-3:] == [30.0, 30.0, 30.0]
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert backoff.young_deaths == 14


def test_a_worker_that_never_served_counts_as_young() -> None:
    clock = Clock()
    backoff = RestartBackoff(clock)
    assert die_after(backoff, clock, 1.0) == 0.0
    assert die_after(backoff, clock, None) == 0.1
    assert die_after(backoff, clock, None) == 0.2


def test_a_worker_that_lived_long_enough_resets_the_count() -> None:
    clock = Clock()
    backoff = RestartBackoff(clock, young_seconds=10.0)
    for _ in range(5):
        die_after(backoff, clock, 1.0)
    assert die_after(backoff, clock, 1.0) == 1.6
    # Just under the threshold is still young; at it, the count starts over.
    assert die_after(backoff, clock, 9.99) == 3.2
    assert die_after(backoff, clock, 10.0) == 0.0
    assert backoff.young_deaths == 0
    assert die_after(backoff, clock, 1.0) == 0.0
    assert die_after(backoff, clock, 1.0) == 0.1


def test_time_spent_waiting_or_starting_is_not_serving() -> None:
    """Only the time since ``serving`` counts: a long start-up then a crash is young."""
    clock = Clock()
    backoff = RestartBackoff(clock, young_seconds=10.0)
    die_after(backoff, clock, 1.0)
    clock.now += 60.0  # the start-up of the next worker
    assert die_after(backoff, clock, 1.0) == 0.1


def test_many_deaths_stay_at_the_cap() -> None:
    clock = Clock()
    backoff = RestartBackoff(clock, max_delay_seconds=30.0)
    delays = [die_after(backoff, clock, None) for _ in range(2000)]
    assert delays[-1] == 30.0
