"""``--verify-body-digest`` into S3: a body of more small parts than a window holds.

With commits held until the whole body's Content-Digest is checked, a part
below S3's 5 MiB multipart minimum used to wait in memory for its
PutObject at commit: twelve such parts (more than ``--memory-budget 10M``,
the smallest S3 window, holds) filled the window, the server stopped
reading, and the verdict needed the rest of the body, so the request never
got an answer.  Each held small part is now sent at its end as a one-part
multipart upload and completed at commit, after the claim.

A real ``twistd -n stow`` into a real SeaweedFS; the client's 60 s timeout
is only the failure detector (the upload takes seconds), no time is asserted.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.dicom_files import MR
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.seaweedfs import SeaweedFS, open_uploads, read_object
from tests.integration.streaming import failure_reasons, sop_instance_uids
from tests.integration.test_s3_storage import (
    ANSWER_TIMEOUT_SECONDS,
    BOUNDARY,
    S3Server,
    new_instance,
    start_server,
)

MiB = 1024 * 1024
# The smallest S3 budget: one window of 10 MiB.
BUDGET_BYTES = 10 * MiB
# Twelve parts of ~1.5 MiB: 18 MiB, more than the window, each below 5 MiB.
SMALL_PARTS = 12
SMALL_PADDING_BYTES = 3 * MiB // 2
# One part above the multipart minimum rides along: the held large path too.
LARGE_PADDING_BYTES = 5 * MiB + 300 * 1024
CANNOT_UNDERSTAND = 0xC000


@pytest.fixture()
def server(seaweed: SeaweedFS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """``--verify-body-digest --memory-budget 10M``, on a bucket of its own."""
    running = start_server(
        seaweed,
        tmp_path_factory.mktemp("stow-verify-held"),
        "--verify-body-digest",
        "--memory-budget",
        str(BUDGET_BYTES),
    )
    try:
        yield running
    finally:
        running.stop()


def instances() -> list[tuple[Any, bytes]]:
    small = [new_instance(MR, padding=SMALL_PADDING_BYTES, seed=i) for i in range(SMALL_PARTS)]
    return [*small[:6], new_instance(MR, padding=LARGE_PADDING_BYTES, seed=99), *small[6:]]


def post_with_digest(url: str, body: bytes, digest: bytes) -> requests.Response:
    field = base64.b64encode(digest).decode()
    return requests.post(
        url + "/studies",
        data=body,
        headers={
            "Content-Type": multipart_content_type(BOUNDARY),
            "Accept": "application/dicom+json",
            "Content-Digest": f"sha-256=:{field}:",
        },
        timeout=ANSWER_TIMEOUT_SECONDS,
    )


def stored_keys(server: S3Server) -> list[str]:
    """Every object under the server's prefix but its run's own bookkeeping (heartbeat)."""
    listed = server.s3.list_objects_v2(Bucket=server.bucket, Prefix=server.prefix)
    return sorted(
        item["Key"]
        for item in listed.get("Contents", [])
        if not item["Key"].startswith(f"{server.prefix}.stow/runs/")
    )


def test_more_small_parts_than_the_window_are_stored_once_the_digest_matches(
    server: S3Server,
) -> None:
    """18 MiB of 1.5 MiB parts (and one multipart-sized) through a 10 MiB window, the body's
    digest right: 200, every object byte-identical, no multipart upload left open."""
    parts = instances()
    body = build_multipart([data for _, data in parts], BOUNDARY)
    response = post_with_digest(server.url, body, hashlib.sha256(body).digest())
    assert response.status_code == 200, response.text
    assert sop_instance_uids(response.json()) == [str(ds.SOPInstanceUID) for ds, _ in parts]
    for ds, data in parts:
        stored, content_type = read_object(server.s3, server.bucket, server.key(ds))
        assert stored == data
        assert content_type == "application/dicom"
    assert open_uploads(server.s3, server.bucket) == []
    # Objects and claims only: every upload's marker for the sweep is gone.
    assert len(stored_keys(server)) == 2 * len(parts)


def test_a_wrong_body_digest_stores_nothing_and_leaves_no_upload_open(server: S3Server) -> None:
    """The same body with a digest that is not its own: 409, every instance 0xC000, no
    object, no claim, no marker and no multipart upload left."""
    parts = instances()
    body = build_multipart([data for _, data in parts], BOUNDARY)
    response = post_with_digest(server.url, body, hashlib.sha256(b"not the body").digest())
    assert response.status_code == 409, response.text
    assert failure_reasons(response.json()) == [CANNOT_UNDERSTAND] * len(parts)
    assert stored_keys(server) == []
    assert open_uploads(server.s3, server.bucket) == []
