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

from twisted.logger import ILogObserver, formatEvent
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
        "message": formatEvent(event),
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


def json_observer() -> JsonLineObserver:
    """twistd ``--logger`` factory: JSON lines where twistd would write its text.

    As twistd's own text observer: standard output under ``-n`` without
    ``--logfile`` (or with ``--logfile -``), else the file (``twistd.log``
    by default for a daemon), reopened on SIGUSR1 for log rotation.
    """
    logfile, nodaemon = _destination["logfile"], _destination["nodaemon"]
    if logfile == "-" or (nodaemon and not logfile):
        return JsonLineObserver(sys.stdout)
    from twisted.python.logfile import LogFile

    out = LogFile.fromFullPath(os.path.abspath(logfile or "twistd.log"))  # type: ignore[no-untyped-call]
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(number: int, frame: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(out.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return JsonLineObserver(cast(IO[str], out))
