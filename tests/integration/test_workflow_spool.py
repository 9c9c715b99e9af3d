"""MONAI profile over real sockets, in-process server, spool sink (no broker).

One workflow request per /dicomweb/ POST that stores something, durable in
the spool before the answer; nothing for other routes, for a POST that
stored nothing, was cut off or was refused by the --workflow allow-list.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import struct
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.dicom_files import CT, MR, NO_META, SR, read, stored_path, uids
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.conftest import Server
from tests.integration.observe import poll, staging_files, stored_files
from tests.integration.streaming import (
    raw_exchange,
    raw_post,
    sop_instance_uids,
    status_of,
    upload_request,
)
from twisted_stow.core.config import StowConfig

BOUNDARY = "workflow-test-boundary-0123456789"
HEADERS = {"Content-Type": [multipart_content_type(BOUNDARY)]}


def spool_of(server: Server) -> Path:
    return server.storage / ".workflow-spool"


def spooled(server: Server) -> list[dict[str, Any]]:
    """The workflow requests in the server's spool, oldest first."""
    entries = sorted(p for p in spool_of(server).iterdir() if not p.name.startswith("."))
    return [json.loads(p.read_bytes()) for p in entries]


async def post(client: Any, url: str, files: list[Path]) -> tuple[int, Any, Any]:
    body = build_multipart([read(f) for f in files], BOUNDARY)
    response = await client.post(url, data=body, headers=HEADERS)
    content = await response.content()
    return response.code, response.headers, content


@pytest_twisted.ensureDeferred
async def test_post_spools_one_request_with_every_stored_instance(
    stow_server: Server, client: Any
) -> None:
    """A /dicomweb/{workflow}/studies POST spools one complete workflow request."""
    status, headers, body = await post(
        client, stow_server.url + "/dicomweb/ai-liver/studies", [CT, MR]
    )
    assert status == 200, body
    (correlation_id,) = headers.getRawHeaders("X-Correlation-ID")
    (request,) = spooled(stow_server)
    assert request["correlation_id"] == correlation_id
    assert request["workflows"] == ["ai-liver"]
    assert request["file_count"] == 2
    assert request["endpoint"] == "/dicomweb/ai-liver/studies"
    assert request["peer"] == "127.0.0.1"
    assert request["data_trigger"] == {
        "data_service": "DicomWeb",
        "source": "127.0.0.1",
        "destination": "/dicomweb/ai-liver/studies",
    }
    assert request["principal"] is None
    assert request["schema_version"] == 1
    assert datetime.fromisoformat(request["timestamp"].replace("Z", "+00:00")).tzinfo
    root = Path(request["storage_root"])
    assert root == stow_server.storage.absolute()
    expected = []
    for f in (CT, MR):
        sop_class, sop, study, series = uids(f)
        expected.append(
            {
                "study_instance_uid": study,
                "series_instance_uid": series,
                "sop_instance_uid": sop,
                "sop_class_uid": sop_class,
                "path": f"{study}/{series}/{sop}.dcm",
                "size": len(read(f)),
                # The digest computed as the instance streamed in: hashlib's.
                "sha256": hashlib.sha256(read(f)).hexdigest(),
            }
        )
    assert request["payload"] == expected
    # Each path names the stored file, already durable when the request was.
    for entry, source in zip(request["payload"], (CT, MR), strict=True):
        assert root / entry["path"] == stored_path(stow_server.storage, source)
        assert (root / entry["path"]).read_bytes() == read(source)
    assert request["total_bytes"] == len(read(CT)) + len(read(MR))
    # The spool lives outside the instance tree.
    assert all(".workflow-spool" not in p.parts for p in stored_files(stow_server.storage))


@pytest_twisted.ensureDeferred
async def test_each_post_is_its_own_request(stow_server: Server, client: Any) -> None:
    """Two POSTs → two requests, with distinct ids and correlation ids."""
    first = await post(client, stow_server.url + "/dicomweb/wf/studies", [CT])
    second = await post(client, stow_server.url + "/dicomweb/wf/studies", [CT])
    assert first[0] == second[0] == 200
    requests = spooled(stow_server)
    assert len(requests) == 2
    assert len({r["payload_id"] for r in requests}) == 2
    assert [r["correlation_id"] for r in requests] == [
        first[1].getRawHeaders("X-Correlation-ID")[0],
        second[1].getRawHeaders("X-Correlation-ID")[0],
    ]


