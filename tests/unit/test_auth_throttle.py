"""FailureThrottle: blocks after repeated failures, growing, bounded (pure, fake clock)."""

from __future__ import annotations

from twisted_stow.auth.throttle import FailureThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_blocks_after_max_failures_within_the_window() -> None:
    """The fifth failure within a minute blocks the peer for the base time; others unaffected."""
    clock = Clock()
    throttle = FailureThrottle(clock, max_failures=5, window_seconds=60, base_block_seconds=10)
    for _ in range(4):
        assert throttle.failed("a") is None
        clock.now += 1
    assert throttle.retry_after("a") is None
    assert throttle.failed("a") == 10
    assert throttle.retry_after("a") == 10
    assert throttle.retry_after("b") is None
    clock.now += 9.5
    assert throttle.retry_after("a") == 1
    clock.now += 0.5
    assert throttle.retry_after("a") is None


def test_failures_outside_the_window_do_not_count() -> None:
    """Failures spread over more than the window never block."""
    clock = Clock()
    throttle = FailureThrottle(clock, max_failures=3, window_seconds=60)
    for _ in range(10):
        assert throttle.failed("a") is None
        clock.now += 31
    assert throttle.retry_after("a") is None


def test_each_new_block_doubles_up_to_the_maximum() -> None:
    """Blocks grow 10, 20, 40 ... capped at the maximum."""
    clock = Clock()
    throttle = FailureThrottle(
        clock, max_failures=2, base_block_seconds=10, max_block_seconds=50, window_seconds=60
    )
    blocks = []
    for _ in range(4):
        throttle.failed("a")
        blocks.append(throttle.failed("a"))
        clock.now += blocks[-1] or 0
    assert blocks == [10, 20, 40, 50]


def test_a_quiet_peer_is_forgotten() -> None:
    """After max block + window without failures, the next block starts at the base again."""
    clock = Clock()
    throttle = FailureThrottle(
        clock, max_failures=1, base_block_seconds=10, max_block_seconds=100, window_seconds=60
    )
    assert throttle.failed("a") == 10
    assert throttle.failed("a") == 20
    clock.now += 161
    assert throttle.failed("a") == 10


def test_memory_is_bounded() -> None:
    """Past max_peers the least recently failed peer is dropped."""
    clock = Clock()
    throttle = FailureThrottle(clock, max_failures=1, max_peers=3)
    for peer in "abcd":
        throttle.failed(peer)
    assert len(throttle) == 3
    assert throttle.retry_after("a") is None
    assert throttle.retry_after("d") is not None
