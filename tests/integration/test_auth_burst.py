"""A real ``twistd -n stow`` whose users file holds an n=2^17 scrypt entry (~0.4 s a check).

Wrong passwords from several addresses at once must not hold up anyone
else: the KDF runs in a thread, so an honest upload with a bearer token is
answered while password checks are still running, and every refusal (401,
or 503 past the KDF budget) reaches its client whole.  Nothing here
measures time: the test compares which answers arrived first.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread

from tests.auth_material import dear_password_twistd
from tests.dicom_files import CT, read, stored_path
from tests.integration.conftest import client_for
from tests.integration.test_auth import headers_only
from tests.integration.test_conformance import parse_raw, post_multipart

TOKEN = "honest-uploader-token-0123456789abcdefghijklmnop"
# Wrong passwords, one per address (127.0.0.2 ...): more than the KDF budget
# admits at once, so some are answered 503 while the others are checked.
WRONG_ADDRESSES = 6
READ_TIMEOUT_SECONDS = 60.0


@dataclass
class Server:
    port: int
    storage: Path


@pytest.fixture(scope="module")
def dear_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """twistd with alice at scrypt n=2^17 and a static token for the honest uploader."""
    directory = tmp_path_factory.mktemp("dear")
    twistd = dear_password_twistd(directory, password=b"the right password", token=TOKEN.encode())
    try:
        (port,) = twistd.ports(1)
        yield Server(port, twistd.storage)
    finally:
        twistd.stop()


def exchange_or_reset(port: int, data: bytes, source: str) -> bytes | None:
    """Blocking: send ``data``, read until the server closes; None if the connection was reset."""
    received = b""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=READ_TIMEOUT_SECONDS, source_address=(source, 0)
    ) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            return None
    return received


@pytest_twisted.ensureDeferred
async def test_wrong_passwords_do_not_hold_up_an_honest_upload(dear_server: Server) -> None:
    """While n=2^17 checks of wrong passwords run, a bearer-token upload is answered (before
    some of them), and every refusal is read whole: 401 or 503, never a reset."""
    from twisted.internet import reactor

    secret = base64.b64encode(b"alice:a wrong guess").decode()
    request = headers_only("/studies", f"Authorization: Basic {secret}", length=0)
    first_busy: Deferred[None] = Deferred()

    def note_busy(raw: bytes | None) -> bytes | None:
        # A 503 means the budget is spent: the checks it admitted are running.
        if raw is not None and parse_raw(raw).code == 503 and not first_busy.called:
            first_busy.callback(None)
        return raw

    wrong = [
        deferToThread(exchange_or_reset, dear_server.port, request, f"127.0.0.{2 + n}").addCallback(
            note_busy
        )
        for n in range(WRONG_ADDRESSES)
    ]
    await first_busy
    client, pool = client_for(reactor)
    try:
        reply = await post_multipart(
            client,
            f"http://127.0.0.1:{dear_server.port}/studies",
            [read(CT)],
            {"Authorization": [f"Bearer {TOKEN}"]},
        )
        unanswered = [n for n, answer in enumerate(wrong) if not answer.called]
    finally:
        pool.closeCachedConnections()
    assert reply.code == 200, reply.body
    assert stored_path(dear_server.storage, CT).read_bytes() == read(CT)
    answers = await gatherResults(wrong)
    assert None not in answers, "a refusal was lost to a connection reset"
    statuses = [parse_raw(raw).code for raw in answers if raw is not None]
    assert set(statuses) <= {401, 503} and 401 in statuses and 503 in statuses
    # The honest answer came while at least one password was still being checked.
    assert any(statuses[n] == 401 for n in unanswered), (statuses, unanswered)
