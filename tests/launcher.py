"""The one launcher of server processes, shared by the integration tests and ``benchmarks/``.

``Twistd`` starts a real ``twistd -n --pidfile= stow --storage DIR ...`` (any
extra options, environment, working directory, or a different program in
front of twistd's arguments, as ``benchmarks/backpressure.py`` uses to slow
``os.writev`` down), reads its log in a thread and learns its listening
ports from the "StowSite starting on N" lines (with worker processes, the
main process logs one per port once every worker serves).  ``tree`` and its
helpers see the main process and its workers together: what a test measures
of the server (RSS, descriptors) is the sum over them, and a signal meant for
the server goes to the main process (``pid``).  ``ServerProcess`` is the part
that is not twistd-specific (Orthanc and the discard sink in ``benchmarks/``
use it too): start a command, keep its whole output, wait for a condition on
it, and stop the process by its PID with SIGTERM, then SIGKILL after a
timeout.  Nothing here imports pytest or Twisted, so the benchmarks, which
run as ``python3 -m benchmarks.NAME`` from the repository root, import it as
``tests.launcher`` like ``tests.helpers``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

# Every address the tests and benchmarks listen on: loopback only, a free port.
LOOPBACK_ANY_PORT = "tcp:0:interface=127.0.0.1"
# Logged by twisted.web's Site for each port it listens on (TLS ports say "(TLS)").
STARTED = re.compile(rb"StowSite starting on (\d+)")
# A cold twistd with the plugin imports in about 1 s here; a loaded 2-core
# machine running the full suite has taken over 10.
START_TIMEOUT_SECONDS = 60.0
# twistd's orderly shutdown waits for open uploads to be aborted; a server
# that has not exited by then is killed.
STOP_TIMEOUT_SECONDS = 30.0
_LOG_TAIL_CHARS = 4000

LogCondition = Callable[[list[bytes]], object]


def twistd_command() -> str:
    """The ``twistd`` beside this interpreter (the virtualenv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("twistd")
    return str(beside) if beside.exists() else "twistd"


def wait_until_ready(
    process: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float, poll: float
) -> bool:
    """Blocking: poll ``ready()`` until it holds (True), the process exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(poll)
    return False


class DidNotStart(RuntimeError):
    """The process exited, or did not log what it was waited for in time."""


class ServerProcess:
    """A process we started, its output (stdout and stderr) read to the end by a thread.

    A reader thread, not ``select`` plus ``readline``: when several log lines
    arrive in one read, ``readline`` leaves the later ones in Python's
    buffer, where ``select`` on the pipe never sees them.  Reading to the end
    also keeps a full pipe from ever blocking the server.  The log ends with
    one ``b""`` line once the process has closed its output.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.process = subprocess.Popen(
            list(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=None if env is None else dict(env),
        )
        self._lines: list[bytes] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._lines.append(b"")  # end of the log
            self._changed.notify_all()

    def log(self) -> str:
        with self._changed:
            return b"".join(self._lines).decode(errors="replace")

    def log_tail(self) -> str:
        """The last few thousand characters of the log, for an error message."""
        return self.log()[-_LOG_TAIL_CHARS:]

    def wait_for(self, condition: LogCondition, timeout: float = START_TIMEOUT_SECONDS) -> bool:
        """Blocking: wait until ``condition(log lines)`` holds, the log ends, or timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self._lines):
                if self._lines[-1:] == [b""] or time.monotonic() > deadline:
                    return bool(condition(self._lines))
                self._changed.wait(0.2)
            return True

    def tree(self) -> list[psutil.Process]:
        """The process and every descendant still running (a server's workers)."""
        import psutil

        try:
            top = psutil.Process(self.process.pid)
            return [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def children_pids(self) -> list[int]:
        """The pids of the processes this one started (a server's workers)."""
        return [p.pid for p in self.tree()[1:]]

    def tree_rss(self) -> int:
        """Resident memory of the whole process tree, in bytes."""
        return sum(_quietly(lambda p=p: p.memory_info().rss) for p in self.tree())

    def tree_fds(self) -> int:
        """Open descriptors of the whole process tree."""
        return sum(_quietly(lambda p=p: p.num_fds()) for p in self.tree())

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """SIGTERM the process by its PID and wait; SIGKILL after ``timeout``.

        Returns the exit status (negative: the signal that ended it).
        """
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            return self.process.wait()


def _quietly(read: Callable[[], int]) -> int:
    """A figure of a process that may have exited meanwhile (then 0)."""
    import psutil

    try:
        return read()
    except psutil.NoSuchProcess:
        return 0


def _started_ports(lines: list[bytes]) -> list[int]:
    return [int(match.group(1)) for line in lines if (match := STARTED.search(line))]


class Twistd(ServerProcess):
    """``twistd -n --pidfile= stow --storage STORAGE *options``, started at once.

    ``runner`` replaces the ``twistd`` executable: a command that takes
    twistd's arguments after it (``benchmarks/backpressure.py`` runs a
    Python snippet that patches ``os.writev`` and then twistd's ``run()``).
    ``cwd`` defaults to the storage's parent, so nothing twistd writes in
    its working directory lands in the checkout.
    """

    def __init__(
        self,
        storage: Path,
        *options: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        runner: Sequence[str] | None = None,
    ) -> None:
        program = list(runner) if runner is not None else [twistd_command()]
        command = [*program, "-n", "--pidfile=", "stow", "--storage", str(storage), *options]
        super().__init__(command, cwd=cwd or storage.parent, env=env)
        self.storage = storage

    def ports(self, count: int = 1, timeout: float = START_TIMEOUT_SECONDS) -> list[int]:
        """Blocking: the ports of the first ``count`` "StowSite starting on N" lines.

        Stops the process and raises ``DidNotStart`` if they do not appear.
        """
        if not self.wait_for(lambda lines: len(_started_ports(lines)) >= count, timeout):
            self.stop()
            raise DidNotStart(f"twistd did not start:\n{self.log_tail()}")
        with self._changed:
            return _started_ports(self._lines)[:count]
