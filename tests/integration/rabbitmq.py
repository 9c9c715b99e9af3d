"""A real RabbitMQ broker for tests, run as the current user on 127.0.0.1.

Its own epmd on its own port, its own node name, state and logs in a temp
dir (docs/DESIGN.md, "Tests").  Started and stopped by PID, never by name: other
people on the machine run RabbitMQ too.  Readiness is an AMQP handshake that
succeeds, so no Erlang CLI node (rabbitmqctl) is needed.

Where the Debian package is missing (CI installs it in .ci/run), starting
fails the tests that need the broker: they never skip.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import pika
import pytest

from tests.launcher import wait_until_ready

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
EPMD = "epmd"
# 12-15 s on a 2-core machine (measured); leave room for a loaded one.
START_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RabbitMQ:
    """One broker node; ``start``/``stop`` may be called again (state is kept)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"stowtest-{uuid.uuid4().hex[:8]}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        self._epmd: subprocess.Popen[bytes] | None = None
        self._server: subprocess.Popen[bytes] | None = None
        for name in ("home", "mnesia", "log"):
            (base / name).mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq.conf").write_text("")

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        loopback_dist = "-kernel inet_dist_use_interface {127,0,0,1}"
        env.update(
            HOME=str(self.base / "home"),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            # Keep Erlang distribution on loopback too (it binds 0.0.0.0 otherwise).
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=loopback_dist,
            # The script then execs the VM (with -noinput): the PID we hold is
            # the broker's, and SIGTERM stops it cleanly.
            RUNNING_UNDER_SYSTEMD="1",
        )
        return env

    def start(self) -> None:
        """Start the node (and our epmd once); return when AMQP answers.

        Fails the calling test (``pytest.fail``) if the broker cannot start.
        """
        if not RABBITMQ_SERVER.exists():
            pytest.fail(f"{RABBITMQ_SERVER} is missing: install the Debian rabbitmq-server")
        if self._epmd is None:
            self._epmd = subprocess.Popen(
                [EPMD, "-address", "127.0.0.1", "-port", str(self.epmd_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=self._env(),
            )
        with open(self.base / "server.out", "ab") as output:
            self._server = subprocess.Popen(
                [str(RABBITMQ_SERVER)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=self._env(),
            )
        if wait_until_ready(self._server, self.answers, START_TIMEOUT_SECONDS, 0.5):
            return
        log = (self.base / "server.out").read_text(errors="replace")[-3000:]
        self.stop()
        pytest.fail(f"RabbitMQ did not start within {START_TIMEOUT_SECONDS} s:\n{log}")

    def answers(self) -> bool:
        """Whether an AMQP handshake with the broker succeeds now."""
        try:
            # A plain connect first: pika logs every refused attempt as an error.
            socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
        except OSError:
            return False
        try:
            connection = pika.BlockingConnection(self.parameters(connection_attempts=1))
        except pika.exceptions.AMQPError:
            return False
        connection.close()
        return True

    def parameters(self, **overrides: object) -> pika.URLParameters:
        parameters = pika.URLParameters(self.url)
        parameters.socket_timeout = 5
        for name, value in overrides.items():
            setattr(parameters, name, value)
        return parameters

    @property
    def running(self) -> bool:
        """Whether the server this object started is still alive."""
        return self._server is not None and self._server.poll() is None

    def stop(self) -> None:
        """SIGTERM the broker by PID and wait for it (SIGKILL if it hangs)."""
        server, self._server = self._server, None
        if server is None or server.poll() is not None:
            return
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    def close(self) -> None:
        """Stop the broker and our epmd."""
        self.stop()
        epmd, self._epmd = self._epmd, None
        if epmd is not None and epmd.poll() is None:
            epmd.terminate()
            epmd.wait(timeout=10)
