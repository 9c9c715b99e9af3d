"""A worker's log events through the pipe to the main process (workers/logrelay.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from twisted.logger import LogLevel, formatEvent, formatEventAsClassicLogText
from twisted.python.failure import Failure

from twisted_stow.ops.logs import flat_record
from twisted_stow.workers.logrelay import LogRelay, RelayedFailure, decode, encode


class Unprintable:
    def __repr__(self) -> str:
        return "<an object JSON cannot hold>"


def worker_event(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "log_format": "stored {count} parts for {who}",
        "log_level": LogLevel.info,
        "log_namespace": "twisted_stow.site",
        "log_system": "worker 2 pid 4242 twisted_stow.site#info",
        "log_time": 1_700_000_000.25,
        "stow_event": "request.done",
        "worker": 2,
        "pid": 4242,
        "count": 3,
        "who": Unprintable(),
    }
    event.update(fields)
    return event


def relayed(event: dict[str, Any]) -> dict[str, Any]:
    line = encode(event)
    assert line.endswith("\n") and line.count("\n") == 1
    decoded = decode(line[:-1])
    assert decoded is not None
    return decoded


def test_the_text_line_is_the_one_the_worker_would_have_written() -> None:
    event = worker_event()
    assert formatEventAsClassicLogText(relayed(event)) == formatEventAsClassicLogText(event)
    assert "[worker 2 pid 4242 twisted_stow.site#info] stored 3 parts for <an object" in (
        formatEventAsClassicLogText(relayed(event)) or ""
    )


def test_the_json_record_names_the_worker() -> None:
    record = flat_record(relayed(worker_event()))
    assert record["worker"] == 2 and record["pid"] == 4242
    assert record["event"] == "request.done" and record["level"] == "info"
    assert record["message"] == "stored 3 parts for <an object JSON cannot hold>"
    assert record["timestamp"] == "2023-11-14T22:13:20.250+00:00"


def test_a_failure_keeps_its_message_and_traceback() -> None:
    try:
        raise ZeroDivisionError("worker arithmetic")
    except ZeroDivisionError:
        failure = Failure()
    # With a field JSON cannot hold (Twisted's form) and with scalars only (plain JSON).
    for who in (Unprintable(), "the worker"):
        event = worker_event(log_failure=failure, log_level=LogLevel.critical, who=who)
        back = relayed(event)
        assert isinstance(back["log_failure"], RelayedFailure), who
        assert back["log_failure"].getTraceback() == failure.getTraceback()
        assert back["log_level"] is LogLevel.critical
    event = worker_event(log_failure=failure, log_level=LogLevel.critical)
    back = relayed(event)
    assert isinstance(back["log_failure"], RelayedFailure)
    assert back["log_failure"].getErrorMessage() == "worker arithmetic"
    assert back["log_failure"].getTraceback() == failure.getTraceback()
    text = formatEventAsClassicLogText(back) or ""
    assert "ZeroDivisionError: worker arithmetic" in text
    record = flat_record(back)
    assert record["error"] == "worker arithmetic"
    assert "ZeroDivisionError" in record["traceback"]
    json.dumps(record)


def test_lines_split_across_reads_and_stray_output() -> None:
    published: list[dict[str, Any]] = []
    relay = LogRelay(1, published.append, time.time)
    relay.pid = 99
    data = (encode(worker_event(count=1)) + "a print()\n" + encode(worker_event(count=2))).encode()
    for i in range(0, len(data), 7):
        relay.received(data[i : i + 7])
    relay.received(b"no newline at the end")
    relay.ended()
    texts = [formatEvent(e) for e in published]
    assert texts == [
        "stored 1 parts for <an object JSON cannot hold>",
        "a print()",
        "stored 2 parts for <an object JSON cannot hold>",
        "no newline at the end",
    ]
    assert published[1]["log_system"] == "worker 1 pid 99"
    assert published[1]["worker"] == 1


def test_a_runaway_line_is_cut_not_buffered_for_ever() -> None:
    published: list[dict[str, Any]] = []
    relay = LogRelay(1, published.append, time.time)
    relay.received(b"x" * (2 * 1024 * 1024))
    assert len(published) == 1
    relay.received(b"\n")
    assert len(published) == 1


def test_json_lines_go_where_twistds_text_would(tmp_path: Path) -> None:
    """``--log-format json`` honours ``--logfile`` (twistd calls the factory bare)."""
    import sys

    from twisted_stow.ops import logs

    try:
        logs.log_to(None, nodaemon=True)
        assert logs.json_observer()._out is sys.stdout
        logs.log_to("-", nodaemon=True)
        assert logs.json_observer()._out is sys.stdout
        path = tmp_path / "stow.log"
        logs.log_to(str(path), nodaemon=True)
        observer = logs.json_observer()
        observer(worker_event())
        (line,) = path.read_text().splitlines()
        assert json.loads(line)["worker"] == 2
    finally:
        logs.log_to(None, nodaemon=True)


def scalar_event() -> dict[str, Any]:
    """An instance line as Logger.emit makes it: scalars, plus the logger and source."""
    return worker_event(
        log_format="part {part}: stored {uid} ({size:,} bytes, {seconds:.3f} s){warning}",
        log_level=LogLevel.warn,
        log_logger=object(),
        log_source=None,
        stow_event="instance.stored",
        part=7,
        uid="1.2.3.4",
        size=524288,
        seconds=0.0123456,
        warning="",
        reason=None,
        verified=True,
        who="the worker",
    )


def test_a_line_of_scalars_goes_in_plain_json_and_reads_back_the_same() -> None:
    """The common line (all fields scalars) is plain JSON: the same text line,
    the same JSON record, the level and time kept."""
    event = scalar_event()
    line = encode(event)
    plain = json.loads(line)
    assert plain["uid"] == "1.2.3.4" and plain["size"] == 524288  # fields as they are
    back = relayed(event)
    assert back["log_level"] is LogLevel.warn and back["log_time"] == event["log_time"]
    assert formatEventAsClassicLogText(back) == formatEventAsClassicLogText(event)
    assert "stored 1.2.3.4 (524,288 bytes, 0.012 s)" in formatEvent(back)
    direct = flat_record(event)
    assert flat_record(back) == direct
    assert direct["verified"] is True and direct["reason"] is None


def test_a_line_with_anything_else_takes_twisteds_full_form() -> None:
    """A non-scalar field, a failure or an unknown log_ key: Twisted's JSON form,
    which still reads back to the same text."""
    for extra in ({"who": Unprintable()}, {"log_io": "printed"}, {"items": [1, 2]}):
        event = {**scalar_event(), **extra}
        back = relayed(event)
        assert formatEvent(back) == formatEvent(event), extra
        assert "log_stow_compact" not in encode(event)
