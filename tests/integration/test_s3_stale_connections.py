"""A request on a pooled keep-alive connection the store closed is sent again, once.

Against a real SeaweedFS behind ``StaleConnectionRelay``: the first attempt
of every write (PutObject of instances, claims and markers, UploadPart,
Create/Complete/AbortMultipartUpload, DeleteObject) fails before any answer,
either before the store saw it ("reset") or after it acted ("lose-answer":
the retry meets its own effect, a claim refused 412 by the claim it wrote).
Before the retry, each such request failed its part 0x0110.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.dicom_files import MR
from tests.integration.seaweedfs import SeaweedFS, open_uploads, read_object
from tests.integration.stale_relay import MODES, StaleConnectionRelay
from tests.integration.streaming import failure_reasons, sop_instance_uids
from tests.integration.test_s3_storage import (
    ANSWER_TIMEOUT_SECONDS,
    DUPLICATE_REJECTED,
    LARGE_BYTES,
    S3Server,
    new_instance,
    post,
    with_same_uid,
)


def writes(line: bytes) -> bool:
    """Every write that may go on a pooled connection (CreateMultipartUpload never does)."""
    return line.split(b" ", 1)[0] in (b"PUT", b"POST", b"DELETE") and b"?uploads=" not in line


@pytest.fixture(params=MODES)
def relayed(
    request: pytest.FixtureRequest, seaweed: SeaweedFS, tmp_path: Path
) -> Iterator[tuple[StaleConnectionRelay, S3Server]]:
    port = urlsplit(seaweed.endpoint).port
    assert port is not None
    relay = StaleConnectionRelay(port, request.param)
    bucket = seaweed.new_bucket()
    server: S3Server | None = None
    try:
        # --workers 1: one process, one pool, so every write meets the relay's
        # sabotage in one place.
        server = S3Server.fronted(seaweed, tmp_path, bucket, relay.endpoint)
        yield relay, server
    finally:
        if server is not None:
            server.stop()
        relay.close()


def test_writes_failing_before_an_answer_are_sent_again(
    relayed: tuple[StaleConnectionRelay, S3Server],
) -> None:
    """Every write's first attempt fails before an answer: the upload still succeeds,
    the objects are byte-identical, the claims are this upload's, nothing is left open;
    then a duplicate of one (its claim read back) and a conflicting one still answer
    as without faults."""
    relay, server = relayed
    small_ds, small = new_instance(MR)
    large_ds, large = new_instance(padding=LARGE_BYTES, seed=5)
    relay.selects = writes
    code, model = post(server.url, [small, large])
    assert code == 200, (model, server.twistd.log_tail())
    assert sorted(sop_instance_uids(model)) == sorted(
        [small_ds.SOPInstanceUID, large_ds.SOPInstanceUID]
    )
    s3 = server.s3
    for ds, data in ((small_ds, small), (large_ds, large)):
        stored, content_type = read_object(s3, server.bucket, server.key(ds))
        assert stored == data and content_type == "application/dicom"
        claim, _ = read_object(s3, server.bucket, f"{server.prefix}.sop-index/{ds.SOPInstanceUID}")
        fields = claim.decode().split("\n")
        assert fields[:3] == [server.key(ds), hashlib.sha256(data).hexdigest(), str(len(data))]
    assert open_uploads(s3, server.bucket) == []
    listed = s3.list_objects_v2(Bucket=server.bucket, Prefix=f"{server.prefix}.stow/uploads/")
    assert listed.get("KeyCount", 0) == 0
    lines = [line for line, _ in relay.sabotaged]
    # What each instance's commit sends failed once: its claim, the small one's
    # PutObject, the large one's UploadPart and CompleteMultipartUpload.
    assert sum(b"/.sop-index/" in line for line in lines) == 2, lines
    assert any(line.startswith(b"PUT") and b"partNumber=1" in line for line in lines), lines
    assert any(line.startswith(b"POST") and b"uploadId=" in line for line in lines), lines
    assert any(line.startswith(b"PUT") and line.endswith(b".dcm HTTP/1.1") for line in lines)
    # Some of them came on a kept-alive connection, the case this is about.
    assert any(reused for _, reused in relay.sabotaged), relay.sabotaged
    # The same bytes again: an identical duplicate; other bytes under one UID: refused.
    code, model = post(server.url, [small])
    assert code == 200, model
    code, model = post(server.url, [with_same_uid(small_ds, padding=100, seed=1)])
    assert code == 409 and failure_reasons(model) == [DUPLICATE_REJECTED], model
    ready = requests.get(server.url + "/readyz", timeout=ANSWER_TIMEOUT_SECONDS)
    assert ready.status_code == 200, ready.text
