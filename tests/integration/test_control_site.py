"""A worker's site whose limits are the main process's: real sockets, real control connections.

The site is the in-process server with ``control`` set (``make_services(...,
control=...)``); a second worker end on the same ``SharedState`` stands for
the other worker process.  Both control connections are real UNIX
socketpairs in this test's reactor, and the HTTP client a real socket.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

from tests.dicom_files import CT, read
from tests.fakes import HeldThreads
from tests.helpers import build_multipart
from tests.integration.control_pairs import Pair, connect
from tests.integration.observe import poll
from tests.integration.streaming import json_body, raw_exchange, raw_post, status_of
from twisted_stow.app import StowService
from twisted_stow.auth.files import entry_with_grant, write_atomically
from twisted_stow.auth.grants import EVERYTHING
from twisted_stow.auth.passwords import hash_password
from twisted_stow.core.config import StowConfig
from twisted_stow.ops.drain import Drain
from twisted_stow.ops.metrics import DRAINING
from twisted_stow.site import StowSite, make_services
from twisted_stow.storage.memory import MemoryStorage
from twisted_stow.workers.shared import SharedState

BOUNDARY = "control-site-boundary"
EXPECT = b"Expect: 100-continue\r\n"
PASSWORD = "alice-pw"


@dataclass
class Worker:
    """The worker under test (its site on a port) and the other worker's control end."""

    shared: SharedState
    this: Pair
    other: Pair
    site: StowSite
    port: int


@pytest_twisted.async_yield_fixture
async def worker(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Worker]:
    from twisted.internet import reactor

    config: StowConfig = getattr(request, "param", StowConfig(max_requests=1))
    config = replace(config, storage=tmp_path / "store")
    if config.users_file is not None:
        users = tmp_path / "users.json"
        entry = entry_with_grant({"password": hash_password(PASSWORD.encode(), n=16)}, EVERYTHING)
        write_atomically(users, {"alice": entry})
        config = replace(config, users_file=users)
    shared = SharedState(config, reactor.seconds)
    this, other = connect(reactor, shared, "1"), connect(reactor, shared, "2")
    services, site = make_services(config, reactor, control=this.worker)
    services.startService()
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        yield Worker(shared, this, other, site, port.getHost().port)
    finally:
        await port.stopListening()
        await services.stopService()
        for pair in (this, other):
            if pair.worker.transport is not None:
                pair.worker.transport.loseConnection()


def ct_upload(*, expect: bool = False, password: str | None = None) -> tuple[bytes, bytes]:
    """Head and body of a one-instance upload, the head asking to close after it."""
    request = raw_post(build_multipart([read(CT)], BOUNDARY), BOUNDARY)
    head, _, body = request.partition(b"\r\n\r\n")
    if password is not None:
        secret = base64.b64encode(f"alice:{password}".encode())
        head += b"\r\nAuthorization: Basic " + secret
    return head + b"\r\n" + (EXPECT if expect else b"") + b"\r\n", body


def head_only_exchange(port: int, head: bytes, source: str = "127.0.0.1") -> bytes:
    """Blocking: send only the head (asking for 100 Continue), read until the server closes.

    A server that answered 100 Continue instead would leave this waiting for
    the body: the read times out and the 100 is in what is returned.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(head)
        received = b""
        while data := s.recv(65536):
            received += data
    return received


def continue_then_body(port: int, head: bytes, body: bytes) -> bytes:
    """Blocking: send the head, wait for 100 Continue, then the body; read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        received = b""
        while b"\r\n\r\n" not in received:
            received += s.recv(65536)
        assert received == b"HTTP/1.1 100 Continue\r\n\r\n", received
        s.sendall(body)
        while data := s.recv(65536):
            received += data
    return received


@pytest_twisted.ensureDeferred
async def test_a_slot_held_by_the_other_worker_gets_503_before_the_body(worker: Worker) -> None:
    """--max-requests 1, the slot held through the other worker: this worker answers 503 +
    Retry-After (problem+json) from the headers, with no 100 Continue; freed, the same upload
    is stored."""
    release = await worker.other.worker.slots.acquire("127.0.0.5")
    head, body = ct_upload(expect=True)
    raw = await deferToThread(head_only_exchange, worker.port, head)
    assert status_of(raw) == 503
    assert b"100 Continue" not in raw
    assert b"\r\nRetry-After: 5\r\n" in raw
    assert json_body(raw)["detail"] == "the server is receiving 1 uploads, its limit"
    release()
    assert await poll(lambda: worker.shared.slots.active == 0)
    raw = await deferToThread(continue_then_body, worker.port, head, body)
    assert b"HTTP/1.1 200 OK\r\n" in raw
    # Released when the response was finished, on the main process's side too.
    assert await poll(lambda: worker.shared.slots.active == 0)
    assert worker.site.stow.slots.active == 0


