"""A slow object store: a rate-limiting TCP proxy of ours in front of a real one.

``ThrottledProxy(target_port, bytes_per_second).start()`` runs this module as
a child process (``python -m tests.integration.throttle``), which listens on
127.0.0.1 (port 0, printed on its first line) and forwards every connection
to ``127.0.0.1:target_port``, reading from its clients (the server under
test, uploading parts) at most ``bytes_per_second``: Twisted's
``ThrottlingFactory`` stops reading a client for the rest of each second it
went over (the limit is for all its connections together).  Answers flow
back unthrottled.  So a server writing to it sees a
store slower than its clients, as issue 13 point 4 asks, while the bytes
still reach the real store.  Stopped by PID.  Shared with ``benchmarks/``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

START_TIMEOUT_SECONDS = 30.0


class ThrottledProxy:
    """The proxy process, started and stopped by its PID."""

    def __init__(self, target_port: int, bytes_per_second: int) -> None:
        self.target_port = target_port
        self.bytes_per_second = bytes_per_second
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThrottledProxy:
        root = Path(__file__).resolve().parents[2]
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.throttle",
                str(self.target_port),
                str(self.bytes_per_second),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("port "):
            self.stop()
            raise RuntimeError(f"throttling proxy did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _main(target_port: int, bytes_per_second: int) -> None:
    from twisted.internet import reactor
    from twisted.protocols.policies import ThrottlingFactory
    from twisted.protocols.portforward import ProxyFactory

    factory = ThrottlingFactory(ProxyFactory("127.0.0.1", target_port), readLimit=bytes_per_second)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"port {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    _main(int(sys.argv[1]), int(sys.argv[2]))
