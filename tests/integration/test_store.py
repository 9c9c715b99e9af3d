"""STOW-RS over real sockets against an in-process server (treq and raw sockets)."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests import dicom_files
from tests.dicom_files import CT, MR, NO_META, SR, read, stored_path, uids
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.conftest import Server
from tests.integration.observe import staging_files, stored_files
from tests.integration.streaming import (
    ChunkedProducer,
    failure_reasons,
    fixed_length,
    json_body,
    raw_exchange,
    sop_instance_uids,
    split,
    status_of,
)

BOUNDARY = "stow-test-boundary-0123456789"
THREE = [CT, MR, SR]


def multipart(parts: list[bytes], boundary: str = BOUNDARY) -> tuple[bytes, dict[str, list[str]]]:
    body = build_multipart(parts, boundary)
    return body, {"Content-Type": [multipart_content_type(boundary)]}


async def post(
    client: Any, url: str, body: Any, headers: dict[str, list[str]]
) -> tuple[int, Any, Any]:
    response = await client.post(url, data=body, headers=headers)
    content = await response.content()
    return response.code, response.headers, content


@pytest_twisted.ensureDeferred
async def test_multipart_fixed_length_stores_every_instance(
    stow_server: Server, client: Any
) -> None:
    """Three real instances, streamed with Content-Length: 200, all listed, bytes identical."""
    body, headers = multipart([read(p) for p in THREE])
    code, response_headers, content = await post(
        client, stow_server.url + "/studies", fixed_length(body), headers
    )
    assert code == 200, content
    assert response_headers.getRawHeaders("content-type") == ["application/dicom+json"]
    model = json.loads(content)
    assert sop_instance_uids(model) == [uids(p)[1] for p in THREE]
    for path in THREE:
        assert stored_path(stow_server.storage, path).read_bytes() == read(path)
    assert "00081198" not in model
    assert staging_files(stow_server.storage) == []


@pytest_twisted.ensureDeferred
async def test_multipart_chunked_in_small_chunks(stow_server: Server, client: Any) -> None:
    """Transfer-Encoding: chunked, 1000-byte chunks that split headers and delimiters."""
    body, headers = multipart([read(p) for p in THREE])
    code, _, content = await post(
        client, stow_server.url + "/studies", ChunkedProducer(split(body, 1000)), headers
    )
    assert code == 200, content
    assert sop_instance_uids(json.loads(content)) == [uids(p)[1] for p in THREE]
    for path in THREE:
        assert stored_path(stow_server.storage, path).read_bytes() == read(path)


@pytest_twisted.ensureDeferred
async def test_single_part_application_dicom(stow_server: Server, client: Any) -> None:
    """A bare application/dicom body is one instance."""
    code, _, content = await post(
        client,
        stow_server.url + "/studies",
        fixed_length(read(CT)),
        {"Content-Type": ["application/dicom"]},
    )
    assert code == 200, content
    model = json.loads(content)
    assert sop_instance_uids(model) == [uids(CT)[1]]
    study = uids(CT)[2]
    series = uids(CT)[3]
    instance_url = model["00081199"]["Value"][0]["00081190"]["Value"][0]
    assert instance_url == (
        f"{stow_server.url}/studies/{study}/series/{series}/instances/{uids(CT)[1]}"
    )
    assert model["00081190"]["Value"] == [f"{stow_server.url}/studies/{study}"]
    assert stored_path(stow_server.storage, CT).read_bytes() == read(CT)


@pytest_twisted.ensureDeferred
async def test_single_part_chunked(stow_server: Server, client: Any) -> None:
    """A bare application/dicom body sent chunked."""
    code, _, content = await post(
        client,
        stow_server.url + "/studies",
        ChunkedProducer(split(read(MR), 777)),
        {"Content-Type": ["application/dicom"]},
    )
    assert code == 200, content
    assert stored_path(stow_server.storage, MR).read_bytes() == read(MR)


@pytest.mark.parametrize(
    "path",
    [
        "/studies",
        "/dicomweb/studies",
        "/dicomweb/my-workflow/studies",
        "/aets/DCM4CHEE/rs/studies",
    ],
)
@pytest_twisted.ensureDeferred
async def test_every_route_family_stores(stow_server: Server, client: Any, path: str) -> None:
    """Standard, MONAI and dcm4chee routes all store and build RetrieveURL on their base."""
    body, headers = multipart([read(CT)])
    code, _, content = await post(client, stow_server.url + path, fixed_length(body), headers)
    assert code == 200, content
    model = json.loads(content)
    url = model["00081199"]["Value"][0]["00081190"]["Value"][0]
    assert url.startswith(stow_server.url + path + "/" + uids(CT)[2] + "/series/")
    assert stored_path(stow_server.storage, CT).read_bytes() == read(CT)


@pytest.mark.parametrize(
    "path", ["/studies/{study}", "/dicomweb/studies/{study}", "/aets/AE1/rs/studies/{study}"]
)
@pytest_twisted.ensureDeferred
async def test_study_routes_accept_their_study(stow_server: Server, client: Any, path: str) -> None:
    """POST to the instance's own study URL stores it."""
    body, headers = multipart([read(CT)])
    url = stow_server.url + path.format(study=uids(CT)[2])
    code, _, content = await post(client, url, fixed_length(body), headers)
    assert code == 200, content


