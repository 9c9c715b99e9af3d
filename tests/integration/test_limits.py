"""Upload limits over real sockets: 503 with Retry-After from the headers, never a hang."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.dicom_files import CT, MR, read
from tests.helpers import build_multipart
from tests.integration.conftest import Server
from tests.integration.observe import poll
from tests.integration.streaming import json_body, raw_exchange, raw_post, status_of
from twisted_stow.core.config import StowConfig

BOUNDARY = "limits-boundary"


@pytest.fixture
def stow_config() -> StowConfig:
    """One upload at a time in total (one test overrides it with a per-peer cap)."""
    return StowConfig(max_requests=1)


def upload_request(body: bytes, *, close: bool = True) -> bytes:
    return raw_post(body, BOUNDARY, close=close)


def open_slow_upload(port: int, source: str = "127.0.0.1") -> socket.socket:
    """Blocking: start an upload and leave it half-sent, holding a slot."""
    body = build_multipart([read(CT)], BOUNDARY)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    request = upload_request(body)
    sock.sendall(request[: len(request) - 1000])
    return sock


async def wait_for_active(server: Server, count: int) -> None:
    assert await poll(lambda: server.handle.stow.slots.active == count), (
        f"never saw {count} active uploads"
    )


@pytest_twisted.ensureDeferred
async def test_over_total_limit_gets_503_with_retry_after(stow_server: Server) -> None:
    """A second upload while the only slot is busy: 503 + Retry-After, problem+json."""
    holder = await deferToThread(open_slow_upload, stow_server.port)
    try:
        await wait_for_active(stow_server, 1)
        body = build_multipart([read(MR)], BOUNDARY)
        raw = await deferToThread(raw_exchange, stow_server.port, upload_request(body))
        assert status_of(raw) == 503
        assert b"\r\nRetry-After: 5\r\n" in raw
        assert json_body(raw)["status"] == 503
    finally:
        holder.close()
    await wait_for_active(stow_server, 0)
    # The slot is free again: the next upload is served.
    body = build_multipart([read(MR)], BOUNDARY)
    raw = await deferToThread(raw_exchange, stow_server.port, upload_request(body))
    assert status_of(raw) == 200


@pytest_twisted.ensureDeferred
async def test_slot_is_released_after_a_finished_upload(stow_server: Server) -> None:
    """Two pipelined uploads on one connection: both succeed, no slot left held."""
    first = upload_request(build_multipart([read(CT)], BOUNDARY), close=False)
    second = upload_request(build_multipart([read(MR)], BOUNDARY))
    raw = await deferToThread(raw_exchange, stow_server.port, first + second)
    assert raw.count(b"HTTP/1.1 200 OK") == 2
    assert stow_server.handle.stow.slots.active == 0


@pytest.mark.parametrize("stow_config", [StowConfig(max_requests_per_peer=1)])
@pytest_twisted.ensureDeferred
async def test_per_peer_limit_spares_other_clients(stow_server: Server, stow_config: Any) -> None:
    """A busy 127.0.0.1 is refused with 503 while 127.0.0.2 is served."""
    holder = await deferToThread(open_slow_upload, stow_server.port)
    try:
        await wait_for_active(stow_server, 1)
        body = build_multipart([read(MR)], BOUNDARY)
        raw = await deferToThread(raw_exchange, stow_server.port, upload_request(body))
        assert status_of(raw) == 503

        raw = await deferToThread(
            raw_exchange, stow_server.port, upload_request(body), source="127.0.0.2"
        )
        assert status_of(raw) == 200
    finally:
        holder.close()
