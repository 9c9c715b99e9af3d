"""Requests no real client sends, answered by the RFCs from the headers (issue 18 points 1-6).

Every request goes over a real socket to a real ``twistd -n stow``: the
module's default server (conftest's ``twistd_server``) and, where an option
is the point, one started with it.  Each refusal must be a problem document
answered before any body byte is stored.
"""

from __future__ import annotations

import io
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.dicom_files import CT, read, uids
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.conftest import Server, serve_twistd
from tests.integration.observe import stored_files
from tests.integration.streaming import json_body, raw_exchange, status_of
from tests.integration.test_http_edges import copies_of_ct
from twisted_stow.core.identifiers import MAX_AE_TITLE_CHARS

BOUNDARY = "identity-boundary"
CONTENT_TYPE = multipart_content_type(BOUNDARY).encode()
# Answers from the headers come at once; this bounds "at once" on a loaded
# 2-core machine running the whole suite.
PROMPT_SECONDS = 3.0


def post(path: str = "/studies", body: bytes = b"", head: bytes | None = None) -> bytes:
    """A POST of ``body`` with ``head`` as its header lines (default: Host, type, length)."""
    if head is None:
        head = (
            b"Host: 127.0.0.1\r\nContent-Type: "
            + CONTENT_TYPE
            + b"\r\nContent-Length: %d\r\n" % len(body)
        )
    return b"POST " + path.encode() + b" HTTP/1.1\r\n" + head + b"Connection: close\r\n\r\n" + body


def one_instance() -> bytes:
    return build_multipart(copies_of_ct(1), BOUNDARY)


async def refused(server: Server, raw: bytes) -> tuple[int, bytes]:
    """Send ``raw``; the status and whole answer; asserts nothing was stored."""
    before = len(stored_files(server.storage))
    answer = await deferToThread(raw_exchange, server.port, raw)
    assert b"Content-Type: application/problem+json\r\n" in answer, answer[:300]
    assert len(stored_files(server.storage)) == before
    return status_of(answer), answer


def spool_entries(storage: Path) -> int:
    spool = storage / ".workflow-spool"
    return len([p for p in spool.iterdir() if not p.name.startswith(".")]) if spool.exists() else 0


# Point 1: singleton fields.

LENGTH_LINE = b"Content-Length: %d\r\n"
SINGLETONS = {
    "two-content-types": b"Host: h\r\nContent-Type: "
    + CONTENT_TYPE
    + b"\r\nContent-Type: text/plain\r\n"
    + LENGTH_LINE,
    "two-content-lengths": b"Host: h\r\nContent-Type: "
    + CONTENT_TYPE
    + b"\r\n"
    + LENGTH_LINE
    + b"Content-Length: 5\r\n",
    "transfer-encoding-and-length": b"Host: h\r\nContent-Type: "
    + CONTENT_TYPE
    + b"\r\nTransfer-Encoding: chunked\r\n"
    + LENGTH_LINE,
    "identity-coding-and-length": b"Host: h\r\nContent-Type: "
    + CONTENT_TYPE
    + b"\r\nTransfer-Encoding: identity\r\n"
    + LENGTH_LINE,
    "two-hosts": b"Host: a\r\nHost: b\r\nContent-Type: " + CONTENT_TYPE + b"\r\n" + LENGTH_LINE,
    "two-authorizations": b"Host: h\r\nAuthorization: Basic YTpi\r\nAuthorization: Bearer x\r\n"
    b"Content-Type: " + CONTENT_TYPE + b"\r\n" + LENGTH_LINE,
    "two-origins": b"Host: h\r\nOrigin: https://a\r\nOrigin: https://b\r\nContent-Type: "
    + CONTENT_TYPE
    + b"\r\n"
    + LENGTH_LINE,
    "no-host-on-http-1.1": b"Content-Type: " + CONTENT_TYPE + b"\r\n" + LENGTH_LINE,
}


@pytest.mark.parametrize("case", list(SINGLETONS))
@pytest_twisted.ensureDeferred
async def test_conflicting_singletons_are_400(twistd_server: Server, case: str) -> None:
    """Repeated singletons, chunked beside Content-Length, no Host: 400, nothing stored."""
    body = one_instance()
    head = SINGLETONS[case].replace(LENGTH_LINE, LENGTH_LINE % len(body))
    status, _ = await refused(twistd_server, post(body=body, head=head))
    assert status == 400