@pytest_twisted.ensureDeferred
async def test_invalid_study_uid_in_url_is_400(stow_server: Server, client: Any) -> None:
    """A {study} that is not a UID: 400 problem document, nothing stored."""
    body, headers = multipart([read(CT)])
    code, response_headers, content = await post(
        client, stow_server.url + "/studies/1.02.abc", fixed_length(body), headers
    )
    assert code == 400
    assert response_headers.getRawHeaders("content-type") == ["application/problem+json"]
    assert json.loads(content)["status"] == 400
    assert stored_files(stow_server.storage) == []


@pytest_twisted.ensureDeferred
async def test_other_method_is_405_with_allow(stow_server: Server, client: Any) -> None:
    """GET on a STOW path: 405 with an Allow header naming POST."""
    response = await client.get(stow_server.url + "/studies")
    await response.content()
    assert response.code == 405
    allow = response.headers.getRawHeaders("allow")[0]
    assert "POST" in allow


@pytest_twisted.ensureDeferred
async def test_put_with_body_is_405_from_headers(stow_server: Server) -> None:
    """PUT with a body: 405 with Allow, answered before the body is read."""
    request = (
        b"PUT /studies HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\n"
        b"Content-Length: 100000\r\nExpect: 100-continue\r\n\r\n"
    )
    raw = await deferToThread(raw_exchange, stow_server.port, request)
    assert status_of(raw) == 405
    assert b"100 Continue" not in raw
    assert b"Allow: " in raw and b"POST" in raw


@pytest_twisted.ensureDeferred
async def test_unsupported_media_type_is_415_without_100_continue(stow_server: Server) -> None:
    """A text/plain upload with Expect: 100-continue gets the 415 first, never 100 Continue."""
    request = (
        b"POST /studies HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n"
    )
    raw = await deferToThread(raw_exchange, stow_server.port, request)
    assert raw.startswith(b"HTTP/1.1 415 ")
    assert b"100 Continue" not in raw
    assert json_body(raw)["status"] == 415


@pytest_twisted.ensureDeferred
async def test_415_does_not_wait_for_the_body(stow_server: Server) -> None:
    """The 415 arrives though the client never sends the announced body; nothing is stored."""
    request = (
        b"POST /studies HTTP/1.1\r\nHost: x\r\n"
        b'Content-Type: multipart/related; type="application/dicom+xml"; boundary=b\r\n'
        b"Content-Length: 5000000\r\n\r\n"
    )
    raw = await deferToThread(raw_exchange, stow_server.port, request)
    assert status_of(raw) == 415
    assert stored_files(stow_server.storage) == []


@pytest_twisted.ensureDeferred
async def test_empty_multipart_is_400(stow_server: Server, client: Any) -> None:
    """A multipart body with no part (only the close delimiter) is 400, not 200/204."""
    body = b"--" + BOUNDARY.encode() + b"--\r\n"
    code, _, content = await post(
        client,
        stow_server.url + "/studies",
        fixed_length(body),
        {"Content-Type": [multipart_content_type(BOUNDARY)]},
    )
    assert code == 400
    assert json.loads(content)["status"] == 400


@pytest_twisted.ensureDeferred
async def test_empty_chunked_body_is_400(stow_server: Server) -> None:
    """The dicomweb-client retry case: an empty chunked body gets 400."""
    request = (
        b"POST /studies HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Type: {multipart_content_type(BOUNDARY)}\r\n".encode()
        + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
    )
    raw = await deferToThread(raw_exchange, stow_server.port, request)
    assert status_of(raw) == 400


@pytest_twisted.ensureDeferred
async def test_all_failed_is_409(stow_server: Server, client: Any) -> None:
    """Every part fails (not PS3.10, garbage): 409 with the failures reported."""
    body, headers = multipart([read(NO_META), os.urandom(3000)])
    code, _, content = await post(client, stow_server.url + "/studies", fixed_length(body), headers)
    assert code == 409
    model = json.loads(content)
    reasons = failure_reasons(model, "0008119A")
    assert reasons == [0xC000, 0xC000]
    assert stored_files(stow_server.storage) == []
    assert staging_files(stow_server.storage) == []


