"""The supervision messages between the main process and a worker, over AMP.

One AMP connection per worker over a UNIX socketpair (the control
channel).  The main process creates the pair, keeps one end and passes the
other to the worker at a fixed descriptor (``spec.CONTROL_FD``), after
the worker's start-up spec (``spec.py``).  These are the
messages the supervision needs, added to the server-wide limits' protocol
of ``control.py`` by subclassing (AMP finds responders on the class).

Worker → main: ``Ready`` once it serves (its start-up is over), ``Spooled``
when it wrote a workflow request (the main process runs the one AMQP
publisher).  Main → worker: ``Drain`` (SIGTERM to the main process),
``Reload`` (SIGHUP), ``RefreshGauges`` (a scrape of ``--metrics-listen``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.protocols import amp
from twisted.python.failure import Failure

from .control import MainControl, WorkerControl
from .shared import SharedState


class Ready(amp.Command):
    """The worker adopted its listening sockets and started its services."""

    arguments = [(b"pid", amp.Integer())]
    response = []


class Spooled(amp.Command):
    """The worker wrote a workflow request into the shared spool."""

    arguments = []
    requiresAnswer = False


class Drain(amp.Command):
    """Begin the drain (``abort``: a second SIGTERM, abort the uploads now)."""

    arguments = [(b"abort", amp.Boolean())]
    response = []


class Reload(amp.Command):
    """SIGHUP: reload credentials and certificates (``quiet``: log nothing about it)."""

    arguments = [(b"quiet", amp.Boolean())]
    response = [(b"ok", amp.Boolean())]


class RefreshGauges(amp.Command):
    """Write the gauges read at scrape time into the multiprocess files now."""

    arguments = []
    response = []


class MainSide(MainControl):
    """The main process's end of one worker's control connection.

    The server-wide limits' commands come from ``MainControl``; the
    supervisor sets the callables before the worker can speak.
    """

    def __init__(self, shared: SharedState, worker_id: str) -> None:
        super().__init__(shared, worker_id)
        self.on_ready: Callable[[int], None] = lambda pid: None
        self.on_spooled: Callable[[], None] = lambda: None

    @Ready.responder
    def ready(self, pid: int) -> dict[str, Any]:
        self.on_ready(pid)
        return {}

    @Spooled.responder
    def spooled(self) -> dict[str, Any]:
        self.on_spooled()
        return {}


class WorkerSide(WorkerControl):
    """The worker's end: the limits' commands (``WorkerControl``), and what the
    main process may ask of it; the worker sets the callables before it connects."""

    def __init__(self, clock: Any = None) -> None:
        super().__init__(clock)
        self.on_drain: Callable[[bool], None] = lambda abort: None
        self.on_reload: Callable[[bool], bool] = lambda quiet: True
        self.on_refresh_gauges: Callable[[], None] = lambda: None
        self.on_lost: Callable[[], None] = lambda: None

    @Drain.responder
    def drain(self, abort: bool) -> dict[str, Any]:
        self.closing_expected = True
        self.on_drain(abort)
        return {}

    @Reload.responder
    def reload(self, quiet: bool) -> dict[str, Any]:
        return {"ok": self.on_reload(quiet)}

    @RefreshGauges.responder
    def refresh_gauges(self) -> dict[str, Any]:
        self.on_refresh_gauges()
        return {}

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self.on_lost()
