"""SharedState (the main process's server-wide limits) and ThrottleMirror (a worker's copy
of the blocks), pure, on a fake clock."""

from __future__ import annotations

import pytest

from twisted_stow.auth.throttle import ThrottleMirror
from twisted_stow.core.config import StowConfig
from twisted_stow.core.errors import ServiceUnavailable
from twisted_stow.limits import RETRY_AFTER_SECONDS
from twisted_stow.workers.shared import SharedState


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Told:
    """What one worker was told of blocks."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, float]] = []

    def __call__(self, peer: str, seconds: float) -> None:
        self.blocks.append((peer, seconds))


def state(**options: int) -> tuple[SharedState, FakeClock]:
    clock = FakeClock()
    return SharedState(StowConfig(**options), clock), clock  # type: ignore[arg-type]


def test_the_total_cap_counts_every_worker() -> None:
    """Slots held by two workers add up against --max-requests; the refusal is today's 503."""
    shared, _ = state(max_requests=2)
    a, b = shared.attach("a", Told()), shared.attach("b", Told())
    a.acquire(1, "10.0.0.1")
    b.acquire(1, "10.0.0.2")
    with pytest.raises(ServiceUnavailable) as refused:
        a.acquire(2, "10.0.0.3")
    assert refused.value.retry_after_seconds == RETRY_AFTER_SECONDS
    assert refused.value.detail == "the server is receiving 2 uploads, its limit"
    b.release(1)
    a.acquire(2, "10.0.0.3")
    assert shared.slots.active == 2


def test_the_per_peer_cap_counts_every_worker() -> None:
    """One peer's uploads on two workers add up against --max-requests-per-peer; others pass."""
    shared, _ = state(max_requests_per_peer=1)
    a, b = shared.attach("a", Told()), shared.attach("b", Told())
    a.acquire(1, "10.0.0.1")
    with pytest.raises(ServiceUnavailable, match=r"from 10\.0\.0\.1 are running"):
        b.acquire(1, "10.0.0.1")
    b.acquire(2, "10.0.0.2")


def test_release_of_a_refused_unknown_or_released_grant_does_nothing() -> None:
    """A release sent for a grant that was refused (or twice) frees no other slot."""
    shared, _ = state(max_requests=1)
    a, b = shared.attach("a", Told()), shared.attach("b", Told())
    a.acquire(1, "p")
    with pytest.raises(ServiceUnavailable):
        b.acquire(7, "p")
    b.release(7)
    b.release(99)
    assert shared.slots.active == 1
    a.release(1)
    a.release(1)
    assert shared.slots.active == 0 and a.held == 0


def test_grant_ids_are_per_worker() -> None:
    """Two workers may use the same grant id; a release frees only its own worker's slot."""
    shared, _ = state(max_requests=5)
    a, b = shared.attach("a", Told()), shared.attach("b", Told())
    a.acquire(1, "p")
    b.acquire(1, "q")
    a.release(1)
    assert shared.slots.per_peer == {"q": 1}


def test_a_detached_worker_frees_all_it_held_and_takes_no_more() -> None:
    """The worker died: its slots are free at once, the other worker's stay held."""
    shared, _ = state(max_requests=3)
    a, b = shared.attach("a", Told()), shared.attach("b", Told())
    a.acquire(1, "p")
    a.acquire(2, "p")
    b.acquire(1, "q")
    assert a.detach() == 2
    assert shared.slots.active == 1 and shared.workers == 1
    with pytest.raises(ServiceUnavailable):
        a.acquire(3, "p")
    assert shared.slots.active == 1


def test_a_block_is_decided_once_for_all_workers_and_told_to_each() -> None:
    """Failures reported by two workers add up; the block reaches both, with its length."""
    shared, clock = state()
    told_a, told_b = Told(), Told()
    shared.attach("a", told_a)
    shared.attach("b", told_b)
    for _ in range(2):
        assert shared.failed("10.0.0.9") is None
    clock.now += 1
    for _ in range(2):
        assert shared.failed("10.0.0.9") is None
    assert shared.failed("10.0.0.9") == 10
    assert told_a.blocks == told_b.blocks == [("10.0.0.9", 10.0)]


def test_a_late_worker_is_told_the_blocks_in_force() -> None:
    """A worker attached during a block learns it with the seconds left; an ended one not."""
    shared, clock = state()
    shared.attach("a", Told())
    for _ in range(5):
        shared.failed("10.0.0.9")
    clock.now += 4
    late = Told()
    shared.attach("b", late)
    assert late.blocks == [("10.0.0.9", 6.0)]
    clock.now += 7
    later = Told()
    shared.attach("c", later)
    assert later.blocks == []


def test_the_kdf_budget_is_one_for_all_workers() -> None:
    """Half a KDF second per second, whoever asks: the second check in the same instant waits."""
    shared, clock = state()
    assert shared.take_kdf(0.4)
    assert shared.take_kdf(0.4)  # the balance was still positive: taken, now in debt
    assert not shared.take_kdf(0.01)
    clock.now += 1.0
    assert shared.take_kdf(0.4)


def test_the_mirror_answers_from_the_blocks_it_was_told() -> None:
    """ThrottleMirror: a reported failure decides nothing; a told block is answered at once,
    rounded up, and forgotten when over."""
    clock = FakeClock()
    reported: list[str] = []
    mirror = ThrottleMirror(reported.append, clock)
    assert mirror.failed("p") is None
    assert reported == ["p"] and mirror.retry_after("p") is None
    mirror.block("p", 9.5)
    assert mirror.retry_after("p") == 10
    clock.now += 9.0
    assert mirror.retry_after("p") == 1
    clock.now += 0.5
    assert mirror.retry_after("p") is None and len(mirror) == 0


def test_the_mirror_is_bounded() -> None:
    """At most max_peers blocks are kept, the oldest dropped first."""
    clock = FakeClock()
    mirror = ThrottleMirror(lambda peer: None, clock, max_peers=2)
    for peer in ("a", "b", "c"):
        mirror.block(peer, 60.0)
    assert len(mirror) == 2
    assert mirror.retry_after("a") is None and mirror.retry_after("c") == 60
