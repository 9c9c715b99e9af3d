"""--memory-budget: parsed in core/config.py, the one home of option parsing."""

from __future__ import annotations

import pytest
from twisted.python import usage

from twisted_stow.core.budget import DEFAULT_BUDGET_BYTES, S3_WINDOW_BYTES, upload_window_bytes
from twisted_stow.tap import Options

MiB = 1024 * 1024


def budget_of(*argv: str) -> int:
    options = Options()
    options.parseOptions(list(argv))
    value: int = options.config.memory_budget_bytes
    return value


def test_default_and_sizes() -> None:
    """32 MiB by default; sizes as operators write them."""
    assert budget_of() == DEFAULT_BUDGET_BYTES == 32 * MiB
    assert budget_of("--memory-budget=256M") == 256 * MiB
    assert budget_of("--memory-budget", "1G") == 1024 * MiB


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--memory-budget=lots"], "--memory-budget: not a size"),
        (["--memory-budget=0"], "below 1M"),
        (["--memory-budget=9M", "--storage=s3://bucket"], "below 10M (room for two S3 parts"),
    ],
)
def test_bad_budgets_are_one_clear_usage_error(argv: list[str], message: str) -> None:
    """A budget that is no size, or too small to hold what an upload needs to progress,
    is refused at start-up naming the option."""
    with pytest.raises(usage.UsageError, match=message.replace("(", r"\(")):
        budget_of(*argv)


def test_the_s3_window_is_clamped_to_a_small_budget() -> None:
    """An upload's window never exceeds the budget: nothing waits for more than the whole."""
    assert upload_window_bytes(12 * MiB, s3=True) == 12 * MiB
    assert upload_window_bytes(DEFAULT_BUDGET_BYTES, s3=True) == S3_WINDOW_BYTES
