"""Slow and oversized clients over real sockets: 408, 413, idle cut-off, staged parts removed."""

from __future__ import annotations

import socket
import time

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import deferToThread

from tests.dicom_files import CT, MR, read
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.conftest import Server
from tests.integration.crafted import instance, sop_instance_uid, stored_location
from tests.integration.observe import poll, staging_files, stored_files
from tests.integration.streaming import json_body, raw_exchange, status_of
from twisted_stow.core.config import StowConfig

BOUNDARY = "slow-clients"
# The honest upload below sends ten times the minimum rate: a loaded test
# machine that stalls the client for a moment must not fail it.
SLOW = StowConfig(
    header_timeout_seconds=1.0,
    min_body_rate_bytes=10_000,
    body_rate_window_seconds=2.0,
    idle_timeout_seconds=30.0,
)


def head(length: int | None, *, extra: bytes = b"", content_type: str | None = None) -> bytes:
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    kind = content_type or multipart_content_type(BOUNDARY)
    return (
        b"POST /studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Content-Type: {kind}\r\n".encode()
        + framing
        + b"\r\nConnection: close\r\n"
        + extra
        + b"\r\n"
    )


def trickle(
    port: int, first: bytes, drip: bytes, every: float, limit: float
) -> tuple[bytes, float]:
    """Blocking: send ``first``, then ``drip`` one byte at a time; returns what
    the server answered and when (seconds after the first byte)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        sock.sendall(first)
        sock.settimeout(every)
        received = b""
        for byte in drip:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            received += data
            if not data or b"\r\n\r\n" in received:
                break
            if time.monotonic() - start > limit:
                break
        elapsed = time.monotonic() - start
        sock.settimeout(2)
        try:
            while data := sock.recv(65536):
                received += data
        except OSError:
            pass
    return received, elapsed


@pytest.mark.parametrize("stow_config", [SLOW], indirect=True)
@pytest_twisted.ensureDeferred
async def test_trickled_headers_get_408(stow_server: Server) -> None:
    """Headers a byte every 0.2 s: 408 after the 1 s header deadline, not at the 30 s idle."""
    request = head(1000)
    answer, elapsed = await deferToThread(trickle, stow_server.port, b"", request, 0.2, 10.0)
    assert status_of(answer) == 408, answer
    assert json_body(answer)["status"] == 408
    assert elapsed < 5.0


@pytest.mark.parametrize("stow_config", [SLOW], indirect=True)
@pytest_twisted.ensureDeferred
async def test_trickled_body_gets_408_and_the_staged_part_goes(stow_server: Server) -> None:
    """2 MiB at full speed (a staged file exists), then a trickle: 408, staging empty,
    and the instance sent whole before it is kept."""
    root = stow_server.storage
    whole = instance(CT)
    big = instance(MR, padding=4 * 1024 * 1024)
    body = build_multipart([whole, big], BOUNDARY)
    cut = body.index(big) + 2 * 1024 * 1024
    first = head(len(body)) + body[:cut]

    seen_staged: list[bool] = []

    async def watch() -> None:
        seen_staged.append(await poll(lambda: staging_files(root) != [], 5.0))

    watching = ensureDeferred(watch())
    answer, _ = await deferToThread(
        trickle, stow_server.port, first, body[cut : cut + 200], 0.2, 10.0
    )
    await watching
    assert status_of(answer) == 408, answer
    assert seen_staged == [True]
    assert await poll(lambda: staging_files(root) == [])
    assert stored_location(root, whole).read_bytes() == whole
    assert not stored_location(root, big).exists()


@pytest.mark.parametrize("stow_config", [SLOW], indirect=True)
@pytest_twisted.ensureDeferred
async def test_an_honest_slow_upload_passes(stow_server: Server) -> None:
    """About 100 KB/s (ten times the minimum) for 2 s: stored, 200."""
    data = instance(CT, padding=160_000)
    body = build_multipart([data], BOUNDARY)

    def send_slowly() -> bytes:
        with socket.create_connection(("127.0.0.1", stow_server.port), timeout=10) as sock:
            sock.sendall(head(len(body)))
            for offset in range(0, len(body), 10_000):
                sock.sendall(body[offset : offset + 10_000])
                time.sleep(0.1)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            return received

    answer = await deferToThread(send_slowly)
    assert status_of(answer) == 200, answer
    assert stored_location(stow_server.storage, data).read_bytes() == data


@pytest.mark.parametrize(
    "stow_config", [StowConfig(idle_timeout_seconds=1.0, min_body_rate_bytes=0)], indirect=True
)
@pytest_twisted.ensureDeferred
async def test_a_silent_client_is_cut_off_and_its_staged_part_removed(
    stow_server: Server,
) -> None:
    """A whole instance, 2 MiB of the next part, then silence past the idle
    timeout: 408 naming the instance stored whole, the half part's staged file
    removed, the connection closed."""
    root = stow_server.storage
    first, big = instance(CT), instance(MR, padding=4 * 1024 * 1024)
    body = build_multipart([first, big], BOUNDARY)
    sent = body.index(big) + 2 * 1024 * 1024

    def send_and_wait() -> tuple[bytes, float]:
        with socket.create_connection(("127.0.0.1", stow_server.port), timeout=10) as sock:
            sock.sendall(head(len(body)) + body[:sent])
            start = time.monotonic()
            received = b""
            try:
                while chunk := sock.recv(65536):
                    received += chunk
            except ConnectionResetError:
                pass
            return received, time.monotonic() - start

    staged_seen = ensureDeferred(poll(lambda: staging_files(root) != [], 5.0))
    received, waited = await deferToThread(send_and_wait)
    assert await staged_seen
    assert status_of(received) == 408, received[:300]
    problem = json_body(received)
    assert "no byte of the body arrived for 1 seconds" in problem["detail"]
    assert problem["storedSOPInstanceUIDs"] == [sop_instance_uid(first)]
    assert 0.9 < waited < 10
    assert await poll(lambda: staging_files(root) == [])
    assert stored_files(root) == [stored_location(root, first)]
    assert stored_location(root, first).read_bytes() == first


PART_LIMIT = StowConfig(max_part_bytes=200_000)


@pytest.mark.parametrize("stow_config", [PART_LIMIT], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_part_over_max_part_size_stops_the_request_with_413(
    stow_server: Server,
) -> None:
    """[small, 2 MiB, small]: 413 when the big part passes the limit; the first
    instance is stored, the big one's staged file removed, the third never read."""
    root = stow_server.storage
    first, big, third = instance(CT), instance(MR, padding=2 * 1024 * 1024), instance(CT)
    body = build_multipart([first, big, third], BOUNDARY)
    answer = await deferToThread(raw_exchange, stow_server.port, head(len(body)) + body)
    assert status_of(answer) == 413, answer
    problem = json_body(answer)
    assert "200000 bytes per instance" in problem["detail"]
    # Committed on its own schedule: a part received whole is kept.
    assert await poll(lambda: stored_location(root, first).exists())
    assert stored_location(root, first).read_bytes() == first
    assert await poll(lambda: staging_files(root) == [])
    assert not stored_location(root, big).exists()
    assert not stored_location(root, third).exists()
    assert stow_server.handle.stow.slots.active == 0