@pytest_twisted.ensureDeferred
async def test_mixed_result_is_202(stow_server: Server, client: Any) -> None:
    """One good and one bad part: 202, the good one stored, the bad one reported."""
    body, headers = multipart([read(CT), read(NO_META)])
    code, response_headers, content = await post(
        client, stow_server.url + "/studies", fixed_length(body), headers
    )
    assert code == 202
    model = json.loads(content)
    assert sop_instance_uids(model) == [uids(CT)[1]]
    assert failure_reasons(model, "0008119A") == [0xC000]
    assert response_headers.getRawHeaders("warning")[0].startswith("299 ")
    assert stored_files(stow_server.storage) == [stored_path(stow_server.storage, CT)]


@pytest_twisted.ensureDeferred
async def test_keep_alive_serves_several_uploads(stow_server: Server) -> None:
    """Two uploads on one keep-alive connection, the second sent after the first's response."""

    def request(data: bytes, *, close: bool) -> bytes:
        body, headers = multipart([data])
        return (
            b"POST /studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + (b"Connection: close\r\n" if close else b"")
            + f"Content-Type: {headers['Content-Type'][0]}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def exchange() -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", stow_server.port), timeout=10) as sock:
            sock.sendall(request(read(CT), close=False))
            first = b""
            # The first response is complete once its Content-Length body is in.
            while b"\r\n\r\n" not in first or len(json_body_bytes(first)) < content_length(first):
                chunk = sock.recv(65536)
                assert chunk, "the server closed the keep-alive connection"
                first += chunk
            sock.sendall(request(read(MR), close=True))
            second = b""
            while chunk := sock.recv(65536):
                second += chunk
        return first, second

    first, second = await deferToThread(exchange)
    assert status_of(first) == 200
    assert status_of(second) == 200
    assert stored_path(stow_server.storage, CT).read_bytes() == read(CT)
    assert stored_path(stow_server.storage, MR).read_bytes() == read(MR)


def content_length(raw: bytes) -> int:
    """Content-Length of the response whose head is in ``raw``."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise AssertionError(f"no Content-Length in {head!r}")


def json_body_bytes(raw: bytes) -> bytes:
    """The bytes after the response head."""
    return raw.split(b"\r\n\r\n", 1)[1]


def test_test_data_is_present() -> None:
    """The pydicom files the integration tests rely on exist."""
    for path in (CT, MR, SR, NO_META):
        assert path.exists(), path
    assert dicom_files.TEST_FILES.is_dir()


@pytest_twisted.ensureDeferred
async def test_orthanc_style_request(stow_server: Server, client: Any) -> None:
    """Orthanc as a client: unquoted 73-char boundary, per-part Content-Length,
    no CRLF before the first or after the last delimiter, 65,524-byte chunks."""
    boundary = "b" * 36 + "-" + "0123456789abcdef0123456789abcdef0123"
    assert len(boundary) == 73
    parts = [read(CT), read(MR)]
    body = build_multipart(
        parts,
        boundary,
        part_headers=[
            [("Content-Type", "application/dicom"), ("Content-Length", str(len(p)))] for p in parts
        ],
        leading_crlf=False,
        trailing_crlf=False,
    )
    headers = {
        "Content-Type": [f"multipart/related; type=application/dicom; boundary={boundary}"],
        "Accept": ["application/dicom+json"],
    }
    code, _, content = await post(
        client, stow_server.url + "/studies", ChunkedProducer(split(body, 65524)), headers
    )
    assert code == 200, content
    assert sop_instance_uids(json.loads(content)) == [uids(CT)[1], uids(MR)[1]]
    for path in (CT, MR):
        assert stored_path(stow_server.storage, path).read_bytes() == read(path)


@pytest_twisted.ensureDeferred
async def test_media_type_parameters_in_any_order_and_case(
    stow_server: Server, client: Any
) -> None:
    """Parameter names are case-insensitive, in any order, quoted boundary, no Accept."""
    body = build_multipart([read(CT)], BOUNDARY)
    headers = {
        "Content-Type": [f'Multipart/Related; BOUNDARY="{BOUNDARY}"; Type="application/dicom"']
    }
    code, response_headers, content = await post(
        client, stow_server.url + "/studies", fixed_length(body), headers
    )
    assert code == 200, content
    assert response_headers.getRawHeaders("content-type") == ["application/dicom+json"]


@pytest_twisted.ensureDeferred
async def test_two_hundred_char_boundary(stow_server: Server, client: Any) -> None:
    """A 200-character boundary (beyond RFC 2046's 70) is accepted."""
    boundary = "x" * 200
    body = build_multipart([read(MR)], boundary)
    code, _, content = await post(
        client,
        stow_server.url + "/studies",
        fixed_length(body),
        {"Content-Type": [multipart_content_type(boundary, quote_boundary=True)]},
    )
    assert code == 200, content