@pytest.mark.parametrize(
    "stow_config", [StowConfig(default_workflows=("triage", "archive"))], indirect=True
)
@pytest_twisted.ensureDeferred
async def test_route_without_workflow_uses_the_defaults(stow_server: Server, client: Any) -> None:
    """/dicomweb/studies/{study} requests the configured default workflows."""
    study = uids(SR)[2]
    status, _, _ = await post(client, stow_server.url + f"/dicomweb/studies/{study}", [SR])
    assert status == 200
    (request,) = spooled(stow_server)
    assert request["workflows"] == ["triage", "archive"]
    assert request["endpoint"] == f"/dicomweb/studies/{study}"


@pytest_twisted.ensureDeferred
async def test_failed_instances_are_left_out(stow_server: Server, client: Any) -> None:
    """A partly stored POST (202) lists only the stored instance."""
    status, _, body = await post(client, stow_server.url + "/dicomweb/wf/studies", [CT, NO_META])
    assert status == 202, body
    (request,) = spooled(stow_server)
    assert request["file_count"] == 1
    assert [e["sop_instance_uid"] for e in request["payload"]] == [uids(CT)[1]]


@pytest_twisted.ensureDeferred
async def test_nothing_stored_triggers_nothing(stow_server: Server, client: Any) -> None:
    """A /dicomweb/ POST whose every instance failed (409) spools nothing."""
    status, headers, _ = await post(client, stow_server.url + "/dicomweb/wf/studies", [NO_META])
    assert status == 409
    assert headers.getRawHeaders("X-Correlation-ID")
    assert spooled(stow_server) == []


@pytest_twisted.ensureDeferred
async def test_standard_routes_trigger_nothing(stow_server: Server, client: Any) -> None:
    """Only the MONAI routes trigger workflows; /studies has no correlation id."""
    for path in ("/studies", "/aets/AE1/rs/studies"):
        status, headers, _ = await post(client, stow_server.url + path, [CT])
        assert status == 200
        assert headers.getRawHeaders("X-Correlation-ID") is None
    assert spooled(stow_server) == []


@pytest.mark.parametrize("stow_config", [StowConfig(workflows=("ai-liver",))], indirect=True)
@pytest_twisted.ensureDeferred
async def test_unknown_workflow_is_404_and_stores_nothing(stow_server: Server) -> None:
    """With an allow-list, an unknown workflow id is refused from the headers."""
    request = upload_request([read(CT)], BOUNDARY, "/dicomweb/ai-lung/studies")
    raw = await deferToThread(raw_exchange, stow_server.port, request)
    assert status_of(raw) == 404
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head
    problem = json.loads(rest)
    assert problem["status"] == 404
    assert problem["title"] == "Unknown workflow"
    assert "ai-lung" in problem["detail"]
    assert stored_files(stow_server.storage) == []
    assert spooled(stow_server) == []


@pytest.mark.parametrize("stow_config", [StowConfig(workflows=("ai-liver",))], indirect=True)
@pytest_twisted.ensureDeferred
async def test_allowed_workflow_is_served(stow_server: Server, client: Any) -> None:
    """An allowed workflow id, and the route without an id, still work."""
    assert (await post(client, stow_server.url + "/dicomweb/ai-liver/studies", [CT]))[0] == 200
    assert (await post(client, stow_server.url + "/dicomweb/studies", [MR]))[0] == 200
    assert [r["workflows"] for r in spooled(stow_server)] == [["ai-liver"], []]


@pytest_twisted.ensureDeferred
async def test_truncated_body_triggers_nothing(stow_server: Server) -> None:
    """A body cut off before its close delimiter: its whole parts are stored
    and reported, but a partial dataset starts no workflow."""
    whole = build_multipart([read(CT), read(MR)], BOUNDARY)
    # Ends inside the second part: CT is complete, MR is not.
    body = whole[: whole.index(b"--" + BOUNDARY.encode(), 10) + 200]
    request = raw_post(body, BOUNDARY, "/dicomweb/wf/studies")
    raw = await deferToThread(raw_exchange, stow_server.port, request)
    assert status_of(raw) == 202
    model = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert sop_instance_uids(model) == [uids(CT)[1]]
    assert stored_files(stow_server.storage) == [stored_path(stow_server.storage, CT)]
    assert spooled(stow_server) == []