@pytest.mark.parametrize("stow_config", [PART_LIMIT], indirect=True)
@pytest_twisted.ensureDeferred
async def test_parts_at_the_limit_are_stored(stow_server: Server) -> None:
    """Instances under max-part-size in a body far over it: all stored, 200."""
    parts = [instance(CT) for _ in range(8)]  # 8 x 39 KB > 200,000 bytes
    body = build_multipart(parts, BOUNDARY)
    answer = await deferToThread(raw_exchange, stow_server.port, head(len(body)) + body)
    assert status_of(answer) == 200, answer
    assert len(stored_files(stow_server.storage)) == len(parts)


@pytest.mark.parametrize("stow_config", [PART_LIMIT], indirect=True)
@pytest_twisted.ensureDeferred
async def test_single_part_over_max_part_size_is_413_before_100_continue(
    stow_server: Server,
) -> None:
    """application/dicom with Content-Length over the part limit: 413 from the headers."""
    request = head(5_000_000, extra=b"Expect: 100-continue\r\n", content_type="application/dicom")
    answer = await deferToThread(raw_exchange, stow_server.port, request)
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert b"100 Continue" not in answer


@pytest.mark.parametrize("stow_config", [StowConfig(max_requests=1)], indirect=True)
@pytest_twisted.ensureDeferred
async def test_503_is_sent_instead_of_100_continue(stow_server: Server) -> None:
    """Over --max-requests with Expect: 100-continue: the 503 comes first, no 100 Continue."""
    body = build_multipart([read(CT)], BOUNDARY)

    def hold() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", stow_server.port), timeout=10)
        sock.sendall(head(len(body)) + body[:100])
        return sock

    holder = await deferToThread(hold)
    try:
        assert await poll(lambda: stow_server.handle.stow.slots.active == 1)
        request = head(len(body), extra=b"Expect: 100-continue\r\n")
        answer = await deferToThread(raw_exchange, stow_server.port, request)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"Retry-After: 5\r\n" in answer
        assert b"100 Continue" not in answer
    finally:
        holder.close()
