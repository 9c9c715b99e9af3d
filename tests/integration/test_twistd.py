"""A real ``twistd -n stow`` process: treq, the Python dicomweb-client, options, signals."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
import pytest_twisted
import requests
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from twisted.internet.threads import deferToThread

from tests.dicom_files import CT, MR, SR, TEST_FILES, read, stored_path, uids
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.conftest import LOOPBACK_ANY_PORT, Server, Twistd, twistd_command
from tests.integration.observe import poll, staging_files, stored_files
from tests.integration.streaming import (
    ChunkedProducer,
    fixed_length,
    raw_exchange,
    sop_instance_uids,
    split,
    status_of,
)
from twisted_stow.tap import Options

BOUNDARY = "twistd-test-boundary-0123456789"
THREE = [CT, MR, SR]
OVERLAY = TEST_FILES / "examples_overlay.dcm"  # 321,700 bytes: four of them exceed 1 MB
# dicomweb-client 0.61 sends bodies above its chunk size (10**6) chunked.
DICOMWEB_CLIENT_CHUNK_BYTES = 10**6
# dicomweb-client's fixed boundary (web.py, _http_post_multipart_application_dicom).
DICOMWEB_CLIENT_BOUNDARY = b"0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"
POLL_SECONDS = 10.0
ROUTE_PREFIXES = ["", "/dicomweb", "/aets/AE1/rs"]


def path_of(root: Path, ds: Dataset) -> Path:
    """Where the server stores ``ds`` under ``root``."""
    return root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"


def encode(ds: Dataset) -> bytes:
    """What dicomweb-client puts in a part: ``pydicom.dcmwrite`` into a BytesIO."""
    with BytesIO() as buffer:
        pydicom.dcmwrite(buffer, ds)
        return buffer.getvalue()


def with_new_uid(path: Path) -> Dataset:
    """The dataset of ``path`` as a new instance (SOP Instance UID in dataset and file meta)."""
    ds = pydicom.dcmread(path)
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    # Round-trip, so that derived elements (the group length) match what is sent.
    return pydicom.dcmread(BytesIO(encode(ds)))


async def post(client: Any, url: str, body: Any, boundary: str = BOUNDARY) -> tuple[int, Any]:
    response = await client.post(
        url, data=body, headers={"Content-Type": [multipart_content_type(boundary)]}
    )
    return response.code, await response.content()


# 1. treq, streamed bodies


@pytest.mark.parametrize("framing", ["fixed-length", "chunked"])
@pytest_twisted.ensureDeferred
async def test_treq_streamed_upload(twistd_server: Server, client: Any, framing: str) -> None:
    """CT, MR, SR streamed by treq, Content-Length or chunked: 200, all listed, bytes identical."""
    body = build_multipart([read(p) for p in THREE], BOUNDARY)
    if framing == "fixed-length":
        producer: Any = fixed_length(body)
    else:
        producer = ChunkedProducer(split(body, 7000))
    code, content = await post(client, twistd_server.url + "/studies", producer)
    assert code == 200, content
    assert sop_instance_uids(json.loads(content)) == [uids(p)[1] for p in THREE]
    for path in THREE:
        assert stored_path(twistd_server.storage, path).read_bytes() == read(path)


# 2. The Python dicomweb-client


class RecordingSession(requests.Session):
    """A requests session that keeps each request's headers and the exact body bytes sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[dict[str, str], bytearray]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        recorded = bytearray()
        self.sent.append((dict(request.headers), recorded))
        body = request.body
        if isinstance(body, (bytes, bytearray)):
            recorded.extend(body)
        elif body is not None:  # dicomweb-client's chunk generator: record as it is sent

            def tee(chunks: Any) -> Iterator[bytes]:
                for chunk in chunks:
                    recorded.extend(chunk)
                    yield chunk

            request.body = tee(body)
        return super().send(request, **kwargs)


def parts_of_dicomweb_client_body(body: bytes) -> list[bytes]:
    """The payloads of a dicomweb-client body (leading CRLF, none after the close delimiter)."""
    delimiter = b"\r\n--" + DICOMWEB_CLIENT_BOUNDARY
    pieces = body.split(delimiter)
    assert pieces[0] == b"" and pieces[-1] == b"--", (pieces[0][:80], pieces[-1][:80])
    head = b"\r\nContent-Type: application/dicom\r\n\r\n"
    payloads = []
    for piece in pieces[1:-1]:
        assert piece.startswith(head), piece[:80]
        payloads.append(piece[len(head) :])
    return payloads


