"""The main process of ``--workers N``: binds, spawns, supervises, drains.

It serves no STOW request itself.  It binds every ``--listen`` socket
(``handover.py``), starts N workers (``child.py``) with those sockets and a
control connection each (``supervision.py``), and then:

- logs "StowSite starting on N" once per port when every worker is ready
  (tests/launcher.py and operators read it), so a port is announced once
  whatever the worker count;
- restarts a worker that dies once it was ready: its staged files are
  removed by its run token (a pid may be reused and a zombie looks alive),
  its metrics files marked dead; the kernel already reset its connections.
  The replacement starts at once after an isolated death, and after a
  growing delay when the slot's workers keep dying young (``backoff.py``),
  so a worker that crashes on every request is no fork loop;
- stops the whole server, with the worker's exit status, when a slot's
  first worker dies before it was ready (its start-up failed; it printed
  why): a configuration every worker shares fails the same way each time,
  so a restart would only loop;
- on SIGTERM/SIGINT closes its copies of the listening sockets, tells each
  worker to drain (a second signal: to abort) and exits 0 once all have
  exited; on SIGHUP has each worker reload, one of them logging the outcome.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults, succeed
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure

from ..ops import metrics
from . import metricsdir
from .backoff import RestartBackoff
from .handover import HandedPort
from .logrelay import LogRelay
from .shared import SharedState
from .spec import CONTROL_FD, FIRST_LISTEN_FD, send_spec
from .supervision import Drain, MainSide, RefreshGauges, Reload
from .unavailable import Unavailable

log = Logger()

# After the drain timeout the workers abort their uploads; a worker still
# alive this much later is stuck and is killed.
DRAIN_GRACE_SECONDS = 15.0
# A scrape waits this long for the workers to write their gauges.
REFRESH_TIMEOUT_SECONDS = 2.0


@dataclass
class WorkerSlot:
    """One of the N workers; a restarted worker takes its slot (and number)."""

    number: int
    token: str = ""
    pid: int | None = None
    ready: bool = False
    ever_ready: bool = False
    process: Any = None
    control: MainSide | None = None
    ended: Deferred[None] = field(default_factory=Deferred)
    backoff: RestartBackoff | None = None
    # The delayed start of the next worker (an IDelayedCall), while it waits.
    restart: Any = None


class _WorkerProcess(ProcessProtocol):
    """A worker's end, and its log events from its standard output (``logrelay.py``)."""

    def __init__(self, ended: Callable[[Failure], None], relay: LogRelay) -> None:
        self._ended = ended
        self.relay = relay

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self.relay.received(data)

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == 1:
            self.relay.ended()

    def processEnded(self, reason: Failure) -> None:
        self.relay.ended()
        self._ended(reason)


def describe_end(reason: Failure) -> str:
    """How a process ended, for a log line: "exit status 1", "killed by SIGKILL"."""
    signal_number = getattr(reason.value, "signal", None)
    if signal_number:
        try:
            name = signal.Signals(int(signal_number)).name
        except ValueError:
            name = f"signal {signal_number}"
        return f"killed by {name}"
    return f"exit status {exit_status(reason)}"


def exit_status(reason: Failure) -> int:
    """A process's end as a shell status: its exit code, or 128 + the signal."""
    code = getattr(reason.value, "exitCode", None)
    signal_number = getattr(reason.value, "signal", None)
    if signal_number:
        return 128 + int(signal_number)
    return int(code or 0)


