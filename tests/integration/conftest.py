"""Servers for integration tests: in-process on port 0, and a real twistd."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.web.client import Agent, HTTPConnectionPool

from twisted_stow.core.config import StowConfig
from twisted_stow.site import make_site
from twisted_stow.storage.filesystem import FilesystemStorage

_STARTED = re.compile(rb"StowSite starting on (\d+)")


@dataclass
class Server:
    """A running server: its base URL and storage root."""

    url: str
    port: int
    storage: Path
    handle: Any = None  # the Site in-process, the Popen for twistd


def client_for(reactor: Any) -> tuple[HTTPClient, HTTPConnectionPool]:
    """A treq client with its own non-persistent pool (no leaks between tests)."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    return HTTPClient(Agent(reactor, pool=pool)), pool


async def _serve(tmp_path: Path, config: StowConfig) -> AsyncIterator[Server]:
    from twisted.internet import reactor

    storage_root = tmp_path / "store"
    config = replace(config, storage=storage_root)
    storage = FilesystemStorage(storage_root, reactor)
    storage.start()
    site = make_site(config, storage, reactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    number = port.getHost().port
    try:
        yield Server(f"http://127.0.0.1:{number}", number, storage_root, site)
    finally:
        await port.stopListening()
        storage.stop()


@pytest.fixture
def stow_config(request: pytest.FixtureRequest) -> StowConfig:
    """The in-process server's configuration: ``StowConfig()``, or the
    parameter of ``@pytest.mark.parametrize("stow_config", [...], indirect=True)``."""
    config: StowConfig = getattr(request, "param", StowConfig())
    return config


@pytest_twisted.async_yield_fixture
async def stow_server(tmp_path: Path, stow_config: StowConfig) -> AsyncIterator[Server]:
    """An in-process server on 127.0.0.1, port 0, storing under tmp_path."""
    async for server in _serve(tmp_path, stow_config):
        yield server


@pytest.fixture
def client() -> Iterator[HTTPClient]:
    """treq client with a non-persistent pool."""
    from twisted.internet import reactor

    http, pool = client_for(reactor)
    yield http
    pool.closeCachedConnections()


def stop_twistd(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM the process we started (by PID) and wait; returns its exit code."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def twistd_command() -> str:
    twistd = Path(sys.executable).with_name("twistd")
    return str(twistd) if twistd.exists() else "twistd"


class Twistd:
    """A ``twistd -n stow`` process we started, with its log read by a thread.

    A reader thread, not ``select`` plus ``readline``: when several log lines
    arrive in one read, ``readline`` leaves the later ones in Python's buffer,
    where ``select`` on the pipe never sees them.
    """

    def __init__(self, storage: Path, *arguments: str) -> None:
        command = [twistd_command(), "-n", "--pidfile=", "stow", "--storage", str(storage)]
        self.process = subprocess.Popen(
            [*command, *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=storage.parent,
        )
        self._lines: list[bytes] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

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

    def wait_for(self, condition: Any, timeout: float = 30.0) -> bool:
        """Blocking: wait until ``condition(log lines)`` holds, the log ends, or timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self._lines):
                if self._lines[-1:] == [b""] or time.monotonic() > deadline:
                    return condition(self._lines)
                self._changed.wait(0.2)
            return True

    def ports(self, count: int) -> list[int]:
        """Blocking: the ports of the first ``count`` "StowSite starting on N" lines."""

        def found(lines: list[bytes]) -> list[int]:
            return [int(m.group(1)) for line in lines if (m := _STARTED.search(line))]

        if not self.wait_for(lambda lines: len(found(lines)) >= count):
            self.stop()
            raise AssertionError(f"twistd did not start:\n{self.log()}")
        with self._changed:
            return found(self._lines)[:count]

    def stop(self) -> int:
        """SIGTERM by PID and wait (conftest.stop_twistd); returns the exit status."""
        return stop_twistd(self.process)


LOOPBACK_ANY_PORT = "tcp:0:interface=127.0.0.1"


@pytest.fixture(scope="module")
def twistd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """This module's ``twistd -n stow``, started by ``Twistd`` (see why in its docstring)."""
    storage = tmp_path_factory.mktemp("twistd") / "store"
    twistd = Twistd(storage, "--listen", LOOPBACK_ANY_PORT)
    try:
        (port,) = twistd.ports(1)
        yield Server(f"http://127.0.0.1:{port}", port, storage, twistd.process)
    finally:
        twistd.stop()


@pytest.fixture
def uploads(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every Upload the in-process server begins, in order (to look at its flow or principal)."""
    from twisted_stow.app import StowService

    recorded: list[Any] = []
    begin = StowService.begin_upload

    def recording_begin(self: StowService, *args: Any) -> Any:
        upload = begin(self, *args)
        recorded.append(upload)
        return upload

    monkeypatch.setattr(StowService, "begin_upload", recording_begin)
    return recorded
