"""The S3 writer with commits held (``hold_commit``) against a store whose answers wait.

What SeaweedFS cannot be made to do on demand: answer CreateMultipartUpload
only when the test says, so a part named after its ``finish`` (a header walk
left behind) is still being created when ``commit`` or ``abort`` comes.  The
held path as a whole runs against a real SeaweedFS and twistd in
tests/integration/test_s3_verify_held.py.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any

from botocore.credentials import Credentials
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from twisted_stow.core.outcomes import InstanceRef
from twisted_stow.core.policy import CommitResult
from twisted_stow.storage.s3 import S3PartWriter, S3Storage
from twisted_stow.storage.s3client import Response, S3Client, S3Location

INSTANCE = InstanceRef("1.2.840.10008.5.1.4.1.1.4", "1.2.3", "1.2", "1.2.1")
KEY = "p/1.2/1.2.1/1.2.3.dcm"
CREATED = (
    b"<InitiateMultipartUploadResult><UploadId>up-1</UploadId></InitiateMultipartUploadResult>"
)


class GatedStore:
    """Answers every request 200 at once, except the operations in ``gated``: those
    wait until ``release``.  Records (operation, key, headers) of each request."""

    def __init__(self, location: S3Location) -> None:
        self.location = location
        self.gated: set[str] = set()
        self.waiting: list[Deferred[None]] = []
        self.sent: list[tuple[str, str, dict[str, str]]] = []

    async def request(
        self,
        operation: str,
        method: str,
        key: str = "",
        *,
        headers: Mapping[str, str] | None = None,
        **_: Any,
    ) -> Response:
        self.sent.append((operation, key, dict(headers or {})))
        if operation in self.gated:
            gate: Deferred[None] = Deferred()
            self.waiting.append(gate)
            await gate
        body = CREATED if operation == "CreateMultipartUpload" else b""
        status = 404 if operation == "GetObject (claim)" else 200
        return Response(status, {"etag": f'"{len(self.sent)}"'}, body)

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for gate in waiting:
            gate.callback(None)

    def operations(self) -> list[str]:
        return [operation for operation, _, _ in self.sent]


def writer_on(store: GatedStore) -> S3PartWriter:
    location = S3Location("b", "p/", "http://127.0.0.1:1", "us-east-1")
    reactor = MemoryReactorClock()  # type: ignore[no-untyped-call]
    storage = S3Storage(S3Client(location, Credentials("AK", "SK"), reactor), reactor)
    storage.client = store  # type: ignore[assignment]
    writer = storage.open_writer()
    writer._client = store  # type: ignore[assignment]
    return writer


def fired(d: Deferred[Any]) -> list[Any]:
    results: list[Any] = []
    d.addBoth(results.append)
    return results


def store() -> GatedStore:
    return GatedStore(S3Location("b", "p/", "http://127.0.0.1:1", "us-east-1"))


def test_a_held_small_part_leaves_memory_at_finish_and_completes_at_commit() -> None:
    """Held: finish sends the part (its writes fire), with the instance's SHA-256 as its
    checksum; commit claims, then completes; no PutObject of the instance."""
    s3 = store()
    writer = writer_on(s3)
    writer.hold_commit()
    data = [b"a" * 1000, b"b" * 2000]
    writes = [fired(writer.write(chunk)) for chunk in data]
    writer.named(INSTANCE)
    assert writes == [[], []]  # small: nothing sent before the end
    finished = fired(writer.finish())
    assert finished == [3000]
    assert writes == [[None], [None]]  # the bytes left memory at finish
    assert s3.operations() == ["CreateMultipartUpload", "PutObject", "UploadPart"]
    _, part_key, part_headers = s3.sent[2]
    assert part_key == KEY  # at its final key
    digest = hashlib.sha256(b"".join(data)).digest()
    assert part_headers["x-amz-checksum-sha256"] == base64.b64encode(digest).decode()
    assert writer.sha256 == digest
    result = fired(writer.commit(INSTANCE, overwrite=False))
    assert result == [CommitResult.STORED]
    assert s3.operations()[3:] == [
        "PutObject (claim)",
        "CompleteMultipartUpload",
        "DeleteObject",  # the upload's marker for the sweep
    ]
    assert all(not (op == "PutObject" and key == KEY) for op, key, _ in s3.sent)


def test_not_held_a_small_part_waits_for_one_put_object_at_commit() -> None:
    """Without hold_commit the faster path stays: no multipart upload, one PutObject."""
    s3 = store()
    writer = writer_on(s3)
    write = fired(writer.write(b"c" * 3000))
    writer.named(INSTANCE)
    assert fired(writer.finish()) == [3000]
    assert write == [] and s3.operations() == []
    assert fired(writer.commit(INSTANCE, overwrite=False)) == [CommitResult.STORED]
    assert write == [None]
    assert s3.operations() == ["PutObject (claim)", "PutObject"]


def test_commit_waits_for_a_part_named_after_finish() -> None:
    """Named only after finish fired (its header walk was behind): the create is in flight
    when commit comes; commit completes only once the part is sent."""
    s3 = store()
    s3.gated.add("CreateMultipartUpload")
    writer = writer_on(s3)
    writer.hold_commit()
    write = fired(writer.write(b"d" * 3000))
    assert fired(writer.finish()) == [3000]  # not named yet: finish fires at once
    writer.named(INSTANCE)
    assert s3.operations() == ["CreateMultipartUpload"]
    result = fired(writer.commit(INSTANCE, overwrite=False))
    assert result == [] and write == []
    s3.release()
    assert result == [CommitResult.STORED] and write == [None]
    assert s3.operations() == [
        "CreateMultipartUpload",
        "PutObject",
        "UploadPart",
        "PutObject (claim)",
        "CompleteMultipartUpload",
        "DeleteObject",
    ]


def test_abort_during_the_create_fires_once_the_upload_is_aborted() -> None:
    """An abort while CreateMultipartUpload waits: it fires only after the upload it
    created is aborted and its marker deleted (nothing left open behind the answer)."""
    s3 = store()
    s3.gated.add("CreateMultipartUpload")
    writer = writer_on(s3)
    writer.hold_commit()
    fired(writer.write(b"e" * 3000))
    writer.named(INSTANCE)
    finished = fired(writer.finish())
    aborted = fired(writer.abort())
    assert aborted == [] and finished == []
    s3.release()
    assert aborted == [None] and len(finished) == 1
    assert s3.operations() == [
        "CreateMultipartUpload",
        "PutObject",  # the marker, registered before anything else
        "AbortMultipartUpload",
        "DeleteObject",
    ]
