"""Issue 13 point 5: uploads of one SOP Instance UID racing on two servers over one store.

Two separate ``twistd -n stow`` processes (their own ports, their own runs)
share one bucket and prefix on one real SeaweedFS.  Each trial sends an
instance with the same UIDs but other bytes to each of them at once; the
claim object ``.sop-index/<SOP>`` must decide, so exactly one is stored
whole.  The takeover trials plant a claim left by a dead run first: both
servers find it abandoned at the same moment, and still only one may take
it over.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.dicom_files import MR
from tests.integration.seaweedfs import SeaweedFS, open_uploads, read_object
from tests.integration.streaming import failure_reasons, sop_instance_uids
from tests.integration.test_s3_storage import (
    DUPLICATE_REJECTED,
    LARGE_BYTES,
    S3Server,
    new_instance,
    post,
    with_same_uid,
)

TRIALS = 3
PREFIX = "site/a/"


def two_servers(seaweed: SeaweedFS, base: Path, *options: str) -> tuple[S3Server, S3Server]:
    """Two twistd processes on one bucket and prefix."""
    bucket = seaweed.new_bucket()
    storage = ("--storage", f"s3://{bucket}/{PREFIX.rstrip('/')}")
    first = S3Server(seaweed, base / "one", bucket, *storage, *options)
    try:
        second = S3Server(seaweed, base / "two", bucket, *storage, *options)
    except BaseException:
        first.stop()
        raise
    return first, second


@pytest.fixture(scope="module")
def rejecting(
    seaweed: SeaweedFS, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[S3Server, S3Server]]:
    servers = two_servers(seaweed, tmp_path_factory.mktemp("reject"))
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def race(servers: tuple[S3Server, S3Server], bodies: list[bytes]) -> list[tuple[int, Any]]:
    """POST ``bodies[i]`` to ``servers[i]``, both released at once; their answers."""
    answers: list[tuple[int, Any]] = [(0, {}), (0, {})]
    start = threading.Barrier(2)

    def send(index: int) -> None:
        start.wait()
        answers[index] = post(servers[index].url, [bodies[index]])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return answers


def claim_fields(server: S3Server, ds: Any) -> list[str]:
    index = f"{PREFIX}.sop-index/{ds.SOPInstanceUID}"
    body = server.s3.get_object(Bucket=server.bucket, Key=index)["Body"].read()
    return str(body.decode()).split("\n")


def assert_one_winner(
    servers: tuple[S3Server, S3Server], ds: Any, bodies: list[bytes], answers: list[Any]
) -> None:
    """Exactly one 200 whose bytes are the object (and the claim's SHA-256); the other 0x0111."""
    codes = sorted(code for code, _ in answers)
    assert codes == [200, 409], answers
    winner = next(i for i, (code, _) in enumerate(answers) if code == 200)
    assert sop_instance_uids(answers[winner][1]) == [ds.SOPInstanceUID]
    assert failure_reasons(answers[1 - winner][1]) == [DUPLICATE_REJECTED]
    s3, bucket = servers[0].s3, servers[0].bucket
    assert read_object(s3, bucket, servers[0].key(ds))[0] == bodies[winner]
    assert claim_fields(servers[0], ds)[1] == hashlib.sha256(bodies[winner]).hexdigest()
    assert open_uploads(s3, bucket) == []


def test_two_servers_race_multipart_instances_of_one_uid(
    rejecting: tuple[S3Server, S3Server],
) -> None:
    """Other bytes under one UID at once on two servers: one stored whole, the other 0x0111."""
    for trial in range(TRIALS):
        ds, first = new_instance(padding=LARGE_BYTES, seed=20 + trial)
        bodies = [first, with_same_uid(ds, padding=LARGE_BYTES, seed=40 + trial)]
        assert_one_winner(rejecting, ds, bodies, race(rejecting, bodies))


def plant_abandoned_claim(server: S3Server, ds: Any, run: str) -> None:
    """A claim of ``ds``'s UID by ``run`` (no heartbeat: dead) whose object was never written."""
    index = f"{PREFIX}.sop-index/{ds.SOPInstanceUID}"
    claim = f"{server.key(ds)}\n{'0' * 64}\n123\n{run}\n".encode()
    server.s3.put_object(Bucket=server.bucket, Key=index, Body=claim)


def test_two_servers_race_to_take_over_an_abandoned_claim(
    rejecting: tuple[S3Server, S3Server],
) -> None:
    """A dead run's claim, found abandoned by two servers at once: only one takes it over."""
    for trial in range(TRIALS):
        ds, first = new_instance(MR)
        bodies = [first, with_same_uid(ds, padding=1000, seed=60 + trial)]
        plant_abandoned_claim(rejecting[0], ds, f"dead-run-{trial}")
        assert_one_winner(rejecting, ds, bodies, race(rejecting, bodies))


def test_two_servers_race_to_take_over_with_multipart_instances(
    rejecting: tuple[S3Server, S3Server],
) -> None:
    """The same takeover race with multipart-sized instances (claimed before completion)."""
    for trial in range(TRIALS):
        ds, first = new_instance(padding=LARGE_BYTES, seed=80 + trial)
        bodies = [first, with_same_uid(ds, padding=LARGE_BYTES, seed=90 + trial)]
        plant_abandoned_claim(rejecting[0], ds, f"dead-run-mp-{trial}")
        assert_one_winner(rejecting, ds, bodies, race(rejecting, bodies))


def test_two_overwriting_servers_race(seaweed: SeaweedFS, tmp_path: Path) -> None:
    """``--duplicates overwrite`` on both: both succeed, the object is one of the two, whole."""
    servers = two_servers(seaweed, tmp_path, "--duplicates", "overwrite")
    try:
        for trial in range(TRIALS):
            ds, first = new_instance(padding=LARGE_BYTES, seed=100 + trial)
            bodies = [first, with_same_uid(ds, padding=LARGE_BYTES, seed=110 + trial)]
            assert post(servers[0].url, [bodies[0]])[0] == 200  # something to overwrite
            answers = race(servers, bodies)
            assert [code for code, _ in answers] == [200, 200], answers
            s3, bucket = servers[0].s3, servers[0].bucket
            stored = read_object(s3, bucket, servers[0].key(ds))[0]
            assert stored in bodies
            assert open_uploads(s3, bucket) == []
    finally:
        for server in servers:
            server.stop()


RACERS = 8


def racing_writes(seaweed: SeaweedFS, write: Callable[[Any, int], Any]) -> list[int]:
    """``write(client, i)`` from ``RACERS`` threads at once; the HTTP status each got."""
    clients = [seaweed.client() for _ in range(RACERS)]
    statuses = [0] * RACERS
    start = threading.Barrier(RACERS)

    def run(index: int) -> None:
        start.wait()
        try:
            answer = write(clients[index], index)
            statuses[index] = answer["ResponseMetadata"]["HTTPStatusCode"]
        except ClientError as e:
            statuses[index] = e.response["ResponseMetadata"]["HTTPStatusCode"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return statuses


def conditional_write(
    operation: str, bucket: str, key: str, etag: str
) -> Callable[[Any, int], Any]:
    """Racer ``i``'s conditional write of ``key`` (``etag``: the version it read)."""

    def write(client: Any, index: int) -> Any:
        body = b"racer %d" % index
        if operation == "PutObject If-None-Match":
            return client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
        if operation == "PutObject If-Match":
            return client.put_object(Bucket=bucket, Key=key, Body=body, IfMatch=etag)
        return client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)

    return write


@pytest.mark.parametrize(
    ("operation", "success"),
    [("PutObject If-None-Match", 200), ("PutObject If-Match", 200), ("DeleteObject If-Match", 204)],
)
def test_store_honours_the_conditions_claims_rest_on(
    seaweed: SeaweedFS, operation: str, success: int
) -> None:
    """What the claim design assumes of the store, under races of 8 writers on one key:
    exactly one conditional write succeeds, the others get 412."""
    s3 = seaweed.client()
    bucket = seaweed.new_bucket()
    for trial in range(TRIALS):
        key = f"claim-{trial}"
        etag = ""
        if operation != "PutObject If-None-Match":
            etag = s3.put_object(Bucket=bucket, Key=key, Body=b"stale")["ETag"]
        statuses = racing_writes(seaweed, conditional_write(operation, bucket, key, etag))
        assert sorted(statuses) == [success] + [412] * (RACERS - 1)
