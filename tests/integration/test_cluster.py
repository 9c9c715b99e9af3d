"""Issue 14 point 5: a node SIGKILLed mid-run, 2 real nodes behind real haproxy, real SeaweedFS.

Eight clients upload small instances through haproxy (deploy/haproxy.cfg)
while one large upload is held open mid-body on one node, an S3 multipart
upload in flight.  That node is SIGKILLed.  Then: the held upload fails at
its client; every instance either node acknowledged is in the store
byte-identical; the cluster keeps answering through the survivor; and once
the dead node's uploads count as abandoned, the sweep of the node started in
its place leaves no multipart upload open.

One node process each (no ``--workers`` on this branch's base): the fault
under test is a node's death, and one process per node makes "the node" and
"the process" the same PID to kill.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.dicom_files import CT
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.cluster import Balancer, Load, NodeProcess, start_haproxy, start_node
from tests.integration.observe import wait_until
from tests.integration.seaweedfs import SeaweedFS, credentials_env, open_uploads, read_object
from tests.integration.test_s3_storage import new_instance

BOUNDARY = "stow-cluster-boundary"
CLIENTS = 8
PREFIX = "site/"
MiB = 1024 * 1024
# Over the 5 MiB multipart minimum: the held upload is a multipart upload.
LARGE_PADDING = 6 * MiB
# What the held upload sends before it waits: past the first S3 part.
LARGE_SENT = 5 * MiB + 512 * 1024
RUN_SECONDS = 2.0
ANSWER_SECONDS = 30.0


def key(ds: Any) -> str:
    return f"{PREFIX}{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    store = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    store.start()
    try:
        yield store
    finally:
        store.stop()


def s3_node(directory: Path, seaweed: SeaweedFS, bucket: str) -> NodeProcess:
    # The launcher passes a --storage of its own first; the later s3:// one wins.
    return start_node(
        directory,
        "--storage",
        f"s3://{bucket}/{PREFIX}",
        "--s3-endpoint",
        seaweed.endpoint,
        "--workflow-spool",
        str(directory / "spool"),
        env={**os.environ, **credentials_env()},
    )


def hold_large_upload(port: int) -> tuple[socket.socket, Any]:
    """A large instance's headers and first 5.5 MiB through the balancer, then a pause."""
    ds, data = new_instance(CT, padding=LARGE_PADDING)
    body = build_multipart([data], BOUNDARY)
    sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_SECONDS)
    sock.sendall(
        (
            "POST /studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: {multipart_content_type(BOUNDARY)}\r\n"
            "Accept: application/dicom+json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body[:LARGE_SENT]
    )
    return sock, ds


def upload_markers(s3: Any, bucket: str) -> list[str]:
    """The runs (``PID-TOKEN``) with a multipart upload registered for the sweep."""
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}.stow/uploads/")
    return [item["Key"].split("/")[3] for item in listed.get("Contents", [])]


def answer_of(sock: socket.socket) -> bytes:
    """What the client of the held upload gets: bytes until close, or a reset."""
    received = b""
    try:
        while data := sock.recv(65536):
            received += data
    except OSError:
        pass
    return received


def test_node_killed_mid_run(seaweed: SeaweedFS, tmp_path: Path) -> None:
    s3 = seaweed.client()
    bucket = seaweed.new_bucket()
    nodes = [s3_node(tmp_path / f"node{i}", seaweed, bucket) for i in (1, 2)]
    balancer: Balancer | None = None
    replacement: NodeProcess | None = None
    try:
        balancer = start_haproxy(tmp_path / "haproxy", [node.port for node in nodes])
        url = balancer.url
        assert wait_until(lambda: requests.get(url + "/readyz", timeout=5).ok, 20)
        held, held_ds = hold_large_upload(balancer.port)
        # The held upload's multipart upload is registered: on which node?
        assert wait_until(lambda: upload_markers(s3, bucket), 20)
        (run,) = upload_markers(s3, bucket)
        (victim,) = [node for node in nodes if run.startswith(f"{node.pid}-")]
        (survivor,) = [node for node in nodes if node is not victim]

        with Load(url, clients=CLIENTS) as load:
            time.sleep(RUN_SECONDS)
            victim.kill()
            load.phase = "after"
            time.sleep(RUN_SECONDS * 2)
        attempts = load.attempts

        # The upload in flight on the dead node failed at its client.
        answer = answer_of(held)
        held.close()
        assert not answer.startswith(b"HTTP/1.1 2"), answer[:300]
        assert s3.list_objects_v2(Bucket=bucket, Prefix=key(held_ds))["KeyCount"] == 0

        # Every acknowledged instance is stored byte-identical.
        acknowledged = load.acknowledged()
        assert len(acknowledged) > CLIENTS
        for attempt, uid in acknowledged:
            ds, data = attempt.instances[uid]
            assert read_object(s3, bucket, key(ds)) == (data, "application/dicom")
        # Only answers a dead node can cause: never a 500, never a 2xx without
        # the instances; the survivor kept serving once haproxy saw the death.
        statuses = {a.status for a in attempts}
        assert statuses <= {None, 200, 502, 503}, statuses
        assert all(len(a.stored) == 2 for a in attempts if a.status == 200)
        assert any(a.status == 200 for a in attempts if a.phase == "after")

        # The dead run's multipart upload is still open: nobody has swept it.
        assert open_uploads(s3, bucket)
        # Once its heartbeat is stale (5 minutes; removed here, which the sweep
        # reads the same way), the node started in the dead one's place sweeps
        # at start-up: no multipart upload stays open, the marker goes too.
        s3.delete_object(Bucket=bucket, Key=f"{PREFIX}.stow/runs/{run}")
        replacement = s3_node(tmp_path / "node3", seaweed, bucket)
        assert wait_until(lambda: not open_uploads(s3, bucket), 20), open_uploads(s3, bucket)
        assert wait_until(lambda: not upload_markers(s3, bucket), 10)
        # The survivor's run was never taken for dead.
        runs = s3.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}.stow/runs/")["Contents"]
        assert any(item["Key"].rsplit("/", 1)[1].startswith(f"{survivor.pid}-") for item in runs)
    finally:
        for node in [*nodes, *([replacement] if replacement else [])]:
            node.stop()
        if balancer is not None:
            balancer.stop()
