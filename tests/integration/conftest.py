"""Servers for integration tests: in-process on port 0, and a real twistd.

The real ``twistd -n stow`` is started by ``tests.launcher.Twistd``, the one
launcher the benchmarks use too; its names are re-exported here for the
tests that start a twistd of their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.web.client import Agent, HTTPConnectionPool

from tests.integration.postgres import PostgreSQL
from tests.integration.rabbitmq import RabbitMQ
from tests.integration.seaweedfs import SeaweedFS
from tests.launcher import LOOPBACK_ANY_PORT, Twistd
from tests.launcher import twistd_command as twistd_command  # re-exported for the tests
from twisted_stow.core.config import StowConfig
from twisted_stow.site import make_services


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
    services, site = make_services(config, reactor)
    services.startService()
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    number = port.getHost().port
    try:
        yield Server(f"http://127.0.0.1:{number}", number, storage_root, site)
    finally:
        await port.stopListening()
        await services.stopService()


# The real servers the tests share (started on 127.0.0.1 by the tests,
# stopped by PID; a server that cannot start fails the tests that need it).
# One of each for the whole session: starting them is most of what a module
# of theirs costs (RabbitMQ ~9 s, SeaweedFS ~5 s, PostgreSQL ~3 s on this
# 2-core machine), and the tests keep out of each other's way already, each
# with a bucket (``new_bucket``), a database (``new_database``) or a queue of
# its own.  The module-scoped fixtures of the old names start the shared
# server again if an earlier module left it stopped (a test that stops it
# to see an outage and fails before starting it again), so one failure does
# not spread to the modules after it.  A module that needs another kind (a
# TLS RabbitMQ) defines its own fixture of the same name.


class _Shared(Protocol):
    """What the session's shared servers have in common."""

    @property
    def running(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


_S = TypeVar("_S", bound=_Shared)


def _for_the_session(server: _S, shut: Callable[[], None]) -> Iterator[_S]:
    """The body of a session fixture: ``server`` started, then ``shut()`` at the end."""
    try:
        server.start()
        yield server
    finally:
        shut()


def _running_again(server: _S) -> _S:
    """``server``, started again if an earlier module left it stopped."""
    if not server.running:
        server.stop()
        server.start()
    return server


@pytest.fixture(scope="session")
def _session_seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    store = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    yield from _for_the_session(store, store.stop)


@pytest.fixture(scope="module")
def seaweed(_session_seaweed: SeaweedFS) -> SeaweedFS:
    """A real SeaweedFS (S3), shared by the session; running when the module starts."""
    return _running_again(_session_seaweed)


@pytest.fixture(scope="session")
def _session_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgreSQL]:
    database = PostgreSQL(tmp_path_factory.mktemp("postgres"))
    yield from _for_the_session(database, database.close)


@pytest.fixture(scope="module")
def postgres(_session_postgres: PostgreSQL) -> PostgreSQL:
    """A real PostgreSQL cluster, shared by the session; running when the module starts."""
    return _running_again(_session_postgres)


@pytest.fixture(scope="session")
def _session_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    rabbit = RabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    yield from _for_the_session(rabbit, rabbit.close)


@pytest.fixture(scope="module")
def broker(_session_broker: RabbitMQ) -> RabbitMQ:
    """A real RabbitMQ node, shared by the session; running when the module starts."""
    return _running_again(_session_broker)


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


def serve_twistd(directory: Path, *options: str) -> Iterator[Server]:
    """``twistd -n stow`` on loopback with ``options``, storing under ``directory``, for a
    fixture to ``yield from``: the server runs until the fixture is torn down."""
    storage = directory / "store"
    twistd = Twistd(storage, "--listen", LOOPBACK_ANY_PORT, *options)
    try:
        (port,) = twistd.ports(1)
        yield Server(f"http://127.0.0.1:{port}", port, storage, twistd.process)
    finally:
        twistd.stop()


@pytest.fixture(scope="module")
def twistd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """This module's ``twistd -n stow``, started by ``Twistd`` (see why in its docstring)."""
    yield from serve_twistd(tmp_path_factory.mktemp("twistd"))


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