@pytest.mark.parametrize("worker", [StowConfig(max_requests_per_peer=1)], indirect=True)
@pytest_twisted.ensureDeferred
async def test_the_per_peer_limit_counts_the_other_workers_uploads(worker: Worker) -> None:
    """127.0.0.1 has an upload on the other worker: refused here; 127.0.0.2 is served here.
    The whole request (head and body) arrives in one write: held while the slot is asked for,
    then stored."""
    await worker.other.worker.slots.acquire("127.0.0.1")
    head, body = ct_upload()
    raw = await deferToThread(raw_exchange, worker.port, head + body)
    assert status_of(raw) == 503
    assert "from 127.0.0.1 are running" in json_body(raw)["detail"]
    raw = await deferToThread(raw_exchange, worker.port, head + body, source="127.0.0.2")
    assert status_of(raw) == 200


@pytest_twisted.ensureDeferred
async def test_a_client_gone_while_the_slot_is_asked_for_leaks_no_slot(worker: Worker) -> None:
    """The request waits for the main process's answer (socket paused, nothing written) and
    the client goes: the slot granted after that is freed, so this worker's next acquire,
    behind the release on the same connection, gets the only slot."""
    channel = worker.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    channel.makeConnection(transport)
    head, _ = ct_upload(expect=True)
    channel.dataReceived(head)
    assert transport.producerState == "paused" and transport.value() == b""
    channel.connectionLost(Failure(ConnectionError("client went away")))
    release = await worker.this.worker.slots.acquire("127.0.0.1")
    assert worker.shared.slots.active == 1
    assert transport.value() == b""
    release()


@pytest.mark.parametrize("worker", [StowConfig()], indirect=True)
@pytest_twisted.ensureDeferred
async def test_without_caps_the_slots_stay_local(worker: Worker) -> None:
    """No --max-requests, no per-peer cap: nothing to share, so the worker asks the main process
    nothing: 100 Continue is written within the call that delivered the headers, as in a single
    process, and the main process counts no slot."""
    channel = worker.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    channel.makeConnection(transport)
    head, _ = ct_upload(expect=True)
    channel.dataReceived(head)
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert worker.site.stow.slots.active == 1 and worker.shared.slots.active == 0
    channel.connectionLost(Failure(ConnectionError("client went away")))
    assert worker.site.stow.slots.active == 0


# Authentication on (the fixture writes alice's users file), no upload caps.
WITH_USERS = StowConfig(users_file=Path("users.json"))


