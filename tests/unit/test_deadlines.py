"""MinimumRate (pure) and the options for slow clients and large instances."""

from __future__ import annotations

import pytest
from twisted.python import usage

from tests.unit.test_tap import parse
from twisted_stow.core.deadlines import (
    DEFAULT_BODY_RATE_WINDOW_SECONDS,
    DEFAULT_HEADER_TIMEOUT_SECONDS,
    DEFAULT_MIN_BODY_RATE_BYTES,
    MinimumRate,
)
from twisted_stow.tap import Options

RATE = 1000  # bytes per second
WINDOW = 10.0


def test_a_trickle_fails_after_one_window() -> None:
    """A byte every few seconds is far below the rate: too slow once a window has passed."""
    rate = MinimumRate(RATE, WINDOW, now=0.0)
    for second in range(0, 10, 3):
        rate.received(1)
        assert rate.check(float(second)) == pytest.approx(WINDOW - second)
    assert rate.check(WINDOW) is None


def test_an_honest_slow_upload_passes_window_after_window() -> None:
    """Just above the rate, every window passes and the next one starts afresh."""
    rate = MinimumRate(RATE, WINDOW, now=0.0)
    now = 0.0
    for _ in range(5):
        for _ in range(10):
            rate.received(RATE + 1)
            now += 1.0
        assert rate.check(now) == WINDOW
        assert rate.window_bytes == 0


def test_an_early_burst_does_not_pay_for_a_later_trickle() -> None:
    """A fast first window, then nothing: the second window fails."""
    rate = MinimumRate(RATE, WINDOW, now=0.0)
    rate.received(100 * RATE * int(WINDOW))
    assert rate.check(WINDOW) == WINDOW
    rate.received(5)
    assert rate.check(2 * WINDOW) is None


def test_time_paused_for_storage_does_not_count() -> None:
    """Paused for an hour in the middle of a window: only reading time is judged."""
    rate = MinimumRate(RATE, WINDOW, now=0.0)
    rate.received(4 * RATE)
    rate.pause(4.0)
    assert rate.paused
    # While paused the window does not advance: the check is postponed.
    assert rate.check(3600.0) == pytest.approx(WINDOW - 4.0)
    rate.resume(3600.0)
    assert rate.reading_seconds(3603.0) == pytest.approx(7.0)
    rate.received(6 * RATE)
    assert rate.check(3606.0) == WINDOW  # 10 KB over 10 s of reading


def test_paused_twice_and_resumed_twice_counts_once() -> None:
    """pause/resume are idempotent (the request may call them repeatedly)."""
    rate = MinimumRate(RATE, WINDOW, now=0.0)
    rate.pause(1.0)
    rate.pause(5.0)
    rate.resume(8.0)
    rate.resume(9.0)
    assert rate.reading_seconds(10.0) == pytest.approx(3.0)


@pytest.mark.parametrize(("per_second", "window"), [(0, 1.0), (1, 0.0), (-5, 1.0)])
def test_nonsense_parameters_are_refused(per_second: int, window: float) -> None:
    with pytest.raises(ValueError):
        MinimumRate(per_second, window, now=0.0)


def test_defaults_of_the_slow_client_guards() -> None:
    """On by default, with the documented values; no part limit."""
    config = parse()
    assert config.header_timeout_seconds == DEFAULT_HEADER_TIMEOUT_SECONDS == 30.0
    assert config.min_body_rate_bytes == DEFAULT_MIN_BODY_RATE_BYTES == 1024
    assert config.body_rate_window_seconds == DEFAULT_BODY_RATE_WINDOW_SECONDS == 60.0
    assert config.max_part_bytes is None


def test_options_set_the_guards_and_the_part_limit() -> None:
    config = parse(
        "--max-part-size=512M",
        "--header-timeout=5",
        "--min-body-rate=2K",
        "--body-rate-window=7.5",
    )
    assert config.max_part_bytes == 512 * 1024**2
    assert config.header_timeout_seconds == 5.0
    assert config.min_body_rate_bytes == 2048
    assert config.body_rate_window_seconds == 7.5


def test_zero_turns_each_guard_off() -> None:
    config = parse("--max-part-size=0", "--header-timeout=0", "--min-body-rate=0")
    assert config.max_part_bytes is None
    assert config.header_timeout_seconds is None
    assert config.min_body_rate_bytes == 0


@pytest.mark.parametrize(
    "argument",
    [
        "--max-part-size=lots",
        "--max-part-size=-1",
        "--header-timeout=soon",
        "--header-timeout=-1",
        "--header-timeout=inf",
        "--min-body-rate=fast",
        "--body-rate-window=0",
        "--body-rate-window=nan",
    ],
)
def test_bad_values_are_usage_errors(argument: str) -> None:
    with pytest.raises(usage.UsageError, match=argument.split("=")[0]):
        parse(argument)


def test_help_lists_the_new_options() -> None:
    """``twistd stow --help`` documents each option."""
    text = str(Options())
    for name in ("--max-part-size", "--header-timeout", "--min-body-rate", "--body-rate-window"):
        assert name in text
