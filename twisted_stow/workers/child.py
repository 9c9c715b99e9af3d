"""A worker process: ``python -m twisted_stow.workers.child``, started by the main process.

The main process (``supervisor.py``) passes at ``CONTROL_FD`` the worker's
end of the control socketpair, on which it first writes the worker's spec
(``spec.py``: its number and run token, the main process's pid, the
sockets and the ``twistd stow`` arguments; never in the environment or on
the command line), and from ``FIRST_LISTEN_FD`` on the listening sockets
in ``--listen`` order.  The worker parses the same options, builds the same
object graph as a single process (``site.make_services``), adopts the
sockets and reports ``Ready``; its log events go to the main process over
its standard output, a pipe (``logrelay.py``), each naming the worker.

It never outlives the main process: ``PR_SET_PDEATHSIG`` has the kernel
SIGKILL it when the main process ends, however it ends, and ``getppid``
checked right after catches a main process that died before the call.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

# <linux/prctl.h>
_PR_SET_PDEATHSIG = 1
# Status of a worker that cannot start (as the single process's start-up failures).
STARTUP_FAILURE_STATUS = 2
# The "starting on" lines of adopted ports: the main process logs one per
# port for the whole server (tests/launcher.py reads it), so the workers' own
# would be N more of the same.
_PORT_STARTED = re.compile(r"^StowSite (\(TLS\) )?starting on \d+$")


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when ``parent`` ends; exit now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    # The parent may have died between fork and prctl: we were reparented.
    if os.getppid() != parent:
        os._exit(1)


class WorkerLog:
    """The worker's log observer: every event names the worker, goes to the main
    process (``logrelay.py``); some are held back.

    ``quiet`` drops the reload lines while a SIGHUP reload runs in a worker
    that is not the one reporting it (the main process has one worker speak,
    so each outcome is logged once).
    """

    def __init__(self, out: IO[str], worker_id: int) -> None:
        self.worker_id = worker_id
        self.pid = os.getpid()
        self.quiet = False
        self._out = out
        # Threads log too (storage writers): one whole line at a time.
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        from twisted.logger import formatEvent

        from ..ops.logs import EVENT_KEY
        from .logrelay import encode

        if self.quiet and str(event.get(EVENT_KEY, "")).startswith("reload."):
            return
        # Rendered only when it may be the port line (Twisted's Port logs it
        # through the legacy log.msg: the text is in log_text): formatting
        # every event here cost as much as relaying it.
        if _may_be_port_line(event) and _PORT_STARTED.match(formatEvent(event)):
            return
        event = dict(event)
        # The text form names the worker in [system], the JSON form in fields.
        event["log_system"] = f"worker {self.worker_id} pid {self.pid} {_system(event)}"
        event["worker"] = self.worker_id
        event["pid"] = self.pid
        line = encode(event)
        with self._lock:
            self._out.write(line)
            self._out.flush()


# The log pipe to the main process: a worker's write blocks its reactor once
# the pipe is full, so give the main process room to be busy (Linux's default
# is 64 KiB, ~150 instance lines; 1 MiB is the unprivileged maximum).
LOG_PIPE_BYTES = 1024 * 1024


def widen_pipe(fd: int, size: int = LOG_PIPE_BYTES) -> int | None:
    """Grow the pipe ``fd`` to ``size`` bytes (less if the system caps it); its size, or None."""
    try:
        cap = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except (OSError, ValueError):
        cap = size
    try:
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, min(size, cap))
    except (OSError, AttributeError):
        return None  # not a pipe (a terminal, a file), or not Linux: nothing to grow


def _may_be_port_line(event: dict[str, Any]) -> bool:
    return any(
        "starting on" in str(event.get(key, "")) for key in ("log_format", "log_text", "message")
    )


def _system(event: dict[str, Any]) -> str:
    """The ``[system]`` twisted's classic text format would show."""
    system = event.get("log_system")
    if system is not None:
        return str(system)
    level = event.get("log_level")
    return f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"


