"""The supervision messages between the main process and a worker, over AMP.

One AMP connection per worker over a UNIX socketpair (the control
channel).  The main process creates the pair, keeps one end and passes the
other to the worker at a fixed descriptor (``CONTROL_FD``).  These are the
messages the supervision needs; the server-wide limits ride the same
connection (``control.py``).

Worker → main: ``Ready`` once it serves (its start-up is over), ``Spooled``
when it wrote a workflow request (the main process runs the one AMQP
publisher).  Main → worker: ``Drain`` (SIGTERM to the main process),
``Reload`` (SIGHUP), ``RefreshGauges`` (a scrape of ``--metrics-listen``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.protocols import amp

# The worker's end of the control socketpair: the first descriptor after
# stdin, stdout and stderr; its listening sockets follow it.
CONTROL_FD = 3
FIRST_LISTEN_FD = 4


class Ready(amp.Command):
    """The worker adopted its listening sockets and started its services."""

    arguments = [(b"pid", amp.Integer())]
    response: list[tuple[bytes, amp.Argument]] = []


class Spooled(amp.Command):
    """The worker wrote a workflow request into the shared spool."""

    arguments: list[tuple[bytes, amp.Argument]] = []
    requiresAnswer = False


class Drain(amp.Command):
    """Begin the drain (``abort``: a second SIGTERM, abort the uploads now)."""

    arguments = [(b"abort", amp.Boolean())]
    response: list[tuple[bytes, amp.Argument]] = []


class Reload(amp.Command):
    """SIGHUP: reload credentials and certificates (``quiet``: log nothing about it)."""

    arguments = [(b"quiet", amp.Boolean())]
    response = [(b"ok", amp.Boolean())]


class RefreshGauges(amp.Command):
    """Write the gauges read at scrape time into the multiprocess files now."""

    arguments: list[tuple[bytes, amp.Argument]] = []
    response: list[tuple[bytes, amp.Argument]] = []


class MainSide(amp.AMP):
    """The main process's end of one worker's control connection."""

    def __init__(
        self,
        ready: Callable[[int], None],
        spooled: Callable[[], None],
        lost: Callable[[], None],
    ) -> None:
        super().__init__()
        self._ready = ready
        self._spooled = spooled
        self._lost = lost

    @Ready.responder
    def ready(self, pid: int) -> dict[str, Any]:
        self._ready(pid)
        return {}

    @Spooled.responder
    def spooled(self) -> dict[str, Any]:
        self._spooled()
        return {}

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self._lost()


class WorkerSide(amp.AMP):
    """The worker's end: what the main process may ask of it."""

    def __init__(
        self,
        drain: Callable[[bool], None],
        reload: Callable[[bool], bool],
        refresh_gauges: Callable[[], None],
        lost: Callable[[], None],
    ) -> None:
        super().__init__()
        self._drain = drain
        self._reload = reload
        self._refresh_gauges = refresh_gauges
        self._lost = lost

    @Drain.responder
    def drain(self, abort: bool) -> dict[str, Any]:
        self._drain(abort)
        return {}

    @Reload.responder
    def reload(self, quiet: bool) -> dict[str, Any]:
        return {"ok": self._reload(quiet)}

    @RefreshGauges.responder
    def refresh_gauges(self) -> dict[str, Any]:
        self._refresh_gauges()
        return {}

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self._lost()
