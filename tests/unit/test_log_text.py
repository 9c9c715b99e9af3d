"""The text observer of ``ops/logs.py``: twistd's own lines, formatted cheaper."""

from __future__ import annotations

import time
from typing import Any

import pytest
from twisted.logger import (
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.python.failure import Failure

from twisted_stow.ops import logs


class Request:
    uri = b"/studies"

    def __repr__(self) -> str:
        return "<Request /studies>"


def _failure() -> Failure:
    try:
        raise ValueError("bad part")
    except ValueError:
        return Failure()


def twistd_line(event: dict[str, Any]) -> str | None:
    """What twistd's own text observer writes for ``event``."""
    return formatEventAsClassicLogText(event, formatTime=lambda t: formatTime(t, timeFormatRFC3339))


NOW = 1_764_700_000.75
EVENTS: list[dict[str, Any]] = [
    # the instance line: scalars, a format spec, a system
    {
        "log_format": "part {part}: stored {uid} ({size:,} bytes){warning}",
        "log_level": LogLevel.info,
        "log_namespace": "twisted_stow.ops",
        "log_system": "worker 1 pid 42 twisted_stow.ops#info",
        "log_time": NOW,
        "part": 3,
        "uid": "1.2.3",
        "size": 524288,
        "warning": "",
    },
    # no log_system: namespace#level; a conversion and attribute access
    {
        "log_format": "{request!r} for {request.uri}",
        "log_level": LogLevel.warn,
        "log_namespace": "twisted_stow.request",
        "log_time": NOW + 0.1,
        "request": Request(),
    },
    # a message of several lines, no level, no namespace
    {"log_format": "first\nsecond", "log_time": NOW},
    # a legacy log.msg line
    {"log_format": "{log_text}", "log_text": "StowSite starting on 8080", "log_time": NOW},
    # a call field, a positional field, a missing field: Twisted decides
    {"log_format": "{now()}", "now": lambda: "called", "log_time": NOW},
    {"log_format": "{} positional", "log_time": NOW},
    {"log_format": "{missing}", "log_time": NOW},
    # a failure: its traceback follows
    {"log_format": "it failed", "log_failure": _failure(), "log_time": NOW},
    # no time, no format
    {"log_format": "no time"},
    {"log_time": NOW, "message": ()},
]


@pytest.mark.parametrize("event", EVENTS, ids=range(len(EVENTS)))
def test_the_line_is_twistds_own(event: dict[str, Any]) -> None:
    assert logs._ClassicText()(event) == twistd_line(event)
    assert logs.render_message(event) == formatEvent(event)


def test_the_timestamp_follows_the_clock_across_seconds() -> None:
    """Cached per second, never stale: each second's lines carry that second."""
    text = logs._ClassicText()
    for offset in (0.0, 0.4, 0.99, 1.0, 1.5, 61.2, 0.3):
        event = {"log_format": "x", "log_time": NOW + offset, "log_system": "s"}
        assert text(event) == twistd_line(event)


def test_the_observer_writes_where_twistd_would(tmp_path: Any) -> None:
    """Standard output under -n, else the file; the line as twistd writes it."""
    try:
        logs.log_to(str(tmp_path / "stow.log"), nodaemon=True)
        observer = logs.text_observer()
        event = {**EVENTS[0], "log_time": time.time()}
        observer(event)
        assert (tmp_path / "stow.log").read_text() == twistd_line(event)
    finally:
        logs.log_to(None, nodaemon=True)