@pytest_twisted.ensureDeferred
async def test_client_disconnect_mid_upload_triggers_nothing(stow_server: Server) -> None:
    """Issue 4 point 4 over a real socket: the client leaves mid-body after one
    whole part (which is stored); no workflow request ever appears."""
    whole = build_multipart([read(CT), read(MR)], BOUNDARY)
    cut = whole.index(b"--" + BOUNDARY.encode(), 10) + 200
    head = (
        b"POST /dicomweb/wf/studies HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Type: {multipart_content_type(BOUNDARY)}\r\n".encode()
        + b"Content-Length: %d\r\n\r\n" % len(whole)
    )
    sock = await deferToThread(socket.create_connection, ("127.0.0.1", stow_server.port), 10)
    try:
        await deferToThread(sock.sendall, head + whole[:cut])
        ct = stored_path(stow_server.storage, CT)
        assert await poll(ct.exists)
    finally:
        sock.close()
    # The server saw the disconnect once the MR part's staging file is gone.
    assert await poll(lambda: staging_files(stow_server.storage) == [])
    # The route never runs for an incomplete request; give it time anyway.
    assert not await poll(lambda: spooled(stow_server) != [], seconds=1.0)
    assert stored_files(stow_server.storage) == [ct]


@pytest_twisted.ensureDeferred
async def test_spool_write_failure_is_500_and_instances_stay(
    stow_server: Server, client: Any
) -> None:
    """When the workflow request cannot be made durable the POST is not
    acknowledged: 500 problem document (send again); the instances stay."""
    spool = spool_of(stow_server)
    shutil.rmtree(spool)
    spool.write_bytes(b"not a directory")  # writes under it now fail, even as root
    status, headers, body = await post(client, stow_server.url + "/dicomweb/wf/studies", [CT])
    assert status == 500
    assert headers.getRawHeaders("Content-Type") == ["application/problem+json"]
    problem = json.loads(body)
    assert problem["title"] == "Workflow request not recorded"
    correlation_id = headers.getRawHeaders("X-Correlation-ID")[0]
    assert correlation_id in problem["detail"]
    assert stored_files(stow_server.storage) == [stored_path(stow_server.storage, CT)]


@pytest_twisted.ensureDeferred
async def test_client_leaving_after_its_whole_body_still_triggers(stow_server: Server) -> None:
    """The body arrived whole and the client hung up before the answer: the
    instances are stored anyway, so their workflow request is made too."""
    body = build_multipart([read(CT), read(MR)], BOUNDARY)
    request = (
        b"POST /dicomweb/wf/studies HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Type: {multipart_content_type(BOUNDARY)}\r\n".encode()
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )

    def send_and_hang_up() -> None:
        with socket.create_connection(("127.0.0.1", stow_server.port), timeout=10) as sock:
            sock.sendall(request)
            # RST at once (SO_LINGER 0): the server sees the disconnect while
            # it is still storing.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    await deferToThread(send_and_hang_up)
    assert await poll(lambda: len(spooled(stow_server)) == 1)
    (request_doc,) = spooled(stow_server)
    assert request_doc["file_count"] == 2
    assert len(stored_files(stow_server.storage)) == 2


@pytest_twisted.ensureDeferred
async def test_principal_of_the_upload_is_in_the_request(stow_server: Server, client: Any) -> None:
    """Whoever authentication put in ``Upload.principal`` is the request's principal."""
    stow = stow_server.handle.stow
    begin_upload = stow.begin_upload

    def authenticated(*args: Any) -> Any:
        upload = begin_upload(*args)
        if upload is not None:
            upload.principal = "alice@example.org"
        return upload

    stow.begin_upload = authenticated
    status, _, _ = await post(client, stow_server.url + "/dicomweb/wf/studies", [CT])
    assert status == 200
    (request,) = spooled(stow_server)
    assert request["principal"] == "alice@example.org"
