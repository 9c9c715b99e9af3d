"""``--workers``: parsing, the one-per-CPU default, and which listeners can be handed over."""

from __future__ import annotations

import pytest
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.python import usage

from twisted_stow.core.config import MAX_WORKERS, StowConfig, worker_count
from twisted_stow.tap import Options
from twisted_stow.workers import handover


def parse(*argv: str) -> StowConfig:
    options = Options()
    options.parseOptions(list(argv))
    config: StowConfig = options.config
    return config


def test_default_is_one_worker_per_cpu() -> None:
    config = parse()
    assert config.workers is None
    assert worker_count(config.workers, 2) == 2
    assert worker_count(config.workers, 1) == 1
    assert worker_count(config.workers, 10_000) == MAX_WORKERS


@pytest.mark.parametrize(
    ("given", "expected"), [("1", 1), ("3", 3), ("auto", None), ("AUTO", None)]
)
def test_workers_values(given: str, expected: int | None) -> None:
    config = parse("--workers", given)
    assert config.workers == expected
    if expected is not None:
        assert worker_count(config.workers, 64) == expected


@pytest.mark.parametrize("given", ["0", "-1", "two", "1.5", str(MAX_WORKERS + 1)])
def test_bad_workers_values_are_one_usage_error(given: str) -> None:
    with pytest.raises(usage.UsageError, match="--workers"):
        parse("--workers", given)


@pytest.mark.parametrize(
    ("description", "shareable"),
    [
        ("tcp:0:interface=127.0.0.1", True),
        ("tcp6:0:interface=\\:\\:1", True),
        ("unix:/tmp/stow-test.sock", False),
    ],
)
def test_which_listeners_can_be_handed_over(description: str, shareable: bool) -> None:
    problem = handover.problem(serverFromString(MemoryReactor(), description))
    assert (problem is None) is shareable
    if not shareable:
        assert problem is not None and "tcp:, tcp6: and ssl:" in problem