class Worker:
    """One worker's services, sockets and control connection."""

    def __init__(self, spec: dict[str, Any], config: Any, reactor: Any, log: WorkerLog) -> None:
        self.spec = spec
        self.config = config
        self.reactor = reactor
        self.log = log
        self.control: Any = None
        self.site: Any = None
        self.reloads: list[Callable[[], bool]] = []

    def start(self) -> None:
        """Build, start, adopt the sockets, report Ready; one line and exit 2 on failure."""
        from twisted.internet.protocol import Factory
        from twisted.logger import Logger
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from ..ops import metrics, reload, startup
        from ..site import make_services, make_storage
        from .handover import KIND_TLS
        from .spec import CONTROL_FD
        from .supervision import Ready, Spooled, WorkerSide

        log = Logger()
        reactor = self.reactor
        # control.worker_side(protocol=WorkerSide), typed as what it is.
        control = WorkerSide(reactor)
        self.control = control
        try:
            storage = make_storage(self.config, reactor, run_token=self.spec["token"])
            top, site = make_services(
                self.config, reactor, storage, in_worker=True, control=control
            )
            self.site = site
            self.reloads = [site.stow.reload_credentials]
            top.privilegedStartService()
            top.startService()
            reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
            ports = []
            for listen in self.spec["listen"]:
                factory: Any = site
                if listen["kind"] == KIND_TLS:
                    # The TLS options are the worker's own, parsed from the same
                    # description, so SIGHUP reloads them here (ops/reload.py).
                    endpoint = startup.endpoint(reactor, listen["description"], "--listen")
                    tls = reload.reloadable(reactor, endpoint, listen["description"])
                    assert tls is not None
                    self.reloads.append(tls.reload)
                    factory = TLSMemoryBIOFactory(tls, False, site)
                ports.append(reactor.adoptStreamPort(listen["fd"], listen["family"], factory))
                os.close(listen["fd"])
        except SystemExit:
            raise
        except Exception as e:
            stream = sys.__stderr__ or sys.stderr
            stream.write(
                f"twistd stow: worker {self.spec['id']}: cannot start: "
                f"{startup.describe_error(e)}\n"
            )
            stream.flush()
            os._exit(STARTUP_FAILURE_STATUS)

        def stop_listening() -> object:
            from twisted.internet.defer import DeferredList

            return DeferredList([port.stopListening() for port in ports])

        site.stow.drain.install(stop_listening)
        # A signal to the whole process group (a terminal's Ctrl-C, ``kill
        # -- -PGID``) reaches the main process too, which forwards it: here
        # SIGTERM only begins the drain (a second one from the main process
        # aborts), SIGINT and SIGHUP are left to the main process.
        signal.signal(
            signal.SIGTERM,
            lambda number, frame: reactor.callFromThread(self._drain, False),
        )
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        control.on_drain = self._drain
        control.on_reload = self._reload
        control.on_refresh_gauges = metrics.refresh_gauges
        control.on_lost = self._main_gone
        if site.stow.workflows is not None:
            site.stow.workflows.on_spooled(lambda: control.send(Spooled))
        reactor.adoptStreamConnection(
            CONTROL_FD, socket.AF_UNIX, Factory.forProtocol(lambda: control)
        )
        os.close(CONTROL_FD)
        control.callRemote(Ready, pid=os.getpid())
        log.info(
            "worker {worker} (pid {pid}) serving",
            worker=self.spec["id"],
            pid=os.getpid(),
            stow_event="worker.ready",
        )

    def _drain(self, abort: bool) -> None:
        drain = self.site.stow.drain
        if abort or not drain.draining:
            # A second begin aborts the uploads still in flight (ops/drain.py).
            drain.begin("SIGTERM")

    def _reload(self, quiet: bool) -> bool:
        self.log.quiet = quiet
        try:
            return all([reload() for reload in self.reloads])
        finally:
            self.log.quiet = False

    def _main_gone(self) -> None:
        # The main process closed the channel without a SIGKILL (which the
        # kernel would have answered): nobody supervises us any more.
        drain = self.site.stow.drain
        if not drain.draining:
            drain.begin("control channel closed")


def main() -> None:
    from .spec import CONTROL_FD, receive_spec

    spec = receive_spec(CONTROL_FD)
    die_with_parent(spec["parent"])
    # Until the drain takes them over: the main process decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    from twisted.internet import reactor
    from twisted.logger import ILogObserver, globalLogBeginner
    from twisted.python import usage

    from .. import tap
    from ..ops import startup

    options = tap.Options()
    try:
        options.parseOptions(spec["arguments"])
    except usage.UsageError as e:
        startup.fail(str(e))
    config = options.config
    widen_pipe(sys.stdout.fileno())
    log = WorkerLog(sys.stdout, spec["id"])
    globalLogBeginner.beginLoggingTo([cast(ILogObserver, log)], redirectStandardIO=False)
    worker = Worker(spec, config, reactor, log)
    reactor.callWhenRunning(worker.start)
    reactor.run()


if __name__ == "__main__":
    main()
