"""Servers for integration tests: in-process on port 0, and a real twistd."""

from __future__ import annotations

import os
import re
import select
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

from twisted_stow.config import StowConfig
from twisted_stow.site import make_site
from twisted_stow.storage.filesystem import FilesystemStorage

_STARTED = re.compile(rb"StowSite starting on (\d+)")
TWISTD_START_TIMEOUT_SECONDS = 30.0


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
def stow_config() -> StowConfig:
    """The configuration of the in-process server (override per test module)."""
    return StowConfig()


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


def start_twistd(storage: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``twistd -n stow`` on 127.0.0.1 port 0; returns (process, port)."""
    twistd = Path(sys.executable).with_name("twistd")
    command = [
        str(twistd) if twistd.exists() else "twistd",
        "-n",
        "--pidfile=",
        "stow",
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--storage",
        str(storage),
        *extra,
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=storage.parent
    )
    assert process.stdout is not None
    deadline = time.monotonic() + TWISTD_START_TIMEOUT_SECONDS
    seen = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            line = process.stdout.readline()
            seen += line
            match = _STARTED.search(line)
            if match:
                # Keep draining the log, or a chatty server blocks on a full pipe.
                threading.Thread(target=_drain, args=(process,), daemon=True).start()
                return process, int(match.group(1))
        if process.poll() is not None:
            break
    process.kill()
    raise AssertionError(f"twistd did not start:\n{seen.decode(errors='replace')}")


_LOGS: dict[int, list[bytes]] = {}


def _drain(process: subprocess.Popen[bytes]) -> None:
    assert process.stdout is not None
    lines = _LOGS.setdefault(process.pid, [])
    for line in process.stdout:
        lines.append(line)


def twistd_log(process: subprocess.Popen[bytes]) -> str:
    """What the server has logged since it started."""
    return b"".join(_LOGS.get(process.pid, [])).decode(errors="replace")


def stop_twistd(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM the process we started (by PID) and wait; returns its exit code."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@pytest.fixture(scope="module")
def twistd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``twistd -n stow`` process, shared by a test module."""
    storage = tmp_path_factory.mktemp("twistd") / "store"
    process, port = start_twistd(storage)
    try:
        yield Server(f"http://127.0.0.1:{port}", port, storage, process)
    finally:
        stop_twistd(process)
