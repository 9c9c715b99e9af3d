"""``--log-format json``: one flat JSON object per line, for log shippers.

twistd's ``--logger`` names the factory of its one observer;
``tap.Options.postOptions`` sets it to ``json_observer`` so that twistd's
own lines ("starting up", "reactor class") come out as JSON too, rather
than a JSON observer beside twistd's text one mixing both formats.

Each line has ``timestamp`` (ISO 8601, UTC), ``level``, ``event`` (a stable
name: ``request.done``, ``request.refused``, ``instance.stored``, … or
``log`` for a line that has none), ``message`` (the text line's words) and
the event's own scalar fields, flat.  Events carry no patient data: the
server logs UIDs, sizes, reason codes, peers and principals, never a value
read from a data set.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import IO, Any

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


def json_observer() -> JsonLineObserver:
    """twistd ``--logger`` factory: JSON lines on standard output."""
    return JsonLineObserver(sys.stdout)
