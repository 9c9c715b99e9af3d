"""A worker's log events, carried to the main process, which logs them as its own.

A worker once wrote its formatted lines to the standard output it
inherited: fine under ``twistd -n`` with the log on standard output, but
``--logfile``, ``--syslog`` or a daemonized twistd (whose standard output
is ``/dev/null``) got only the main process's lines.  Now a worker's
standard output is a pipe to the main process, and a worker writes each
event there as one line of Twisted's JSON event form (``eventAsJSON``,
which flattens the message's fields).  The main process decodes each line
and hands the event to its own log publisher, so every worker's line
reaches whatever the main process logs to (text, ``--log-format json``,
a file, syslog), once, with the worker's number and pid: the text form
names them in ``[system]``, the JSON form has ``worker`` and ``pid``.

A failure's exception cannot cross as an object (it is not JSON): the
worker sends its message and traceback as text, and the main process
logs a ``RelayedFailure`` that renders them as the worker saw them.  A
line that is not an event (a stray ``print``) is logged as its text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.logger import InvalidLogLevelError, LogLevel, eventAsJSON, eventFromJSON
from twisted.python.failure import Failure

_ERROR_KEY = "stow_relayed_error"
_TRACEBACK_KEY = "stow_relayed_traceback"
# A worker's line longer than this (a runaway traceback) is cut, not buffered on.
MAX_LINE_BYTES = 1024 * 1024


class RelayedFailure(Failure):
    """A worker's failure as text: what log observers ask a ``Failure`` for."""

    def __init__(self, message: str, traceback: str) -> None:
        # Not Failure.__init__: there is no exception object to capture here.
        self._message = message
        self._traceback = traceback
        self.value = Exception(message)
        self.type = Exception
        self.tb = None
        self.frames = []
        self.parents = []

    def getErrorMessage(self) -> str:
        return self._message

    def getTraceback(self, elideFrameworkCode: int = 0, detail: str = "default") -> str:
        return self._traceback

    def __repr__(self) -> str:
        return f"<RelayedFailure {self._message!r}>"


# The compact form of an event with only scalar fields (nearly every line: the
# instance and request lines): one JSON object whose key ``_COMPACT`` holds the
# event's own keys, beside its fields.  json's C encoder and decoder take a few
# microseconds where Twisted's JSON event form (eventAsJSON, which flattens the
# format string and walks every value through its hooks) took ~35 to encode
# and ~45 to decode, per line, in the main process for every worker's line.
_COMPACT = "log_stow_compact"
_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})
# The log_ keys the compact form carries, and those it may drop: Twisted's
# Logger adds the logger and the logging object, which no observer formats
# (the text form's [system] comes from log_system, set by the worker).
_CARRIED = ("log_format", "log_namespace", "log_time", "log_system")
_DROPPABLE = frozenset({"log_logger", "log_source", "log_level", *_CARRIED})


def _compact(event: dict[str, Any]) -> str | None:
    """``event`` as its compact line, or None when it needs Twisted's full form."""
    fields: dict[str, Any] = {}
    for key, value in event.items():
        if key.startswith("log_"):
            if key not in _DROPPABLE:
                return None  # log_failure, log_io, log_trace...: the full form
            continue
        if type(value) not in _SCALAR_TYPES:
            return None
        fields[key] = value
    level = event.get("log_level")
    carried = [event.get(key) for key in _CARRIED]
    if not all(type(value) in _SCALAR_TYPES for value in carried):
        return None
    fields[_COMPACT] = [getattr(level, "name", None), *carried]
    return json.dumps(fields) + "\n"


def encode(event: dict[str, Any]) -> str:
    """One event as a line for the pipe (worker side), newline included."""
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        event = dict(event)
        event[_ERROR_KEY] = failure.getErrorMessage()
        event[_TRACEBACK_KEY] = failure.getTraceback()
        del event["log_failure"]
    try:
        return _compact(event) or eventAsJSON(event) + "\n"
    except Exception as e:  # a log line must never take the worker down
        return json.dumps({"log_format": "unencodable log event: {error}", "error": repr(e)}) + "\n"


def _from_compact(line: str) -> dict[str, Any] | None:
    try:
        # A dict once pop(str) worked: a list's pop raises TypeError.
        event: dict[str, Any] = json.loads(line)
        level_name, *carried = event.pop(_COMPACT)
        level = LogLevel.levelWithName(level_name) if level_name else LogLevel.info
    except (ValueError, TypeError, KeyError, AttributeError, InvalidLogLevelError):
        return None
    if len(carried) != len(_CARRIED):
        return None
    event["log_level"] = level
    for key, value in zip(_CARRIED, carried, strict=True):
        if value is not None:
            event[key] = value
    return event


def decode(line: str) -> dict[str, Any] | None:
    """The event of one line (main side), or None if it is not an encoded event."""
    event = _from_compact(line) if _COMPACT in line else None
    if event is None:
        try:
            event = eventFromJSON(line)
        except (ValueError, TypeError, KeyError):
            return None
    if not isinstance(event, dict):
        return None
    if _TRACEBACK_KEY in event:
        event["log_failure"] = RelayedFailure(
            str(event.pop(_ERROR_KEY, "")), str(event.pop(_TRACEBACK_KEY))
        )
    return event


class LogRelay:
    """Splits one worker's pipe into lines and publishes each line's event."""

    def __init__(
        self, worker: int, publish: Callable[[dict[str, Any]], None], clock: Callable[[], float]
    ) -> None:
        self.worker = worker
        self.pid: int | None = None
        self._publish = publish
        self._clock = clock
        self._buffer = b""

    def received(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE_BYTES:
            lines.append(self._buffer)
            self._buffer = b""
        for line in lines:
            self._line(line.decode("utf-8", errors="replace"))

    def ended(self) -> None:
        """The pipe closed: a last line without its newline is still a line."""
        if self._buffer:
            self._line(self._buffer.decode("utf-8", errors="replace"))
            self._buffer = b""

    def _line(self, line: str) -> None:
        if not line.strip():
            return
        event = decode(line)
        if event is None:
            event = {
                "log_format": "{text}",
                "text": line,
                "log_level": LogLevel.info,
                "log_namespace": "twisted_stow.workers.stdout",
                "log_system": f"worker {self.worker} pid {self.pid}",
                "log_time": self._clock(),
                "worker": self.worker,
                "pid": self.pid,
            }
        self._publish(event)