# Point 2: what Twisted closed on is answered.


@pytest_twisted.ensureDeferred
async def test_long_request_target_is_414(twistd_server: Server) -> None:
    """A 64 KiB request target: 414, where Twisted closed without a word."""
    status, _ = await refused(twistd_server, post("/studies/" + "1" * 65536, one_instance()))
    assert status == 414


@pytest.mark.parametrize(
    "extra",
    [b"X-Big: " + b"v" * 20000 + b"\r\n", b"".join(b"X-%d: v\r\n" % i for i in range(600))],
    ids=["one-long-line", "too-many-fields"],
)
@pytest_twisted.ensureDeferred
async def test_oversized_header_block_is_431(twistd_server: Server, extra: bytes) -> None:
    """A header line over 16 KiB or more than 500 fields: 431 (RFC 6585 §5)."""
    body = one_instance()
    head = b"Host: h\r\nContent-Type: " + CONTENT_TYPE + b"\r\n" + LENGTH_LINE % len(body) + extra
    status, _ = await refused(twistd_server, post(body=body, head=head))
    assert status == 431


@pytest_twisted.ensureDeferred
async def test_http_1_0_post_without_length_is_411(twistd_server: Server) -> None:
    """An HTTP/1.0 POST with neither Content-Length nor chunked: 411."""
    raw = b"POST /studies HTTP/1.0\r\nContent-Type: " + CONTENT_TYPE + b"\r\n\r\n" + one_instance()
    status, _ = await refused(twistd_server, raw)
    assert status == 411


@pytest_twisted.ensureDeferred
async def test_thirty_digit_content_length_is_400_at_once(twistd_server: Server) -> None:
    """A 30-digit Content-Length: 400 at once, not a connection waiting forever."""
    head = (
        b"Host: h\r\nContent-Type: " + CONTENT_TYPE + b"\r\nContent-Length: " + b"9" * 30 + b"\r\n"
    )
    started = time.monotonic()
    status, _ = await refused(twistd_server, post(head=head, body=b"--x"))
    assert status == 400
    assert time.monotonic() - started < PROMPT_SECONDS


# Point 3: Host.


@pytest.mark.parametrize(
    "host",
    [b"\xff\xfe", "h\u00e9.example".encode(), b"a..b", b"x" * 64 + b".example", b"h:99999"],
    ids=["not-utf8", "not-ascii", "empty-label", "64-char-label", "bad-port"],
)
@pytest.mark.parametrize("path", ["/studies", "/dicomweb/studies"])
@pytest_twisted.ensureDeferred
async def test_invalid_host_is_400_and_nothing_happens(
    twistd_server: Server, host: bytes, path: str
) -> None:
    """A non-UTF-8 or IDNA-invalid Host: 400 problem+json, nothing stored, no workflow request."""
    body = one_instance()
    head = b"Host: " + host + b"\r\nContent-Type: " + CONTENT_TYPE + b"\r\n"
    spooled = spool_entries(twistd_server.storage)
    status, _ = await refused(twistd_server, post(path, body, head + LENGTH_LINE % len(body)))
    assert status == 400
    assert spool_entries(twistd_server.storage) == spooled


# Point 4: route identity.


@pytest_twisted.ensureDeferred
async def test_double_slash_is_the_monai_route(twistd_server: Server) -> None:
    """//dicomweb/studies (a base URL ending in /): the MONAI route, whole, with a clean URL."""
    spooled = spool_entries(twistd_server.storage)
    answer = await deferToThread(
        raw_exchange,
        twistd_server.port,
        post("//dicomweb/studies", build_multipart([read(CT)], BOUNDARY)),
    )
    assert status_of(answer) in (200, 409), answer[:300]  # 409: CT was stored by an earlier test
    assert b"\r\nx-correlation-id: " in answer.lower()
    assert spool_entries(twistd_server.storage) in (spooled, spooled + 1)
    model = json_body(answer)
    url = model["00081190"]["Value"][0]
    assert url == f"http://127.0.0.1:{twistd_server.port}/dicomweb/studies/{uids(CT)[2]}"
    # A study mismatch on the MONAI route is a warning (B007, 202), not a rejection.
    answer = await deferToThread(
        raw_exchange, twistd_server.port, post("//dicomweb/studies/1.2.3", one_instance())
    )
    assert status_of(answer) == 202, answer[:300]
    assert json_body(answer)["00081199"]["Value"][0]["00081196"]["Value"] == [0xB007]