@pytest.mark.parametrize("worker", [WITH_USERS], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_peer_blocked_through_the_other_worker_gets_429_here(worker: Worker) -> None:
    """Five failures of 127.0.0.1 reported through the other worker: the main process blocks
    it and tells this worker, which answers 429 + Retry-After from the headers, even with the
    right password; another address is still served, its password checked against the main
    process's budget."""
    for _ in range(5):
        worker.other.worker.throttle.failed("127.0.0.1")
    assert await poll(lambda: worker.site.stow.throttle.retry_after("127.0.0.1") is not None)
    head, body = ct_upload(expect=True, password=PASSWORD)
    raw = await deferToThread(head_only_exchange, worker.port, head)
    assert status_of(raw) == 429
    assert b"\r\nRetry-After: 10\r\n" in raw or b"\r\nRetry-After: 9\r\n" in raw
    raw = await deferToThread(raw_exchange, worker.port, head + body, source="127.0.0.2")
    assert status_of(raw) == 200


@pytest.mark.parametrize("worker", [WITH_USERS], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_wrong_password_here_counts_for_the_whole_server(worker: Worker) -> None:
    """Wrong passwords sent to this worker are counted by the main process: after five, the
    other worker refuses the address too."""
    head, _ = ct_upload(password="wrong")
    for _ in range(5):
        raw = await deferToThread(raw_exchange, worker.port, head, source="127.0.0.3")
        assert status_of(raw) == 401
    assert await poll(lambda: worker.shared.throttle.retry_after("127.0.0.3") is not None)
    assert await poll(lambda: worker.other.worker.throttle.retry_after("127.0.0.3") is not None)


class Held:
    """A worker's service with a password check held (``threads``) and a real control
    connection whose main end can be made to read nothing for a while."""

    def __init__(self, tmp_path: Path) -> None:
        from twisted.internet import reactor

        users = tmp_path / "users.json"
        entry = entry_with_grant({"password": hash_password(PASSWORD.encode(), n=16)}, EVERYTHING)
        write_atomically(users, {"alice": entry})
        config = StowConfig(max_requests=1, users_file=users, storage=tmp_path / "store")
        self.shared = SharedState(config, reactor.seconds)
        self.pair = connect(reactor, self.shared, "1")
        self.threads = HeldThreads()
        self.storage = MemoryStorage()
        self.service = service = StowService(
            config,
            self.storage,
            reactor,
            lambda f, *a: maybeDeferred(f, *a),
            run_kdf=self.threads,
            control=self.pair.worker,
        )
        channel = StowSite(service, timeout=30).buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 40000)
        )
        self.channel: Any = channel
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def main_reads(self, reading: bool) -> None:
        transport: Any = self.pair.main.transport
        if reading:
            transport.resumeProducing()
        else:
            transport.pauseProducing()

    def close(self) -> None:
        if self.pair.worker.transport is not None:
            self.pair.worker.transport.loseConnection()


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Held]:
    built = Held(tmp_path)
    yield built
    built.close()


@pytest_twisted.ensureDeferred
async def test_password_then_slot_then_100_continue(held: Held) -> None:
    """Three waits in a row, the main process's KDF budget, the password check and then the
    main process's slot: the socket
    stays paused and nothing is written until both answered, then 100 Continue and the body
    is stored."""
    head, body = ct_upload(expect=True, password=PASSWORD)
    held.channel.dataReceived(head)
    # The KDF runs once the main process's budget said yes.
    assert await poll(lambda: held.threads.jobs)
    held.threads.run_all()
    assert held.transport.value() == b"" and held.transport.producerState == "paused"
    assert await poll(lambda: held.transport.value() != b"")
    assert held.transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert held.shared.slots.active == 1
    held.channel.dataReceived(body)
    assert await poll(lambda: b"200 OK" in held.transport.value())
    assert await poll(lambda: held.shared.slots.active == 0)


@pytest_twisted.ensureDeferred
async def test_gone_after_the_password_while_the_slot_is_asked_for(held: Held) -> None:
    """The password was checked, the slot is asked for, and the client goes before the main
    process has even read the question: the cancel reaches the slot's Deferred through the
    authorization's, so the release follows the acquire, and the main process, once it
    reads both, holds no slot (the worker's next acquire gets the only one)."""
    head, _ = ct_upload(expect=True, password=PASSWORD)
    held.channel.dataReceived(head)
    assert await poll(lambda: held.threads.jobs)
    held.main_reads(False)
    held.threads.run_all()
    held.channel.connectionLost(Failure(ConnectionError("client went away")))
    held.main_reads(True)
    release = await held.pair.worker.slots.acquire("127.0.0.1")
    assert held.shared.slots.active == 1 and held.transport.value() == b""
    release()


@pytest_twisted.ensureDeferred
async def test_a_drain_begun_while_the_slot_is_asked_for_refuses_the_request(
    held: Held,
) -> None:
    """SIGTERM arrives while the main process's answer is awaited: the slot it grants is
    freed and the request refused (503) as if it had come after the drain began."""
    held.service.drain = Drain(Clock())  # its end would stop this test's reactor
    head, _ = ct_upload(expect=True, password=PASSWORD)
    held.channel.dataReceived(head)
    assert await poll(lambda: held.threads.jobs)
    held.main_reads(False)
    held.threads.run_all()
    try:
        held.service.drain.begin()
        held.main_reads(True)
        assert await poll(lambda: held.transport.value() != b"")
    finally:
        DRAINING.set(0)
    assert held.transport.value().startswith(b"HTTP/1.1 503 ")
    assert b"shutting down" in held.transport.value()
    assert await poll(lambda: held.shared.slots.active == 0)
