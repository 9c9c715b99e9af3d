"""Edge cases at the HTTP edge, over real sockets (each one a past review finding)."""

from __future__ import annotations

import json
import socket
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
import pytest_twisted
from pydicom.uid import generate_uid
from twisted.internet.threads import deferToThread

from tests.dicom_files import CT, read, stored_path, uids
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.conftest import Server
from tests.integration.observe import poll, staging_files, stored_files
from tests.integration.streaming import (
    ChunkedProducer,
    failure_reasons,
    json_body,
    raw_exchange,
    split,
    status_of,
)
from twisted_stow.core.config import StowConfig
from twisted_stow.site import make_services

BOUNDARY = "edges-boundary"
CONTENT_TYPE = multipart_content_type(BOUNDARY)


def copies_of_ct(count: int) -> list[bytes]:
    """``count`` distinct valid instances: CT_small with fresh SOP Instance UIDs."""
    out = []
    for _ in range(count):
        ds = pydicom.dcmread(CT)
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def request_bytes(body: bytes, path: str = "/studies", extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {CONTENT_TYPE}\r\n".encode()
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


@pytest_twisted.ensureDeferred
async def test_tiny_http_chunks(stow_server: Server, client: Any) -> None:
    """A part sent in 20-byte chunks (thousands of pieces per write batch) is stored intact."""
    body = build_multipart([read(CT)], BOUNDARY)
    response = await client.post(
        stow_server.url + "/studies",
        data=ChunkedProducer(split(body, 20)),
        headers={"Content-Type": [CONTENT_TYPE]},
    )
    content = await response.content()
    assert response.code == 200, content
    assert stored_path(stow_server.storage, CT).read_bytes() == read(CT)


@pytest_twisted.ensureDeferred
async def test_disconnect_after_the_whole_body_keeps_every_part(stow_server: Server) -> None:
    """A client that sends everything and hangs up: all its instances are still stored."""
    parts = copies_of_ct(30)
    body = build_multipart(parts, BOUNDARY)

    def send_and_vanish() -> None:
        with socket.create_connection(("127.0.0.1", stow_server.port)) as sock:
            sock.sendall(request_bytes(body))

    await deferToThread(send_and_vanish)
    assert await poll(lambda: len(stored_files(stow_server.storage)) == len(parts))
    assert await poll(lambda: not staging_files(stow_server.storage))
    stored = {p.read_bytes() for p in stored_files(stow_server.storage)}
    assert stored == set(parts)


@pytest.mark.parametrize(
    ("stow_config", "forwarded", "expected_prefix"),
    [
        (
            StowConfig(trust_forwarded_headers=True),
            b"X-Forwarded-Proto: HTTPS\r\n",
            "https://127.0.0.1/",
        ),
        (
            StowConfig(trust_forwarded_headers=True),
            b"X-Forwarded-Proto: wss\r\n",
            "http://127.0.0.1:{port}/",
        ),
    ],
    indirect=["stow_config"],
)
@pytest_twisted.ensureDeferred
async def test_odd_forwarded_proto_never_fails_a_stored_upload(
    stow_server: Server, forwarded: bytes, expected_prefix: str
) -> None:
    """Upper-case or unknown X-Forwarded-Proto: a valid URL scheme, never a 500."""
    raw = await deferToThread(
        raw_exchange,
        stow_server.port,
        request_bytes(build_multipart([read(CT)], BOUNDARY), extra=forwarded),
    )
    assert status_of(raw) == 200
    url = json_body(raw)["00081199"]["Value"][0]["00081190"]["Value"][0]
    assert url.startswith(expected_prefix.format(port=stow_server.port))


@pytest_twisted.ensureDeferred
async def test_unix_socket_listener_builds_retrieve_urls(tmp_path: Path) -> None:
    """Behind a proxy on a UNIX socket (no local port) uploads succeed with sane URLs."""
    from twisted.internet import reactor

    services, site = make_services(StowConfig(storage=tmp_path / "store"), reactor)
    services.startService()
    path = str(tmp_path / "stow.sock")
    port = reactor.listenUNIX(path, site)
    body = build_multipart([read(CT)], BOUNDARY)

    def exchange() -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(request_bytes(body).replace(b"Host: 127.0.0.1", b"Host: pacs.example"))
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            return received

    try:
        raw = await deferToThread(exchange)
    finally:
        await port.stopListening()
        await services.stopService()
    assert status_of(raw) == 200, raw
    url = json_body(raw)["00081199"]["Value"][0]["00081190"]["Value"][0]
    assert url.startswith("http://pacs.example/studies/")


@pytest_twisted.ensureDeferred
async def test_escaped_ae_title_stays_escaped_in_retrieve_url(stow_server: Server) -> None:
    """A percent-encoded AE title comes back percent-encoded, not as a broken URL."""
    raw = await deferToThread(
        raw_exchange,
        stow_server.port,
        request_bytes(build_multipart([read(CT)], BOUNDARY), path="/aets/A%20B%3Fx/rs/studies"),
    )
    assert status_of(raw) == 200
    url = json_body(raw)["00081199"]["Value"][0]["00081190"]["Value"][0]
    assert f"/aets/A%20B%3Fx/rs/studies/{uids(CT)[2]}/" in url


@pytest.mark.parametrize(
    "stow_config", [StowConfig(max_requests=1, max_body_bytes=20_000)], indirect=True
)
@pytest_twisted.ensureDeferred
async def test_mid_body_413_frees_the_upload_slot(stow_server: Server, client: Any) -> None:
    """A chunked body refused half-way (413) does not hold the only slot through the linger."""
    big = build_multipart([read(CT)], BOUNDARY)  # 39 KB > 20,000 bytes
    request = (
        f"POST /studies HTTP/1.1\r\nHost: x\r\nContent-Type: {CONTENT_TYPE}\r\n".encode()
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in split(big, 4096))
        + b"0\r\n\r\n"
    )
    raw = await deferToThread(raw_exchange, stow_server.port, request)
    assert status_of(raw) == 413
    assert stow_server.handle.stow.slots.active == 0
    small = build_multipart([b"not dicom"], BOUNDARY)
    raw = await deferToThread(raw_exchange, stow_server.port, request_bytes(small))
    assert status_of(raw) == 409  # served (and refused per instance), not 503


@pytest_twisted.ensureDeferred
async def test_non_utf8_path_is_a_400_problem(stow_server: Server) -> None:
    """A path that does not decode as UTF-8: 400 application/problem+json."""
    raw = await deferToThread(
        raw_exchange, stow_server.port, b"GET /studies%FF HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert status_of(raw) == 400
    assert b"Content-Type: application/problem+json" in raw


@pytest_twisted.ensureDeferred
async def test_empty_parts_cost_no_files(stow_server: Server, client: Any) -> None:
    """Thousands of empty parts: each one 0xC000, and no staging file is ever created."""
    count = 3000
    body = (
        b"".join(
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n\r\n".encode()
            for _ in range(count)
        )
        + f"--{BOUNDARY}--".encode()
    )
    created: list[str] = []
    staging_dir = stow_server.storage / ".staging"
    response = await client.post(
        stow_server.url + "/studies", data=body, headers={"Content-Type": [CONTENT_TYPE]}
    )
    model = json.loads(await response.content())
    created.extend(p.name for p in staging_dir.iterdir())
    assert response.code == 409
    assert failure_reasons(model, "0008119A") == [0xC000] * count
    assert created == []