def store_with_dicomweb_client(
    base_url: str, datasets: list[Dataset]
) -> tuple[Dataset, dict[str, str], bytes]:
    """Blocking: ``DICOMwebClient(base_url).store_instances(datasets)``; (result, headers, body)."""
    from dicomweb_client import DICOMwebClient

    session = RecordingSession()
    result = DICOMwebClient(base_url, session=session).store_instances(datasets=datasets)
    assert len(session.sent) == 1, "one POST, no retry"
    headers, body = session.sent[0]
    return result, headers, bytes(body)


def assert_stored_as_sent(
    root: Path, datasets: list[Dataset], result: Dataset, body: bytes, retrieve_base: str
) -> None:
    """Every dataset listed in ``result`` and stored as exactly the bytes of its part."""
    sent_uids = [str(ds.SOPInstanceUID) for ds in datasets]
    listed = [str(item.ReferencedSOPInstanceUID) for item in result.ReferencedSOPSequence]
    assert listed == sent_uids
    assert "FailedSOPSequence" not in result
    for item, ds in zip(result.ReferencedSOPSequence, datasets, strict=True):
        assert item.RetrieveURL == (
            f"{retrieve_base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )
    parts = parts_of_dicomweb_client_body(body)
    assert len(parts) == len(datasets)
    for ds, part in zip(datasets, parts, strict=True):
        assert part == encode(ds)  # the client's own encoding, reproduced
        stored = path_of(root, ds).read_bytes()
        assert stored == part
        parsed = pydicom.dcmread(BytesIO(stored))
        assert parsed.file_meta == ds.file_meta
        for element in ds:
            assert parsed[element.tag] == element, element.tag
        assert len(parsed) == len(ds)


@pytest.mark.parametrize("prefix", ROUTE_PREFIXES)
@pytest_twisted.ensureDeferred
async def test_dicomweb_client_small_body(twistd_server: Server, prefix: str) -> None:
    """dicomweb-client stores CT, MR, SR with Content-Length on each route family, bytes as sent."""
    datasets = [pydicom.dcmread(p) for p in THREE]
    base = twistd_server.url + prefix
    result, headers, body = await deferToThread(store_with_dicomweb_client, base, datasets)
    assert "Transfer-Encoding" not in headers
    assert int(headers["Content-Length"]) == len(body) <= DICOMWEB_CLIENT_CHUNK_BYTES
    assert_stored_as_sent(twistd_server.storage, datasets, result, body, base)


@pytest.mark.parametrize("prefix", ROUTE_PREFIXES)
@pytest_twisted.ensureDeferred
async def test_dicomweb_client_chunked_body(twistd_server: Server, prefix: str) -> None:
    """dicomweb-client sends a body over 1 MB chunked; every instance stored as sent."""
    datasets = [with_new_uid(OVERLAY) for _ in range(4)] + [with_new_uid(CT)]
    base = twistd_server.url + prefix
    result, headers, body = await deferToThread(store_with_dicomweb_client, base, datasets)
    assert headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in headers
    assert len(body) > DICOMWEB_CLIENT_CHUNK_BYTES
    assert_stored_as_sent(twistd_server.storage, datasets, result, body, base)


# 3. Options


def test_help_lists_every_option() -> None:
    """``twistd stow --help`` exits 0 and names every option and the defaults."""
    completed = subprocess.run(
        [twistd_command(), "stow", "--help"], capture_output=True, timeout=30, cwd="/"
    )
    assert completed.returncode == 0, completed.stderr
    text = " ".join(completed.stdout.decode().split())  # undo the help's line wrapping
    for option in (
        "--listen",
        "--storage",
        "--public-url",
        "--trust-forwarded-headers",
        "--study-mismatch",
        "--duplicates",
        "--max-body-size",
        "--idle-timeout",
        "--cors-origin",
        "--sop-class",
        "--transfer-syntax",
        "--max-part-size",
        "--header-timeout",
        "--min-body-rate",
        "--body-rate-window",
    ):
        assert option in text, option
    assert "tcp:8080" in text
    assert "stow-data" in text


def test_option_defaults() -> None:
    """No arguments: listen on port 8080 of loopback only, store under ./stow-data."""
    options = Options()
    options.parseOptions([])
    assert options.config.listen == ("tcp:8080:interface=127.0.0.1",)
    assert options.config.storage == Path("stow-data")


# 4. --listen twice


@pytest_twisted.ensureDeferred
async def test_listen_twice_serves_on_both(tmp_path: Path, client: Any) -> None:
    """``--listen`` given twice: the server answers STOW on both ports."""
    storage = tmp_path / "store"
    twistd = Twistd(storage, "--listen", LOOPBACK_ANY_PORT, "--listen", LOOPBACK_ANY_PORT)
    try:
        ports = await deferToThread(twistd.ports, 2)
        assert len(set(ports)) == 2
        for port, path in zip(ports, [CT, MR], strict=True):
            url = f"http://127.0.0.1:{port}/studies"
            body = fixed_length(build_multipart([read(path)], BOUNDARY))
            code, content = await post(client, url, body)
            assert code == 200, content
            assert sop_instance_uids(json.loads(content)) == [uids(path)[1]]
            assert stored_path(storage, path).read_bytes() == read(path)
    finally:
        await deferToThread(twistd.stop)


# 5. Disconnect mid-part

# Big enough that half of it spans several of the server's 1 MiB write
# batches: its staging file exists on disk before the client goes away.
LARGE_PRIVATE_BYTES = 6 * 1024 * 1024


def large_instance() -> Dataset:
    """A new MR instance carrying a 6 MiB private OB element."""
    ds = with_new_uid(MR)
    block = ds.private_block(0x0009, "twisted-stow tests", create=True)
    block.add_new(0x10, "OB", bytes(range(256)) * (LARGE_PRIVATE_BYTES // 256))
    return pydicom.dcmread(BytesIO(encode(ds)))


def connect_and_send(port: int, data: bytes) -> socket.socket:
    """Blocking: open a connection and send ``data``; the caller closes it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(data)
    return sock


@pytest_twisted.ensureDeferred
async def test_disconnect_mid_part(twistd_server: Server, client: Any) -> None:
    """Client gone mid-part: the complete part is stored, the half one is not; server goes on."""
    root = twistd_server.storage
    first, second = with_new_uid(CT), large_instance()
    first_bytes, second_bytes = encode(first), encode(second)
    body = build_multipart([first_bytes, second_bytes], BOUNDARY)
    cut = body.index(second_bytes) + len(second_bytes) // 2
    head = (
        b"POST /studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Content-Type: {multipart_content_type(BOUNDARY)}\r\n".encode()
        + f"Content-Length: {len(body) + 10_000_000}\r\n\r\n".encode()
    )
    sock = await deferToThread(connect_and_send, twistd_server.port, head + body[:cut])
    try:
        # Connected still: the first part is committed, the second is being staged.
        in_flight = await poll(lambda: path_of(root, first).exists() and staging_files(root) != [])
        assert in_flight, (path_of(root, first).exists(), staging_files(root))
    finally:
        sock.close()

    assert await poll(lambda: staging_files(root) == []), staging_files(root)
    assert path_of(root, first).read_bytes() == first_bytes
    assert not path_of(root, second).exists()
    assert [p for p in stored_files(root) if p.name == f"{second.SOPInstanceUID}.dcm"] == []

    # The server still serves; the instance that was cut off now stores whole.
    again = fixed_length(build_multipart([second_bytes], BOUNDARY))
    code, content = await post(client, twistd_server.url + "/studies", again)
    assert code == 200, content
    assert sop_instance_uids(json.loads(content)) == [str(second.SOPInstanceUID)]
    assert path_of(root, second).read_bytes() == second_bytes
    assert staging_files(root) == []


# 6. SIGTERM


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    """SIGTERM: twistd runs its orderly shutdown and ends by itself, without a traceback."""
    twistd = Twistd(tmp_path / "store", "--listen", LOOPBACK_ANY_PORT)
    try:
        (port,) = twistd.ports(1)
        # An answer means the reactor is in its main loop: its SIGTERM handler is
        # installed only during startup, after the port starts listening (a SIGTERM
        # before that kills the process with no shutdown at all).
        request = b"GET /studies HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answer = raw_exchange(port, request)
        assert status_of(answer) == 405
    finally:
        status = twistd.stop()
    twistd.wait_for(lambda lines: lines[-1:] == [b""], timeout=5)
    log = twistd.log()
    assert "Main loop terminated." in log and "Server Shut Down." in log, log
    assert "Traceback" not in log, log
    # twistd (twisted/scripts/twistd.py, runApp) ends a signalled run by re-raising
    # the signal with the default handler once the shutdown is done: -SIGTERM is the
    # clean status of a stock twistd, 0 that of a server that swallows it. A SIGKILL
    # from stop_twistd's fallback (-9) or any other status is not clean.
    assert status in (0, -signal.SIGTERM), (status, log)
