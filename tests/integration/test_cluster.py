"""Issue 14 point 5: faults survived by 2 real nodes behind real haproxy.

The nodes share a real SeaweedFS (instances), a real PostgreSQL (``--index``:
the SOP index and the workflow outbox) and a real RabbitMQ; haproxy runs
deploy/haproxy.cfg.  Eight clients upload two small instances per POST
through haproxy while one fault happens:

- a node SIGKILLed, with a large upload held open mid-body on it (an S3
  multipart upload in flight): that upload fails at its client; every
  instance either node acknowledged is in the store byte-identical and in the
  index as stored; every acknowledged workflow request is delivered; once the
  dead node's uploads count as abandoned, the sweep of the node started in
  its place leaves no multipart upload open;
- PostgreSQL restarted: during the gap every answer is 503 + Retry-After or
  0x0110 per instance, never a 500 or a hang; the nodes recover by themselves;
- RabbitMQ stopped: POSTs are still answered, and their workflow requests are
  delivered once it is back.

Each node runs the default worker count (one per CPU), as a deployed node
would: "killing the node" is a SIGKILL of its main process, which takes its
workers down with it; the held upload's node is found by its worker's pid.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest
import requests

from tests.dicom_files import CT, MR
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.cluster import Balancer, Load, NodeProcess, start_haproxy, start_node
from tests.integration.observe import wait_until
from tests.integration.postgres import PostgreSQL
from tests.integration.rabbitmq import RabbitMQ
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
# The MONAI route: every stored POST is a workflow request.
MONAI_PATH = "/dicomweb/studies"
EXCHANGE = "monaideploy"
ROUTING_KEY = "md.workflow.request"
PROCESSING_FAILURE = 0x0110
# Delivery: the outbox relays within its rescan, a dead relay's claims after
# their 15 s lease, a restarted broker after its ~15 s start.
WAIT_SECONDS = 60.0


def key(ds: Any) -> str:
    return f"{PREFIX}{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"


@dataclass
class Shared:
    """What the nodes of one test share: a bucket, an index database, a queue."""

    seaweed: SeaweedFS
    bucket: str
    postgres: PostgreSQL
    index_url: str
    broker: RabbitMQ
    queue: str

    def node(self, directory: Path) -> NodeProcess:
        # The launcher passes a --storage of its own first; the later s3:// one wins.
        return start_node(
            directory,
            "--storage",
            f"s3://{self.bucket}/{PREFIX}",
            "--s3-endpoint",
            self.seaweed.endpoint,
            "--workflow-spool",
            str(directory / "spool"),
            "--index",
            self.index_url,
            "--amqp-url",
            self.broker.url,
            env={**os.environ, **credentials_env()},
        )

    def index_rows(self, uids: list[str]) -> dict[str, tuple[str, bytes, str]]:
        """SOP Instance UID -> (state, sha256, object key) of the index rows."""
        with self.postgres.connect(self.index_url.rsplit("/", 1)[1]) as conn:
            rows = conn.execute(
                "SELECT sop_instance_uid, state, sha256, object_key FROM stow_instances"
                " WHERE sop_instance_uid = ANY(%s)",
                (uids,),
            ).fetchall()
        return {str(uid): (str(state), bytes(sha), str(k)) for uid, state, sha, k in rows}

    def delivered(self) -> set[str]:
        """Correlation ids of the workflow requests in the queue so far (taken from it)."""
        found = set()
        with closing(pika.BlockingConnection(self.broker.parameters())) as connection:
            channel = connection.channel()
            while True:
                method, _, body = channel.basic_get(self.queue, auto_ack=True)
                if method is None:
                    return found
                found.add(json.loads(body)["correlation_id"])


@pytest.fixture
def shared(seaweed: SeaweedFS, postgres: PostgreSQL, broker: RabbitMQ) -> Shared:
    queue = f"cluster-{uuid.uuid4().hex[:8]}"
    with closing(pika.BlockingConnection(broker.parameters())) as connection:
        channel = connection.channel()
        channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, EXCHANGE, routing_key=ROUTING_KEY)
    return Shared(seaweed, seaweed.new_bucket(), postgres, postgres.new_database(), broker, queue)


@contextmanager
def cluster(shared: Shared, directory: Path) -> Iterator[tuple[list[NodeProcess], Balancer]]:
    """Two nodes and haproxy before them, all stopped by PID afterwards."""
    nodes: list[NodeProcess] = []
    balancer: Balancer | None = None
    try:
        nodes = [shared.node(directory / f"node{i}") for i in (1, 2)]
        balancer = start_haproxy(directory / "haproxy", [node.port for node in nodes])
        url = balancer.url
        assert wait_until(lambda: requests.get(url + "/readyz", timeout=5).ok, 20)
        yield nodes, balancer
    finally:
        for node in nodes:
            node.stop()
        if balancer is not None:
            balancer.stop()


def check_acknowledged(shared: Shared, load: Load) -> None:
    """Every acknowledged instance byte-identical in the store and stored in the index;
    every acknowledged workflow request delivered."""
    s3 = shared.seaweed.client()
    acknowledged = load.acknowledged()
    assert len(acknowledged) > CLIENTS
    for attempt, uid in acknowledged:
        ds, data = attempt.instances[uid]
        assert read_object(s3, shared.bucket, key(ds)) == (data, "application/dicom")
    rows = shared.index_rows([uid for _, uid in acknowledged])
    for attempt, uid in acknowledged:
        ds, data = attempt.instances[uid]
        assert rows[uid] == ("stored", hashlib.sha256(data).digest(), key(ds)), uid
    expected = {a.correlation_id for a in load.attempts if a.stored}
    assert None not in expected
    seen: set[str] = set()

    def all_delivered() -> bool:
        seen.update(shared.delivered())
        return expected <= seen

    assert wait_until(all_delivered, WAIT_SECONDS), len(expected - seen)


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


def post_one(url: str) -> int:
    _, data = new_instance(MR)
    answer = requests.post(
        url + "/studies",
        data=build_multipart([data], BOUNDARY),
        headers={"Content-Type": multipart_content_type(BOUNDARY)},
        timeout=ANSWER_SECONDS,
    )
    return answer.status_code


def answer_of(sock: socket.socket) -> bytes:
    """What the client of the held upload gets: bytes until close, or a reset."""
    received = b""
    try:
        while data := sock.recv(65536):
            received += data
    except OSError:
        pass
    return received


def test_node_killed_mid_run(shared: Shared, tmp_path: Path) -> None:
    s3 = shared.seaweed.client()
    bucket = shared.bucket
    replacement: NodeProcess | None = None
    with cluster(shared, tmp_path) as (nodes, balancer):
        url = balancer.url
        held, held_ds = hold_large_upload(balancer.port)
        # The held upload's multipart upload is registered: on which node?
        assert wait_until(lambda: upload_markers(s3, bucket), 20)
        (run,) = upload_markers(s3, bucket)
        # The run belongs to the worker process that took the upload (each node
        # runs one per CPU); killing its node's main process takes it down too.
        (victim,) = [
            node
            for node in nodes
            if any(run.startswith(f"{pid}-") for pid in [node.pid, *node.twistd.children_pids()])
        ]
        (survivor,) = [node for node in nodes if node is not victim]

        with Load(url, MONAI_PATH, clients=CLIENTS) as load:
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

        check_acknowledged(shared, load)
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
        try:
            replacement = shared.node(tmp_path / "node3")
            assert wait_until(lambda: not open_uploads(s3, bucket), 20), open_uploads(s3, bucket)
            assert wait_until(lambda: not upload_markers(s3, bucket), 10)
        finally:
            if replacement is not None:
                replacement.stop()
        # The survivor's run was never taken for dead.
        runs = s3.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}.stow/runs/")["Contents"]
        survivors = [survivor.pid, *survivor.twistd.children_pids()]
        assert any(
            item["Key"].rsplit("/", 1)[1].startswith(f"{pid}-")
            for item in runs
            for pid in survivors
        )


def test_postgres_restarted_mid_run(shared: Shared, tmp_path: Path) -> None:
    with cluster(shared, tmp_path) as (nodes, balancer):
        with Load(balancer.url, MONAI_PATH, clients=CLIENTS) as load:
            time.sleep(RUN_SECONDS)
            load.phase = "gap"
            shared.postgres.stop()
            time.sleep(RUN_SECONDS * 2)
            shared.postgres.start()
            load.phase = "after"
            # Each node recovers by itself: it stores again, directly asked.
            for node in nodes:
                assert wait_until(lambda node=node: post_one(node.url) == 200, WAIT_SECONDS)
            time.sleep(RUN_SECONDS)
        for attempt in load.attempts:
            # Never a hang (no answer within the client's timeout) or a 500.
            assert attempt.status is not None, attempt.error
            if attempt.status == 503:
                assert attempt.retry_after, attempt
            elif attempt.status != 200:
                # Read and refused per instance: 0x0110 for what was not stored.
                assert set(attempt.failure_reasons) == {PROCESSING_FAILURE}, attempt
                assert attempt.status in (202, 409), attempt
        gap = [a for a in load.attempts if a.phase == "gap"]
        assert any(a.status != 200 for a in gap), "the restart was never seen"
        assert any(a.status == 200 for a in load.attempts if a.phase == "after")
        check_acknowledged(shared, load)


def test_broker_stopped_mid_run(shared: Shared, tmp_path: Path) -> None:
    with cluster(shared, tmp_path) as (_, balancer):
        with Load(balancer.url, MONAI_PATH, clients=CLIENTS) as load:
            time.sleep(RUN_SECONDS)
            shared.broker.stop()
            load.phase = "broker down"
            time.sleep(RUN_SECONDS * 2)
        down = [a for a in load.attempts if a.phase == "broker down"]
        # Answered as usual while the broker is down.
        assert down and all(a.status == 200 for a in down), {a.status for a in down}
        assert all(a.status == 200 for a in load.attempts)
        shared.broker.start()
        check_acknowledged(shared, load)
