"""What a test can see of a server from outside: files on disk, and time."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from twisted.internet.task import deferLater

POLL_INTERVAL_SECONDS = 0.02
DEFAULT_POLL_SECONDS = 10.0


def stored_files(root: Path) -> list[Path]:
    """Every stored instance under a storage root (staging files excluded)."""
    return sorted(p for p in root.rglob("*.dcm") if ".staging" not in p.parts)


def staging_files(root: Path) -> list[Path]:
    """Staging files left under a storage root (none once every part has an outcome)."""
    staging = root / ".staging"
    return sorted(staging.iterdir()) if staging.exists() else []


async def poll(condition: Callable[[], object], seconds: float = DEFAULT_POLL_SECONDS) -> bool:
    """Check ``condition()`` until it holds or ``seconds`` pass, without blocking the reactor."""
    from twisted.internet import reactor

    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        await deferLater(reactor, POLL_INTERVAL_SECONDS, lambda: None)
    return True


def wait_until(condition: Callable[[], object], seconds: float = DEFAULT_POLL_SECONDS) -> bool:
    """Blocking poll (tests without a reactor): ``condition()`` held within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL_SECONDS)
    return True