class Supervisor(Service):
    """Runs ``count`` workers over ``ports``; see the module docstring."""

    def __init__(
        self,
        *,
        reactor: Any,
        shared: SharedState,
        arguments: list[str],
        ports: list[HandedPort],
        count: int,
        storage_dir: Path | None,
        drain_timeout_seconds: float,
        spooled: Callable[[], None] = lambda: None,
    ) -> None:
        self.reactor = reactor
        # The server-wide limits, kept once here for every worker (shared.py).
        self.shared = shared
        self.arguments = arguments
        self.ports = ports
        self.slots = [
            WorkerSlot(number, backoff=RestartBackoff(reactor.seconds))
            for number in range(1, count + 1)
        ]
        self.storage_dir = storage_dir
        self.drain_timeout_seconds = drain_timeout_seconds
        self._spooled = spooled
        # Before ours is made: those a SIGKILLed main process left (metricsdir.py).
        for stale in metricsdir.sweep():
            log.info(
                "removed {path}, the metrics directory of a server that is gone",
                path=stale,
                stow_event="server.metrics_swept",
            )
        self.metrics_dir = metricsdir.make()
        # The directory goes with the process however it ends (twistd's
        # orderly stop, or the exit status of a failed start-up).
        atexit.register(self._at_exit)
        self.draining = False
        self.failed_status: int | None = None
        self._announced = False
        self._kill_timer: Any = None
        self._unavailable = Unavailable(reactor, ports, self._next_restart_in)

    # start

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._install_signals)
        for slot in self.slots:
            self._spawn(slot)

    def _install_signals(self) -> None:
        # After twistd's own handlers (as ops/drain.py does for one process).
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._signalled)
        signal.signal(signal.SIGHUP, self._signalled)

    def _signalled(self, number: int, frame: object) -> None:
        # Between two bytecodes of whatever runs: only schedule the work.
        if number == signal.SIGHUP:
            self.reactor.callFromThread(self.reload)
        else:
            self.reactor.callFromThread(self.drain, signal.Signals(number).name)

    def _spawn(self, slot: WorkerSlot) -> None:
        slot.restart = None
        slot.token = secrets.token_hex(8)
        slot.pid = None
        slot.ready = False
        slot.ended = Deferred()
        main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # control.main_side(..., protocol=MainSide), typed as what it is.
        control = MainSide(self.shared, str(slot.number))
        control.on_ready = lambda pid: self._ready(slot, pid)
        control.on_spooled = self._spooled
        slot.control = control
        devnull = os.open(os.devnull, os.O_RDONLY)
        # Standard output is the log pipe; standard error stays the main
        # process's, for what a worker writes before it logs (why it cannot start).
        child_fds: dict[int, int | str] = {
            0: devnull,
            1: "r",
            2: 2,
            CONTROL_FD: worker_end.fileno(),
        }
        listen = []
        for index, port in enumerate(self.ports):
            fd = FIRST_LISTEN_FD + index
            child_fds[fd] = port.sock.fileno()
            listen.append(
                {
                    "fd": fd,
                    "family": port.family,
                    "kind": port.kind,
                    "description": port.description,
                }
            )
        spec = {
            "id": slot.number,
            "token": slot.token,
            "parent": os.getpid(),
            "listen": listen,
            "arguments": self.arguments,
        }
        env = dict(os.environ)
        env[metrics.MULTIPROCESS_ENV] = self.metrics_dir
        env["PYTHONUNBUFFERED"] = "1"
        try:
            relay = LogRelay(slot.number, globalLogPublisher, self.reactor.seconds)
            slot.process = self.reactor.spawnProcess(
                _WorkerProcess(lambda reason: self._ended(slot, reason), relay),
                sys.executable,
                [sys.executable, "-m", "twisted_stow.workers.child"],
                env=env,
                childFDs=child_fds,
            )
        except BaseException:
            main_end.close()
            raise
        finally:
            os.close(devnull)
            worker_end.close()
        slot.pid = relay.pid = slot.process.pid
        try:
            # Before AMP: the worker reads exactly the spec, then speaks AMP. It
            # fits the socket buffer, so this returns before the worker reads it.
            send_spec(main_end, spec)
        except OSError as e:
            # The worker is gone already; its end is reported as any other.
            log.warn(
                "could not send worker {worker} its spec: {error}", worker=slot.number, error=e
            )
        self.reactor.adoptStreamConnection(
            main_end.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: control)
        )
        main_end.close()

    def _ready(self, slot: WorkerSlot, pid: int) -> None:
        slot.ready = slot.ever_ready = True
        slot.pid = pid
        assert slot.backoff is not None
        slot.backoff.serving()
        self._serving_changed()
        if self.draining and slot.control is not None:
            slot.control.callRemote(Drain, abort=False).addErrback(lambda _: None)
            return
        if not self._announced and all(s.ready for s in self.slots):
            self._announced = True
            for port in self.ports:
                # Worded as twisted.web's Site logs a port it opens.
                log.info(
                    "{prefix} starting on {port}",
                    prefix=port.log_prefix,
                    port=port.port,
                    stow_event="server.listening",
                )
            log.info(
                "{count} workers serving: pids {pids}",
                count=len(self.slots),
                pids=", ".join(str(s.pid) for s in self.slots),
                stow_event="server.workers",
            )

    # ends

    def _ended(self, slot: WorkerSlot, reason: Failure) -> None:
        status = exit_status(reason)
        pid = slot.pid
        was_ready = slot.ready
        slot.ready = False
        slot.process = None
        if pid is not None:
            metrics.worker_ended(self.metrics_dir, pid)
        self._sweep(slot.token)
        ended = slot.ended
        if self.draining or self.failed_status is not None:
            ended.callback(None)
            self._stop_when_all_ended()
            return
        if not slot.ever_ready:
            log.error(
                "worker {worker} (pid {pid}) failed at start-up (exit status {status}): "
                "stopping the server",
                worker=slot.number,
                pid=pid,
                status=status,
                stow_event="worker.startup_failed",
            )
            ended.callback(None)
            self.fail(status or 1)
            return
        assert slot.backoff is not None
        delay = slot.backoff.ended()
        how = describe_end(reason)
        if not was_ready:
            how += " before it served"
        ended.callback(None)
        self._serving_changed()
        if delay <= 0:
            log.error(
                "worker {worker} (pid {pid}) ended ({how}); starting another",
                worker=slot.number,
                pid=pid,
                how=how,
                status=status,
                stow_event="worker.restarted",
            )
            self._spawn(slot)
            return
        log.error(
            "worker {worker} (pid {pid}) ended ({how}); {deaths} in a row died young: "
            "starting another in {delay:.1f} s",
            worker=slot.number,
            pid=pid,
            how=how,
            status=status,
            deaths=slot.backoff.young_deaths,
            delay=delay,
            stow_event="worker.restart_delayed",
        )
        slot.restart = self.reactor.callLater(delay, self._restart, slot, delay)

    def _serving_changed(self) -> None:
        """While no worker serves (after one did), the main process answers 503 itself."""
        if (
            self._announced
            and not self.draining
            and self.failed_status is None
            and not any(s.ready for s in self.slots)
        ):
            self._unavailable.start()
        else:
            self._unavailable.stop()

    def _next_restart_in(self) -> float:
        """Seconds until the next delayed worker start (1 when none waits)."""
        now = self.reactor.seconds()
        waits = [
            s.restart.getTime() - now
            for s in self.slots
            if s.restart is not None and s.restart.active()
        ]
        return min(waits) if waits else 1.0

    def _restart(self, slot: WorkerSlot, delay: float) -> None:
        log.info(
            "worker {worker}: starting another after {delay:.1f} s",
            worker=slot.number,
            delay=delay,
            stow_event="worker.restarted",
        )
        self._spawn(slot)

    def _cancel_restarts(self) -> None:
        for slot in self.slots:
            if slot.restart is not None and slot.restart.active():
                slot.restart.cancel()
            slot.restart = None

    def _sweep(self, token: str) -> None:
        """Remove a gone worker's staged parts, before another worker starts."""
        if self.storage_dir is None or not token:
            return
        from ..storage.filesystem import sweep_run_staging

        try:
            removed = sweep_run_staging(self.storage_dir, token)
        except OSError as e:
            log.warn("could not sweep a worker's staging files: {error}", error=e)
            return
        if removed:
            log.info(
                "removed {count} staged parts of a worker that ended",
                count=removed,
                stow_event="worker.swept",
            )

    def fail(self, status: int) -> None:
        """Stop the whole server; the process then exits with ``status``."""
        if self.failed_status is None:
            self.failed_status = status
        self._close_ports()
        for slot in self.slots:
            self._tell_to_stop(slot, abort=True)
        self._stop_when_all_ended()

    # drain

    def drain(self, why: str = "SIGTERM") -> None:
        """SIGTERM: close the shared sockets, drain every worker, exit 0 once all have exited."""
        if self.draining:
            log.warn("{why} during the drain: the workers abort their uploads now", why=why)
            for slot in self.slots:
                self._tell_to_stop(slot, abort=True)
            return
        self.draining = True
        metrics.DRAINING.set(1)
        log.info(
            "{why}: draining {count} workers",
            why=why,
            count=sum(1 for s in self.slots if s.process is not None),
            stow_event="server.draining",
        )
        self._close_ports()
        for slot in self.slots:
            self._tell_to_stop(slot, abort=False)
        self._kill_timer = self.reactor.callLater(
            self.drain_timeout_seconds + DRAIN_GRACE_SECONDS, self._kill_all
        )
        self._stop_when_all_ended()

    def _close_ports(self) -> None:
        self._cancel_restarts()
        self._unavailable.stop()
        # The workers close their copies as their drain begins; the socket
        # stops accepting once the last copy is closed.
        for port in self.ports:
            port.sock.close()

    def _tell_to_stop(self, slot: WorkerSlot, *, abort: bool) -> None:
        if slot.process is None:
            return
        if slot.ready and slot.control is not None:
            slot.control.callRemote(Drain, abort=abort).addErrback(lambda _: None)
        elif slot.pid is not None:
            # Still starting: it holds no upload; its own SIGTERM ends it.
            _signal(slot.pid, signal.SIGTERM)

    def _kill_all(self) -> None:
        self._kill_timer = None
        for slot in self.slots:
            if slot.process is not None and slot.pid is not None:
                log.warn("worker {worker} still running: killed", worker=slot.number)
                _signal(slot.pid, signal.SIGKILL)

    def _stop_when_all_ended(self) -> None:
        if any(slot.process is not None for slot in self.slots):
            return
        if self._kill_timer is not None and self._kill_timer.active():
            self._kill_timer.cancel()
        if self.draining and self.failed_status is None:
            log.info("every worker has exited: stopping", stow_event="server.drained")
        if self.reactor.running:
            self.reactor.callLater(0, self.reactor.stop)

    def stopService(self) -> Any:
        super().stopService()
        self._cancel_restarts()
        self._unavailable.stop()
        # twistd stops without a drain only on an error of its own: the
        # workers go now (the kernel would SIGKILL them as we exit anyway).
        waits = []
        for slot in self.slots:
            if slot.process is not None and slot.pid is not None:
                _signal(slot.pid, signal.SIGKILL)
                waits.append(slot.ended)
        return DeferredList(waits) if waits else None

    # SIGHUP and metrics

    def reload(self) -> Deferred[None]:
        """SIGHUP: every worker reloads; the first logs the outcome, once all others have."""
        ready = [s for s in self.slots if s.ready and s.control is not None]
        if not ready:
            return succeed(None)
        speaker, others = ready[0], ready[1:]

        def quietly() -> Deferred[Any]:
            return gatherResults(
                [s.control.callRemote(Reload, quiet=True) for s in others if s.control]
            )

        def speak(_: object) -> Deferred[Any]:
            assert speaker.control is not None
            spoken: Deferred[Any] = speaker.control.callRemote(Reload, quiet=False)
            return spoken

        d = quietly().addCallback(speak)
        d.addErrback(lambda f: log.failure("SIGHUP: a worker did not reload", f))
        return d.addCallback(lambda _: None)

    def refresh_gauges(self) -> Deferred[None]:
        """Every ready worker writes its scrape-time gauges (at most a short wait)."""
        asks = []
        for slot in self.slots:
            if slot.ready and slot.control is not None:
                d = slot.control.callRemote(RefreshGauges)
                d.addTimeout(REFRESH_TIMEOUT_SECONDS, self.reactor)
                asks.append(d)
        return DeferredList(asks, consumeErrors=True).addCallback(lambda _: None)

    def _at_exit(self) -> None:
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        if self.failed_status:
            # twistd itself would exit 0 after a reactor.stop().
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(self.failed_status)


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass
