"""A request waiting for its password check (in a thread) inside a real HTTPChannel.

StringTransport and a Clock, no sockets; ``HeldThreads`` stands in for the
KDF's thread pool, so each test decides when the check answers.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from tests.fakes import HeldThreads
from tests.memory.test_request import chunk
from twisted_stow.app import StowService
from twisted_stow.auth.files import entry_with_grant, write_atomically
from twisted_stow.auth.grants import EVERYTHING
from twisted_stow.auth.passwords import hash_password
from twisted_stow.core.config import StowConfig
from twisted_stow.request import MAX_HELD_BYTES
from twisted_stow.site import StowSite
from twisted_stow.storage.memory import MemoryStorage

IDLE_TIMEOUT_SECONDS = 5.0
HEADER_TIMEOUT_SECONDS = 3.0
PASSWORD = "pw"
PAYLOAD = b"D" * 3000  # a single-part body: parsing only, never validated here


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One user, alice, with a cheap scrypt entry."""
    path = tmp_path_factory.mktemp("users") / "users.json"
    entry = entry_with_grant({"password": hash_password(PASSWORD.encode(), n=16)}, EVERYTHING)
    write_atomically(path, {"alice": entry})
    return path


class Connection:
    """One client connection to a service with authentication on."""

    def __init__(self, service: StowService, clock: Clock, host: str = "127.0.0.1") -> None:
        site = StowSite(service, timeout=IDLE_TIMEOUT_SECONDS)
        self.channel: HTTPChannel = site.buildProtocol(IPv4Address("TCP", host, 40000))
        self.channel.callLater = clock.callLater  # type: ignore[method-assign]
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    @property
    def written(self) -> bytes:
        return self.transport.value()


class World:
    """The service, its clock, its storage and its KDF runner."""

    def __init__(self, users: Path, **options: Any) -> None:
        self.clock = Clock()
        self.storage = MemoryStorage(held=True)
        self.threads = HeldThreads()
        config = StowConfig(users_file=users, **options)
        self.service = StowService(
            config,
            self.storage,
            self.clock,
            lambda f, *a: maybeDeferred(f, *a),
            run_kdf=self.threads,
        )

    def connect(self, host: str = "127.0.0.1") -> Connection:
        return Connection(self.service, self.clock, host)


@pytest.fixture
def world(users_file: Path) -> World:
    return World(users_file)


def head(
    password: str = PASSWORD,
    *,
    length: int = len(PAYLOAD),
    content_type: str = "application/dicom",
    extra: bytes = b"",
) -> bytes:
    secret = base64.b64encode(f"alice:{password}".encode())
    return (
        b"POST /studies HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + secret + b"\r\n"
        b"Content-Type: " + content_type.encode() + b"\r\n"
        b"Content-Length: %d\r\n" % length + extra + b"\r\n"
    )


EXPECT = b"Expect: 100-continue\r\n"


def test_the_check_pauses_the_socket_and_defers_100_continue(world: World) -> None:
    """While the KDF runs: socket paused, nothing written, no slot; admitted: 100 Continue."""
    connection = world.connect()
    connection.send(head(extra=EXPECT))
    assert len(world.threads.jobs) == 1
    assert connection.transport.producerState == "paused"
    assert connection.written == b""
    assert world.service.slots.active == 0 and world.storage.writers == []
    world.threads.run_all()
    assert connection.written == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert connection.transport.producerState == "producing"
    assert world.service.slots.active == 1
    connection.send(PAYLOAD)
    assert bytes(world.storage.writers[0].data) == PAYLOAD


def test_body_bytes_of_the_same_read_are_held_and_replayed(world: World) -> None:
    """The body's start, in the read that brought the headers, reaches storage after admission."""
    connection = world.connect()
    connection.send(head(extra=EXPECT) + PAYLOAD[:1000])
    assert world.storage.writers == []
    world.threads.run_all()
    assert bytes(world.storage.writers[0].data) == PAYLOAD[:1000]
    connection.send(PAYLOAD[1000:])
    assert bytes(world.storage.writers[0].data) == PAYLOAD


def test_chunked_pieces_are_replayed_in_order(world: World) -> None:
    """Several chunks held during the check are fed in order, each with its own framing state."""
    connection = world.connect()
    chunked = head().replace(b"Content-Length: %d" % len(PAYLOAD), b"Transfer-Encoding: chunked")
    connection.send(chunked + chunk(PAYLOAD[:100]) + chunk(PAYLOAD[100:2000]))
    connection.send(chunk(PAYLOAD[2000:]))  # as if HTTPChannel resumed the transport once
    assert connection.transport.producerState == "paused"
    world.threads.run_all()
    assert bytes(world.storage.writers[0].data) == PAYLOAD


def test_a_body_complete_before_the_answer_is_processed_after_it(world: World) -> None:
    """Headers and the whole body in one read: after admission the body is stored and answered,
    with no 100 Continue (the client sent everything already) and the idle timeout back."""
    connection = world.connect()
    connection.send(head(extra=EXPECT) + PAYLOAD)
    assert connection.written == b""
    world.threads.run_all()
    assert bytes(world.storage.writers[0].data) == PAYLOAD
    world.storage.writers[0].release()
    written = connection.written
    assert b"100 Continue" not in written
    assert written.startswith(b"HTTP/1.1 409 ")  # not DICOM: the one part failed
    assert world.service.slots.active == 0
    assert connection.channel.timeOut == IDLE_TIMEOUT_SECONDS


def test_a_wrong_password_is_401_after_the_wait(world: World) -> None:
    """A failed check answers 401 through refuse: no 100 Continue, no slot, the failure counted."""
    connection = world.connect()
    connection.send(head("wrong", extra=EXPECT) + PAYLOAD[:500])
    world.threads.run_all()
    written = connection.written
    assert written.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b"100 Continue" not in written
    assert b"WWW-Authenticate: Basic" in written
    assert world.service.slots.active == 0 and world.storage.writers == []
    assert world.service.guard is not None and len(world.service.guard.throttle) == 1


def test_later_header_checks_still_run_after_the_wait(world: World) -> None:
    """Authenticated, then refused by the next check in order (415), as without the wait."""
    connection = world.connect()
    connection.send(head(content_type="text/plain"))
    assert connection.written == b""
    world.threads.run_all()
    assert connection.written.startswith(b"HTTP/1.1 415 ")
    assert world.service.slots.active == 0


def test_a_cached_login_answers_at_once(world: World) -> None:
    """The second request with the same password needs no thread: Twisted's 100 Continue at once."""
    first = world.connect()
    first.send(head())
    world.threads.run_all()
    second = world.connect("127.0.0.2")
    second.send(head(extra=EXPECT))
    assert world.threads.jobs == []
    assert second.written == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert second.transport.producerState == "producing"


def test_disconnect_while_checking_leaks_nothing(world: World) -> None:
    """Gone mid-check: the answer writes nothing, takes no slot, opens no upload; the failure
    still counts against the address."""
    connection = world.connect()
    connection.send(head("wrong", extra=EXPECT) + PAYLOAD[:500])
    connection.channel.connectionLost(Failure(ConnectionError("client went away")))
    world.threads.run_all()
    assert connection.written == b""
    assert world.service.slots.active == 0 and world.storage.writers == []
    assert world.service.guard is not None and len(world.service.guard.throttle) == 1


def test_disconnect_before_a_successful_check_takes_no_slot(world: World) -> None:
    """Gone mid-check with the right password: no slot, no upload, nothing written; the login
    is cached for the next request."""
    connection = world.connect()
    connection.send(head())
    connection.channel.connectionLost(Failure(ConnectionError("client went away")))
    world.threads.run_all()
    assert connection.written == b""
    assert world.service.slots.active == 0 and world.storage.writers == []
    again = world.connect()
    again.send(head())
    assert world.threads.jobs == [] and world.service.slots.active == 1


def test_the_wait_is_neither_idle_nor_slow_nor_header_time(users_file: Path) -> None:
    """A long check: no idle timeout, no 408 from the body rate or the header deadline;
    once admitted the idle timeout applies again."""
    world = World(
        users_file,
        header_timeout_seconds=HEADER_TIMEOUT_SECONDS,
        min_body_rate_bytes=1000,
        body_rate_window_seconds=2.0,
    )
    connection = world.connect()
    connection.send(head(length=100_000))
    world.clock.advance(IDLE_TIMEOUT_SECONDS * 10)
    assert connection.written == b"" and not connection.transport.disconnecting
    world.threads.run_all()
    assert world.service.slots.active == 1
    connection.send(b"x" * 5000)
    world.clock.advance(IDLE_TIMEOUT_SECONDS + 1)
    assert connection.transport.disconnecting


def test_held_bytes_are_bounded(world: World) -> None:
    """A body that keeps coming while the check runs is refused (503) past the bound, not kept."""
    connection = world.connect()
    connection.send(head(length=4 * MAX_HELD_BYTES))
    for _ in range(5):
        connection.send(b"x" * (MAX_HELD_BYTES // 4))
    written = connection.written
    assert written.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    world.threads.run_all()
    assert connection.written == written
    assert world.service.slots.active == 0 and world.storage.writers == []


def test_a_bug_after_the_decision_is_a_500(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception while going on after admission answers 500 and frees the slot."""
    from twisted_stow.request import StreamingRequest

    def broken(self: StreamingRequest, upload: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(StreamingRequest, "_start_upload", broken)
    connection = world.connect()
    connection.send(head())
    world.threads.run_all()
    assert connection.written.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"bug" not in connection.written
    assert world.service.slots.active == 0
