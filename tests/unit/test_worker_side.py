"""A worker's ends to the main process: the control connection's loss, the log pipe."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from twisted_stow.workers.child import widen_pipe
from twisted_stow.workers.supervision import WorkerSide


def _lose(drained: bool) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        side = WorkerSide(Clock())
        side.makeConnection(StringTransport())
        if drained:
            side.drain(abort=False)
        side.connectionLost(Failure(ConnectionDone()))
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [e for e in events if str(e.get("stow_event", "")).startswith("workers.control")]


def test_a_lost_connection_is_an_error() -> None:
    (event,) = _lose(drained=False)
    assert event["log_level"] is LogLevel.error and event["stow_event"] == "workers.control_lost"


def test_the_close_after_a_drain_is_not() -> None:
    (event,) = _lose(drained=True)
    assert event["log_level"] is LogLevel.info and event["stow_event"] == "workers.control_closed"


def test_the_log_pipe_is_widened() -> None:
    """A worker's log pipe grows past Linux's 64 KiB; a non-pipe is left alone."""
    read_end, write_end = os.pipe()
    try:
        assert widen_pipe(write_end, 1024 * 1024) == 1024 * 1024
    finally:
        os.close(read_end)
        os.close(write_end)
    with tempfile.TemporaryFile() as f:
        assert widen_pipe(f.fileno()) is None
