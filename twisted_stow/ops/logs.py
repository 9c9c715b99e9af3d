"""``--log-format json``: one flat JSON object per line, for log shippers.

twistd's ``--logger`` names the factory of its one observer;
``tap.Options.postOptions`` sets it to ``json_observer`` so that twistd's
own lines ("starting up", "reactor class") come out as JSON too, rather
than a JSON observer beside twistd's text one mixing both formats.  They go
where twistd's text would: standard output, or ``--logfile`` (``log_to``).

Each line has ``timestamp`` (ISO 8601, UTC), ``level``, ``event`` (a stable
name: ``request.done``, ``request.refused``, ``instance.stored``, … or
``log`` for a line that has none), ``message`` (the text line's words) and
the event's own scalar fields, flat.  Events carry no patient data: the
server logs UIDs, sizes, reason codes, peers and principals, never a value
read from a data set.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import datetime, timezone
from typing import IO, Any, cast

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.python.failure import Failure
from zope.interface import implementer

# The key an event's stable name is logged under (``log.info(..., stow_event=...)``).
EVENT_KEY = "stow_event"
DEFAULT_EVENT = "log"
_SCALARS = (str, int, float, bool, type(None))


def flat_record(event: dict[str, Any]) -> dict[str, Any]:
    """The JSON object of one Twisted log event."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "timestamp": datetime.fromtimestamp(event.get("log_time", 0.0), timezone.utc).isoformat(
            timespec="milliseconds"
        ),
        "level": getattr(level, "name", "info"),
        "event": event.get(EVENT_KEY) or DEFAULT_EVENT,
        "message": render_message(event),
        "namespace": event.get("log_namespace", ""),
    }
    for key, value in event.items():
        if key.startswith("log_") or key == EVENT_KEY or key in record:
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if isinstance(value, _SCALARS):
            record[key] = value
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        record["error"] = failure.getErrorMessage()
        record["traceback"] = failure.getTraceback()
    return record


def render_message(event: dict[str, Any]) -> str:
    """The event's message, as ``twisted.logger.formatEvent`` renders it.

    Most events are a format string and their own fields: ``str.format_map``
    renders those in ~2 us where formatEvent (a Python Formatter over a
    mapping that also calls ``{name()}`` fields) took ~26, for every line of
    the server, twice per instance in a multi-worker main process.  Anything
    else (a ``()`` field, a flattened event from Twisted's JSON form, no
    format, a format that fails) goes to formatEvent as before.
    """
    fmt = event.get("log_format")
    if type(fmt) is str and "()" not in fmt and "log_flattened" not in event:
        try:
            return fmt.format_map(event)
        except Exception:  # formatEvent says what could not be formatted
            pass
    return formatEvent(event)


class _ClassicText:
    """twistd's text line (``formatEventAsClassicLogText``, RFC 3339 time), cheaper.

    The same text as twistd's own observer, byte for byte: the timestamp is
    formatted once per second (it has no finer part), the message by
    ``render_message``; an event with a failure goes to Twisted's own.
    """

    def __init__(self) -> None:
        self._second: int | None = None
        self._stamp = "-"

    def _timestamp(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if second != self._second:
            self._stamp = formatTime(float(second), timeFormatRFC3339)
            self._second = second
        return self._stamp

    def __call__(self, event: dict[str, Any]) -> str | None:
        when = event.get("log_time")
        if "log_failure" in event or (when is not None and type(when) is not float):
            return formatEventAsClassicLogText(
                event, formatTime=lambda t: formatTime(t, timeFormatRFC3339)
            )
        text = render_message(event)
        if not text:
            return None
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"
        line = f"{self._timestamp(when)} [{system}] {text}"
        return line.replace("\n", "\n\t") + "\n"


@implementer(ILogObserver)
class JsonLineObserver:
    """Writes ``flat_record`` of each event as one line."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            line = json.dumps(flat_record(event), default=str)
        except Exception as e:  # a log line must never take the server down
            line = json.dumps({"event": "log.unencodable", "error": repr(e)})
        self._out.write(line + "\n")
        self._out.flush()


# Where twistd would write its text lines, recorded by ``tap.Options.postOptions``
# (twistd calls a ``--logger`` factory with no arguments).
_destination: dict[str, Any] = {"logfile": None, "nodaemon": True}


def log_to(logfile: str | None, *, nodaemon: bool) -> None:
    """Record twistd's ``--logfile`` and ``-n`` for ``json_observer``."""
    _destination.update(logfile=logfile, nodaemon=nodaemon)


def _log_file() -> IO[str]:
    """Where twistd would write its text lines (``log_to``), reopened on SIGUSR1."""
    logfile, nodaemon = _destination["logfile"], _destination["nodaemon"]
    if logfile == "-" or (nodaemon and not logfile):
        return sys.stdout
    from twisted.python.logfile import LogFile

    out = LogFile.fromFullPath(os.path.abspath(logfile or "twistd.log"))  # type: ignore[no-untyped-call]
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(number: int, frame: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(out.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return cast(IO[str], out)


def text_observer() -> FileLogObserver:
    """twistd ``--logger`` factory for the text form: twistd's own lines, cheaper.

    Set by ``tap.Options.postOptions`` unless ``--syslog`` (twistd's
    syslog observer stays); written where twistd's text would be.
    """
    return FileLogObserver(_log_file(), _ClassicText())


def json_observer() -> JsonLineObserver:
    """twistd ``--logger`` factory: JSON lines where twistd would write its text.

    As twistd's own text observer: standard output under ``-n`` without
    ``--logfile`` (or with ``--logfile -``), else the file (``twistd.log``
    by default for a daemon), reopened on SIGUSR1 for log rotation.
    """
    return JsonLineObserver(_log_file())
