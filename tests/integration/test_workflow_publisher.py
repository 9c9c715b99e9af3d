"""The AMQP publisher with no broker to talk to (the broker tests are in
test_workflow_amqp.py): entries wait in the spool, and stopping is prompt."""

from __future__ import annotations

import itertools
import socket
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.integration.observe import poll
from twisted_stow.workflow.amqp import AmqpPublisher
from twisted_stow.workflow.request import encode
from twisted_stow.workflow.spool import Spool, entry_name


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest_twisted.ensureDeferred
async def test_entries_wait_while_the_broker_is_unreachable(tmp_path: Path) -> None:
    """Connection refused: the publisher retries, removes nothing, stops promptly."""
    from twisted.internet import reactor

    spool = Spool(tmp_path / "spool")
    spool.open()
    entry = spool.write(entry_name(1, "p-1"), encode({"payload_id": "p-1"}))

    def run_in_thread(f: Any, *args: Any) -> Any:
        return deferToThread(f, *args)

    publisher = AmqpPublisher(
        spool,
        f"amqp://guest:guest@127.0.0.1:{closed_port()}/%2F",
        exchange="monaideploy",
        routing_key="md.workflow.request",
        reactor=reactor,
        run_in_thread=run_in_thread,
        retry_min_seconds=0.05,
        retry_max_seconds=0.2,
    )
    attempts: list[float] = []
    original = publisher._session

    async def counted_session() -> None:
        attempts.append(time.monotonic())
        await original()

    publisher._session = counted_session  # type: ignore[method-assign]
    publisher.startService()
    try:
        assert await poll(lambda: len(attempts) >= 4, seconds=10.0)
        assert not publisher.connected
        assert spool.pending() == [entry]
        # Backoff grows between attempts (0.05, 0.1, 0.2 s ...).
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert gaps[-1] >= 0.15
    finally:
        started = time.monotonic()
        await publisher.stopService()
        assert time.monotonic() - started < 1.0
    assert spool.pending() == [entry]