# Point 5: path segments.


@pytest.mark.parametrize(
    "segment",
    ["..", ".", "%0D%0A", "%00", "%E2%80%A8", "a" * 15000, "a%20b", "%2E%2E"],
    ids=["dotdot", "dot", "crlf", "nul", "u2028", "15000-chars", "space", "escaped-dotdot"],
)
@pytest_twisted.ensureDeferred
async def test_bad_workflow_ids_are_400(twistd_server: Server, segment: str) -> None:
    """Workflow ids outside the --workflow rule: 400, nothing stored or spooled."""
    spooled = spool_entries(twistd_server.storage)
    status, answer = await refused(
        twistd_server, post(f"/dicomweb/{segment}/studies", one_instance())
    )
    assert status == 400, answer[:300]  # 15,000 characters fit Twisted's 16 KiB line
    assert spool_entries(twistd_server.storage) == spooled


@pytest.mark.parametrize(
    "segment",
    ["A" * (MAX_AE_TITLE_CHARS + 1), "A%5CB", "%20%20", "A%0AB", "%C3%A9"],
    ids=["17-chars", "backslash", "all-spaces", "control", "non-ascii"],
)
@pytest_twisted.ensureDeferred
async def test_bad_ae_titles_are_400(twistd_server: Server, segment: str) -> None:
    """AE titles outside PS3.5's VR AE: 400, nothing stored."""
    status, _ = await refused(twistd_server, post(f"/aets/{segment}/rs/studies", one_instance()))
    assert status == 400


@pytest_twisted.ensureDeferred
async def test_a_sixteen_character_ae_title_with_a_space_is_fine(twistd_server: Server) -> None:
    """The longest PS3.5 AE title, with a space in it, is stored."""
    title = "ABCDEFG HIJKLMNO"
    assert len(title) == MAX_AE_TITLE_CHARS
    path = "/aets/" + title.replace(" ", "%20") + "/rs/studies"
    answer = await deferToThread(raw_exchange, twistd_server.port, post(path, one_instance()))
    assert status_of(answer) == 200, answer[:300]


# Point 6: UIDs, strict by default, one option for both.


