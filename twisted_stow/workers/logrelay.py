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

from twisted.logger import LogLevel, eventAsJSON, eventFromJSON
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


def encode(event: dict[str, Any]) -> str:
    """One event as a line for the pipe (worker side), newline included."""
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        event = dict(event)
        event[_ERROR_KEY] = failure.getErrorMessage()
        event[_TRACEBACK_KEY] = failure.getTraceback()
        del event["log_failure"]
    try:
        return eventAsJSON(event) + "\n"
    except Exception as e:  # a log line must never take the worker down
        return json.dumps({"log_format": "unencodable log event: {error}", "error": repr(e)}) + "\n"


def decode(line: str) -> dict[str, Any] | None:
    """The event of one line (main side), or None if it is not an encoded event."""
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