def leading_zero_instance() -> bytes:
    """CT_small whose SOP Instance UID has a component "02" (pydicom warns; that is the point)."""
    ds = pydicom.dcmread(CT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds.SOPInstanceUID = "1.2.826.0.1.3680043.02.1"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    return build_multipart([buffer.getvalue()], BOUNDARY)


@pytest_twisted.ensureDeferred
async def test_leading_zero_uids_are_refused_by_default(twistd_server: Server) -> None:
    """/studies/1.02.3: 400; an instance whose SOP Instance UID has 02: 0xA900."""
    status, _ = await refused(twistd_server, post("/studies/1.02.3", one_instance()))
    assert status == 400
    answer = await deferToThread(
        raw_exchange, twistd_server.port, post(body=leading_zero_instance())
    )
    assert status_of(answer) == 409
    model = json_body(answer)
    # No valid SOP Instance UID to name it by: Other Failures (PS3.18 §10.5.3).
    assert model["0008119A"]["Value"][0]["00081197"]["Value"] == [0xA900], model


@pytest.fixture(scope="module")
def lenient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """twistd with --accept-leading-zero-uids."""
    yield from serve_twistd(tmp_path_factory.mktemp("lenient"), "--accept-leading-zero-uids")


@pytest_twisted.ensureDeferred
async def test_the_option_accepts_leading_zeros_in_url_and_data(lenient_server: Server) -> None:
    """--accept-leading-zero-uids: the URL's study UID and the instance's UIDs alike."""
    answer = await deferToThread(
        raw_exchange, lenient_server.port, post(body=leading_zero_instance())
    )
    assert status_of(answer) == 200, answer[:400]
    assert (
        "1.2.826.0.1.3680043.02.1"
        in json_body(answer)["00081199"]["Value"][0]["00081190"]["Value"][0]
    )
    # The URL's study UID is judged by the same switch: 1.02.3 is a UID now,
    # so the answer is the per-instance study mismatch, not a 400.
    answer = await deferToThread(
        raw_exchange, lenient_server.port, post("/studies/1.02.3", one_instance())
    )
    assert status_of(answer) == 409, answer[:400]
    assert b"application/dicom+json" in answer


# Issue 17 point 6: OPTIONS is under the same limits.


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """twistd with --max-body-size 1K, a body rate and a short idle timeout."""
    options = ("--max-body-size", "1K", "--min-body-rate", "1K", "--idle-timeout", "10")
    yield from serve_twistd(tmp_path_factory.mktemp("limited"), *options)


def trickle_options(port: int, length: int) -> tuple[bytes, float]:
    """Blocking: OPTIONS announcing ``length`` bytes, then a byte every 0.5 s; the
    answer and the seconds until the server closed the connection."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(
            b"OPTIONS /studies HTTP/1.1\r\nHost: h\r\nOrigin: https://viewer\r\n"
            b"Access-Control-Request-Method: POST\r\nContent-Length: %d\r\n\r\n" % length
        )
        received = b""
        sock.settimeout(0.5)
        while time.monotonic() - started < 20:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                try:
                    sock.sendall(b"x")
                except OSError:
                    break
                continue
            except OSError:
                break
            if not data:
                break
            received += data
    return received, time.monotonic() - started


@pytest.mark.parametrize(("length", "status"), [(1_000_000_000, 413), (100, 400)])
@pytest_twisted.ensureDeferred
async def test_options_with_a_body_is_refused_from_its_headers(
    limited_server: Server, length: int, status: int
) -> None:
    """OPTIONS with a trickled body: 413 over --max-body-size, else 400; the connection closes."""
    answer, seconds = await deferToThread(trickle_options, limited_server.port, length)
    assert status_of(answer) == status, answer[:300]
    assert b"application/problem+json" in answer
    # Answered at once, closed after the linger (2 s), not after the 10 s idle timeout.
    assert seconds < 2.0 + PROMPT_SECONDS


# Point 7: a refusal mid-body names what was kept.


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """twistd with --max-part-size 50K and --max-body-size 200K."""
    options = ("--max-part-size", "50K", "--max-body-size", "200K")
    yield from serve_twistd(tmp_path_factory.mktemp("capped"), *options)


def chunked_post(body: bytes, piece: int = 8192) -> bytes:
    chunks = b"".join(
        b"%x\r\n" % len(body[i : i + piece]) + body[i : i + piece] + b"\r\n"
        for i in range(0, len(body), piece)
    )
    head = b"Host: h\r\nContent-Type: " + CONTENT_TYPE + b"\r\nTransfer-Encoding: chunked\r\n"
    return post(head=head) + chunks + b"0\r\n\r\n"


def sop_uid_of(instance: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(instance)).SOPInstanceUID)


@pytest.mark.parametrize("limit", ["part", "body"])
@pytest_twisted.ensureDeferred
async def test_mid_body_413_lists_the_stored_instances(capped_server: Server, limit: str) -> None:
    """A 413 for --max-part-size or --max-body-size mid-body lists the SOP UIDs it stored."""
    if limit == "part":
        kept = copies_of_ct(2)
        parts = [*kept, b"\0" * 60_000]  # the third part passes 50K
    else:
        kept = copies_of_ct(5)
        parts = [*kept, *copies_of_ct(1)]  # the sixth part passes 200K
    answer = await deferToThread(
        raw_exchange, capped_server.port, chunked_post(build_multipart(parts, BOUNDARY))
    )
    assert status_of(answer) == 413, answer[:300]
    document = json_body(answer)
    assert document["storedSOPInstanceUIDs"] == [sop_uid_of(p) for p in kept]
    stored = {p.read_bytes() for p in stored_files(capped_server.storage)}
    assert set(kept) <= stored
