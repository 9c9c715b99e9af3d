"""Object storage: each part streams into S3 as it arrives, nothing on local disk.

Layout (``PREFIX`` from ``--storage s3://BUCKET/PREFIX``):

- ``PREFIX/<Study>/<Series>/<SOP>.dcm``: the instance, byte-identical to the
  part, ``Content-Type: application/dicom``;
- ``PREFIX/.sop-index/<SOP>``: the claim of a SOP Instance UID (its object's
  key, SHA-256 and size), written with ``If-None-Match: *`` before the
  instance becomes visible, and taken over or overwritten only with
  ``If-Match`` on the ETag read: SeaweedFS 4.48 honours both on PutObject
  under races but not ``If-None-Match`` on CompleteMultipartUpload, so
  racing uploads of one UID (on one server or several) are decided by the
  claim, never by the completion;
- ``PREFIX/.stow/runs/<run>``: this server run's heartbeat, and
  ``PREFIX/.stow/uploads/<run>/<UploadId>``: each multipart upload it has
  open (the object's key as body), so the sweep knows which uploads are whose
  and aborts only those of runs whose heartbeat stopped.

A part below ``MULTIPART_MIN_BYTES`` stays in memory and goes in one
PutObject at ``commit``.  A larger one becomes a multipart upload at its final
key as soon as its header names it (``INamedPartWriter.named``), parts cut at
``PART_BYTES`` and sent one at a time as they fill; ``commit`` claims the UID
and completes; ``abort`` aborts.  When commits are held for the whole body's
verdict (``--verify-body-digest``, ``INamedPartWriter.hold_commit``), a small
part cannot wait in memory until ``commit``: the window it holds is the one
the rest of the body needs, so it is sent at ``finish`` as a multipart upload
of one part (S3 allows the last, here the only, part below 5 MiB), marked
for the sweep like any other, and completed at ``commit`` after the claim.

Every request carries the SHA-256 of its body, signed (SigV4 payload hash)
and as ``x-amz-checksum-sha256``, so the store verifies what it got; the
instance's SHA-256 is fed per chunk on the reactor, each multipart part's
hashed over its chunks in a thread at its cut (``part_digest``).

Flow: a write's Deferred fires once its bytes left memory (their part was
sent, or dropped), so a part buffer is held within the upload's window of the
process's one memory budget (``core/budget.py``), and ``Ingest`` stops
reading the socket when the store is slower than the client.  The writer
sizes its buffers from that window (``S3Storage.window_bytes``): a part is
cut at half a window (``cut_bytes``, at least S3's 5 MiB), the upload's
low-water mark, so an upload paused at its window always holds a whole part
to send, never waits for bytes it may not read; a header not understood
within a window fails the part at once (``unnamed_limit_bytes``).  Parts are
sent from the chunks as received (``ChunksProducer``): never joined, never
copied whole.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import os
import secrets
import time
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ..core.budget import MIN_S3_WINDOW_BYTES, S3_WINDOW_BYTES
from ..core.dicomheader import MAX_HEADER_READ_BYTES
from ..core.outcomes import InstanceRef
from ..core.policy import CommitResult, StorageFull
from ..deferreds import detached
from ..interfaces import INamedPartWriter, IPartWriter, IStorage
from .s3client import (
    QUOTA_CODES,
    QUOTA_STATUS,
    ChunksProducer,
    S3Client,
    S3Error,
    S3Location,
    error_code,
    find_all,
    text_of,
)

log = Logger()

MiB = 1024 * 1024
# S3's smallest part but the last: a part that ends below this goes in one PutObject.
MULTIPART_MIN_BYTES = 5 * MiB
# A multipart part is cut once this much has filled (parts are 8-16 MiB:
# whatever filled while the previous part was sending goes with the next).
PART_BYTES = 8 * MiB
# S3 allows at most 10,000 parts: 8 MiB each bounds an instance at 78 GiB.
MAX_PARTS = 10_000
# A part whose header names no instance after this many bytes cannot be
# named (HeaderCapture refuses past MAX_HEADER_READ_BYTES): it is dropped.
UNNAMED_HOLD_BYTES = MAX_HEADER_READ_BYTES + PART_BYTES
# How long a racing identical upload waits for the winner's object to appear.
CLAIM_WAIT_SECONDS = 10.0
_CLAIM_POLL_SECONDS = 0.25
# Conditional claim writes one upload may lose (another upload changed the
# claim in between) before its part fails 0x0110: each loss means another
# upload made progress, so a few suffice; the bound keeps a store that
# answers 412 to everything from looping forever.
CLAIM_ROUNDS = 5
# Heartbeat of this run, and when another run counts as gone (its uploads swept).
HEARTBEAT_SECONDS = 60.0
RUN_STALE_SECONDS = 5 * HEARTBEAT_SECONDS
SWEEP_SECONDS = 300.0
# Any multipart upload under the prefix older than this is abandoned whoever
# started it (one that crashed between CreateMultipartUpload and its marker).
UPLOAD_MAX_AGE_SECONDS = 24 * 3600.0
# Health: the bucket is probed this often off the hot path (HEAD, short
# timeout), and the store counts as down once this many requests in a row
# (probes or uploads) got no answer at all or a server error (500, 503
# SlowDown, ...: ``s3client.UNAVAILABLE_STATUSES``).  One is not enough: a
# pooled keep-alive connection the store closed fails one request of a
# healthy store, and a busy one may throttle a single request.
HEALTH_PROBE_SECONDS = 2.0
HEALTH_PROBE_TIMEOUT_SECONDS = 2.0
DOWN_AFTER_FAILURES = 2
# Threads hashing part checksums (``S3Storage.digest``).
DIGEST_THREADS = 2
INDEX_DIR = ".sop-index/"
STOW_DIR = ".stow/"
DICOM_CONTENT_TYPE = "application/dicom"


def part_digest(chunks: list[bytes | memoryview]) -> bytes:
    """The SHA-256 of the S3 part made of ``chunks``, over them as they are (never joined).

    Run in the storage's digest thread (``S3Storage.digest``): hashlib
    releases the GIL above 2 KiB, so an 8-16 MiB part (~5 ms per 8 MiB) is
    hashed on the other core while the reactor serves every other upload.
    """
    part = hashlib.sha256()
    for chunk in chunks:
        part.update(chunk)
    return part.digest()


def checksum_headers(digest: bytes) -> dict[str, str]:
    """What makes the store verify a body: its SHA-256 signed and as a checksum."""
    return {
        "X-Amz-Content-SHA256": digest.hex(),
        "x-amz-checksum-sha256": base64.b64encode(digest).decode(),
    }


class _Dropped(Exception):
    """The part's bytes were dropped before it was sent."""


def _storage_error(error: S3Error) -> OSError:
    """A failed S3 request as ingest sees it: no room (0xA700) or a fault (0x0110)."""
    if error.code in QUOTA_CODES or error.status == QUOTA_STATUS:
        return StorageFull(error.strerror)  # type: ignore[return-value]
    return error


@implementer(IPartWriter, INamedPartWriter)
class S3PartWriter:
    """One part on its way into S3; see ``IPartWriter`` and the module docstring.

    Each write adds its chunk and its Deferred to the buffer being filled.
    When a part is cut it takes the buffer's chunks and Deferreds along; once
    it is sent (or has failed) the Deferreds fire: those bytes left memory.
    A part small enough for one PutObject keeps its Deferreds until
    ``commit`` sent it.
    """

    def __init__(self, storage: S3Storage) -> None:
        self._storage = storage
        self._client = storage.client
        self._chunks: list[bytes | memoryview] = []
        self._written: list[Deferred[None]] = []  # of the chunks in _chunks
        self._filled = 0  # bytes in _chunks
        self._sha256 = hashlib.sha256()  # the instance's, fed per chunk
        self.size = 0
        self._key: str | None = None
        self._named = False
        self._dropping = False  # aborted, failed or not to be stored: bytes are dropped
        self._failure: OSError | None = None
        self._upload_id: str | None = None
        self._creating = False
        self._part_task = False
        self._etags: list[str] = []
        self._finishing = False
        self._finished: list[Deferred[int]] = []
        self._done = False  # committed or aborted
        self._aborted: Deferred[None] | None = None
        self._replaced: str | None = None
        self._claim_etag: str | None = None  # the ETag of the claim this upload wrote
        # Commit waits for the whole body (hold_commit): nothing waits in memory for it.
        self._held = False
        self._creation: Deferred[None] | None = None  # CreateMultipartUpload in flight

    # IPartWriter

    @property
    def sha256(self) -> bytes | None:
        """The instance's SHA-256 once ``finish`` has fired; None before, or
        when bytes were dropped."""
        if not self._finishing or self._dropping:
            return None
        return self._sha256.digest()

    def write(self, data: bytes | memoryview) -> Deferred[None]:
        if self._finishing or self._done:
            raise RuntimeError("write after finish/abort")
        written: Deferred[None] = Deferred()
        nbytes = len(data)
        self.size += nbytes
        if self._dropping:
            written.callback(None)
            return written
        self._sha256.update(data)
        self._chunks.append(data)
        self._filled += nbytes
        self._written.append(written)
        self._pump()
        return written

    @property
    def drainable(self) -> bool:
        """Whether all it holds will leave memory without more bytes (``INamedPartWriter``)."""
        if self._dropping or self._finishing or self._filled == 0:
            return True
        return self._key is not None and self._filled >= self._storage.cut_bytes

    def hold_commit(self) -> None:
        self._held = True

    def named(self, instance: InstanceRef | None) -> None:
        if self._named:
            return
        self._named = True
        if instance is None:
            self._drop()  # it will not be stored: nothing to send
        else:
            self._key = self._storage.instance_key(instance)
        self._pump()

    def finish(self) -> Deferred[int]:
        self._finishing = True
        waiter: Deferred[int] = Deferred()
        self._finished.append(waiter)
        self._pump()
        return waiter

    def commit(self, instance: InstanceRef, *, overwrite: bool) -> Deferred[CommitResult]:
        if self._failure is not None:
            return ensureDeferred(self._raise(self._failure))
        self._done = True
        return ensureDeferred(self._commit(instance, overwrite))

    def abort(self) -> Deferred[None]:
        if self._aborted is not None:
            return detached(self._aborted)
        if self._done:
            return succeed(None)
        self._done = True
        self._drop()
        self._aborted = ensureDeferred(self._abort_upload())
        return detached(self._aborted)

    # flow

    def _pump(self) -> None:
        """Decide what can happen now: open the upload, send a part, finish."""
        if self._dropping:
            self._fire_finished()
            return
        key = self._key
        if key is None:
            limit = self._storage.unnamed_limit_bytes
            if not self._named and self._filled >= limit:
                # The upload pauses at its window: waiting for more would wait for good.
                self._fail(
                    OSError(
                        f"no instance named within {limit} bytes "
                        "(the header must be understood within an upload's memory window)"
                    )
                )
            elif self._finishing:
                self._fire_finished()  # commit sends it: the data is complete in memory
            return
        if self._upload_id is None:
            if not self._creating and (
                self._filled >= MULTIPART_MIN_BYTES
                # Held: sent now as one part, or it would keep its window until commit.
                or (self._held and self._finishing and self._filled > 0)
            ):
                self._creating = True
                self._creation = ensureDeferred(self._create(key))
            elif self._finishing and not self._creating:
                self._fire_finished()  # small: one PutObject at commit
            return
        if not self._part_task and (
            self._filled >= self._storage.cut_bytes or (self._finishing and self._filled > 0)
        ):
            self._part_task = True
            ensureDeferred(self._send_part())
        elif self._finishing and not self._part_task and self._filled == 0:
            self._fire_finished()

    async def _create(self, key: str) -> None:
        storage = self._storage
        try:
            answer = await self._client.request(
                "CreateMultipartUpload",
                "POST",
                key,
                query={"uploads": ""},
                headers={"Content-Type": DICOM_CONTENT_TYPE},
                idempotent=False,
            )
            found = find_all(answer.body, "UploadId")
            upload_id = found[0].text if found else None
            if not upload_id:
                raise S3Error("CreateMultipartUpload", answer.status, "NoUploadId", "")
            self._upload_id = upload_id
            # Registered for the sweep before any part is sent.
            await self._client.request(
                "PutObject", "PUT", storage.upload_marker(upload_id), body=key.encode()
            )
        except S3Error as e:
            self._creating = False
            self._fail(_storage_error(e))
            return
        self._creating = False
        # Aborted while creating: _abort_upload waits for this id and aborts it,
        # and _pump only fires finish (the bytes were dropped).
        self._pump()

    def _cut(self) -> tuple[list[bytes | memoryview], list[Deferred[None]], int]:
        """Take the buffer: its chunks, their write Deferreds and their bytes."""
        taken = self._chunks, self._written, self._filled
        self._chunks, self._written, self._filled = [], [], 0
        return taken

    @staticmethod
    def _settle(written: list[Deferred[None]]) -> None:
        """Storage holds these bytes no longer: their writes complete."""
        for deferred in written:
            deferred.callback(None)

    async def _send_part(self) -> None:
        number = len(self._etags) + 1
        whole = number == 1 and self._finishing  # the only part: every byte written
        chunks, written, length = self._cut()
        try:
            if number > MAX_PARTS:
                raise S3Error("UploadPart", 0, "TooManyParts", f"more than {MAX_PARTS} parts")
            # The only part is the whole instance: its digest is the instance's.
            digest = self._sha256.digest() if whole else await self._storage.digest(chunks)
            if self._dropping or self._upload_id is None or self._key is None:
                # Aborted or failed while it was hashed: nothing to send.
                raise _Dropped()
            answer = await self._client.request(
                "UploadPart",
                "PUT",
                self._key,
                query={"partNumber": str(number), "uploadId": self._upload_id},
                headers=checksum_headers(digest),
                body=ChunksProducer(chunks, length),
                payload_sha256=digest.hex(),
            )
            self._etags.append(answer.headers.get("etag", ""))
        except _Dropped:
            pass
        except S3Error as e:
            self._fail(_storage_error(e))
        finally:
            del chunks
            self._part_task = False
            self._settle(written)
        self._pump()

    def _fail(self, error: OSError) -> None:
        if self._failure is None:
            self._failure = error
        self._drop()

    def _drop(self) -> None:
        """Hold no more bytes: fire every write."""
        self._dropping = True
        _, written, _ = self._cut()
        self._settle(written)
        self._fire_finished()

    def _fire_finished(self) -> None:
        if not self._finishing or self._creating or self._part_task:
            return
        finished, self._finished = self._finished, []
        for waiter in finished:
            if self._failure is not None:
                waiter.errback(self._failure)
            else:
                waiter.callback(self.size)

    # commit

    async def _raise(self, error: OSError) -> CommitResult:
        await self._abort_upload()
        raise error

    async def _sent(self) -> None:
        """Wait for a create or part in flight: a part named only after ``finish``
        fired (its header walk was behind) may still be sending."""
        while self._creating or self._part_task:
            waiter: Deferred[int] = Deferred()
            self._finished.append(waiter)
            try:
                await waiter
            except (OSError, StorageFull):
                pass  # the failure is in self._failure

    async def _commit(self, instance: InstanceRef, overwrite: bool) -> CommitResult:
        await self._sent()
        if self._failure is not None:
            return await self._raise(self._failure)
        storage = self._storage
        key = storage.instance_key(instance)
        sha = self._sha256.hexdigest()
        index = storage.index_key(instance)
        # The owner run lets a claim its crashed run left be taken over
        # (``abandoned``); the token makes every claim's bytes, hence its
        # ETag, unique, so a conditional write on an ETag can never match a
        # later claim that happens to have the same content.
        token = secrets.token_hex(8)
        claim = f"{key}\n{sha}\n{self.size}\n{storage.run}\n{token}\n".encode()
        try:
            result = await self._claim(index, claim, key, sha, overwrite)
            if result in (CommitResult.IDENTICAL_DUPLICATE, CommitResult.CONFLICTING_DUPLICATE):
                await self._abort_upload()
                return result
            try:
                await self._write_object(key)
            except S3Error:
                if result is CommitResult.STORED:
                    # Unclaim, so a retry is not taken for a duplicate of
                    # nothing; only our own claim (If-Match), never one that
                    # replaced it meanwhile.
                    await storage.delete_quietly(index, if_match=self._claim_etag)
                raise
            return result
        except S3Error as e:
            await self._abort_upload()
            raise _storage_error(e) from e
        finally:
            _, written, _ = self._cut()
            self._settle(written)

    async def _claim(
        self, index: str, claim: bytes, key: str, sha: str, overwrite: bool
    ) -> CommitResult:
        """Claim the SOP Instance UID, or say why not (identical, conflicting, overwritten).

        Every write of the claim is conditional, so that of uploads racing
        on one UID exactly one moves the claim from each state to the next:
        ``If-None-Match: *`` while there is none, ``If-Match: <ETag read>``
        to take over or overwrite one (SeaweedFS 4.48 honours both on
        PutObject under races; docs/STORAGE.md).  A lost write means the
        claim changed: read it again.  Bounded: at most ``CLAIM_ROUNDS``
        lost writes, and ``CLAIM_WAIT_SECONDS`` of waiting for an identical
        claimant's object; past either the part fails 0x0110, to retry.
        """
        client = self._client
        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        seen: str | None = None  # the ETag of the claim last read; None: none seen
        for _ in range(CLAIM_ROUNDS):
            if seen is None:
                if await self._put_claim(index, claim, {"If-None-Match": "*"}):
                    return CommitResult.STORED
            while True:
                current = await client.request("GetObject (claim)", "GET", index, ok=(200, 404))
                if current.status == 404:
                    seen = None  # unclaimed meanwhile (a failed upload let go)
                    break
                seen = current.headers.get("etag", "")
                fields = current.body.decode(errors="replace").split("\n")
                other_key, other_sha = [*fields, "", ""][:2]
                if other_key == key and other_sha == sha:
                    head = await client.request("HeadObject", "HEAD", key, ok=(200, 404))
                    if head.status == 200 and head.headers.get("content-length") == str(self.size):
                        return CommitResult.IDENTICAL_DUPLICATE
                    if time.monotonic() < deadline:
                        # The claimant is completing its object (a racing retry).
                        await self._storage.sleep(_CLAIM_POLL_SECONDS)
                        continue
                    # The claimant never wrote it (crashed after claiming): ours now.
                    result = CommitResult.STORED
                elif not overwrite:
                    if not await self._storage.abandoned(fields, current.headers):
                        return CommitResult.CONFLICTING_DUPLICATE
                    # Its run died before its object was complete: nothing
                    # stored to conflict with, and the UID must not stay blocked.
                    result = CommitResult.STORED
                else:
                    result = CommitResult.OVERWRITTEN
                if not await self._put_claim(index, claim, {"If-Match": seen}):
                    break  # another upload took it first: read what it wrote
                if result is CommitResult.OVERWRITTEN and other_key != key:
                    self._replaced = other_key
                return result
        raise S3Error(
            "PutObject (claim)", 409, "ClaimContended", f"{index} changed {CLAIM_ROUNDS} times"
        )

    async def _put_claim(self, index: str, claim: bytes, condition: dict[str, str]) -> bool:
        """One conditional PutObject of the claim: True if it was written."""
        digest = hashlib.sha256(claim).digest()
        answer = await self._client.request(
            "PutObject (claim)",
            "PUT",
            index,
            headers={**condition, **checksum_headers(digest)},
            body=claim,
            payload_sha256=digest.hex(),
            # 412: the condition failed; 409: a concurrent conditional write
            # (AWS); 404: If-Match on a claim deleted meanwhile (AWS).
            ok=(200, 404, 409, 412),
        )
        if answer.status != 200:
            if not answer.retried:
                return False
            # Sent twice (the first attempt's answer was lost): the refusal may
            # be of our own claim, written by that attempt.  The per-upload
            # token makes the claim's bytes ours alone.
            current = await self._client.request("GetObject (claim)", "GET", index, ok=(200, 404))
            if current.status != 200 or current.body != claim:
                return False
            answer = current
        self._claim_etag = answer.headers.get("etag")
        return True

    async def _write_object(self, key: str) -> None:
        """Make the object visible: complete the multipart upload, or one PutObject."""
        client = self._client
        if self._upload_id is not None:
            parts = "".join(
                f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(etag)}</ETag></Part>"
                for n, etag in enumerate(self._etags, start=1)
            )
            body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
            answer = await client.request(
                "CompleteMultipartUpload",
                "POST",
                key,
                query={"uploadId": self._upload_id},
                body=body,
                ok=(200, 404),
            )
            if answer.status == 404 and not (answer.retried and await self._completed(key)):
                code, message = error_code(answer.body)
                raise S3Error("CompleteMultipartUpload", 404, code, message)
            # S3 may answer 200 with an error document once the completion started.
            if b"<Error>" in answer.body[:512]:
                raise S3Error("CompleteMultipartUpload", 200, "InternalError", "")
            upload_id, self._upload_id = self._upload_id, None
            await self._storage.delete_quietly(self._storage.upload_marker(upload_id))
        else:
            digest = self._sha256.digest()
            await client.request(
                "PutObject",
                "PUT",
                key,
                headers={"Content-Type": DICOM_CONTENT_TYPE, **checksum_headers(digest)},
                body=ChunksProducer(self._chunks, self._filled),
                payload_sha256=digest.hex(),
            )
        if self._replaced is not None:
            # Overwritten in another study/series: the older copy goes.
            await self._storage.delete_quietly(self._replaced)

    async def _completed(self, key: str) -> bool:
        """Whether ``key`` is the object this upload's parts make: a retried
        CompleteMultipartUpload answered NoSuchUpload because the first,
        unanswered, attempt completed it (AWS; SeaweedFS answers 200 again).

        The multipart ETag is the MD5 of the parts' MD5s and their count, so
        it names these parts; a store whose part ETags are not MD5s is not
        believed.
        """
        try:
            md5s = b"".join(bytes.fromhex(etag.strip('"')) for etag in self._etags)
        except ValueError:
            return False
        expected = f'"{hashlib.md5(md5s).hexdigest()}-{len(self._etags)}"'
        head = await self._client.request("HeadObject", "HEAD", key, ok=(200, 404))
        return (
            head.status == 200
            and head.headers.get("etag") == expected
            and head.headers.get("content-length") == str(self.size)
        )

    async def _abort_upload(self) -> None:
        creation = self._creation
        if creation is not None and not creation.called:
            # Its id comes with the answer; the abort must not end before the upload does.
            await detached(creation)
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None or self._key is None:
            return
        storage = self._storage
        try:
            await self._client.request(
                "AbortMultipartUpload",
                "DELETE",
                self._key,
                query={"uploadId": upload_id},
                ok=(200, 204, 404),
            )
            await storage.delete_quietly(storage.upload_marker(upload_id))
        except S3Error as e:
            # The sweep retries it once this run's heartbeat stops.
            log.warn("could not abort multipart upload {key}: {error}", key=self._key, error=e)


@implementer(IStorage)
class S3Storage:
    """Instances as objects in one bucket under one prefix; see the module docstring."""

    def __init__(
        self,
        client: S3Client,
        reactor: Any,
        *,
        window_bytes: int = S3_WINDOW_BYTES,
    ) -> None:
        if window_bytes < MIN_S3_WINDOW_BYTES:
            raise ValueError(
                f"an upload's memory window into S3 needs at least {MIN_S3_WINDOW_BYTES} bytes"
            )
        self.client = client
        self.location: S3Location = client.location
        self.reactor = reactor
        # Buffers are sized from the window each upload gets of the process's
        # memory budget (core/budget.py): a part is cut at half a window (the
        # low-water mark), so a paused upload always has a part to send.
        self.window_bytes = window_bytes
        self.cut_bytes = max(MULTIPART_MIN_BYTES, min(PART_BYTES, window_bytes // 2))
        self.unnamed_limit_bytes = min(UNNAMED_HOLD_BYTES, window_bytes)
        # Names this run's heartbeat and upload markers (the pid alone is
        # reused by a restarted container).
        self.run = f"{os.getpid()}-{secrets.token_hex(8)}"
        self._heartbeat = LoopingCall(self._beat)
        self._sweeper = LoopingCall(self._sweep_later)
        self._prober = LoopingCall(self._probe)
        self._heartbeat.clock = reactor
        self._sweeper.clock = reactor
        self._prober.clock = reactor
        self._probing = False
        self.last_sweep: Deferred[int] | None = None
        # Part checksums are hashed here, off the reactor (``part_digest``):
        # one part in flight per upload, so two threads serve two uploads
        # cutting at once; more would only queue for the second core.
        self._digest_pool = ThreadPool(0, DIGEST_THREADS, "s3-part-digest")

    def digest(self, chunks: list[bytes | memoryview]) -> Deferred[bytes]:
        """``part_digest`` of ``chunks`` in the digest thread, fired on the reactor."""
        if not self._digest_pool.started:
            self._digest_pool.start()
        return deferToThreadPool(self.reactor, self._digest_pool, part_digest, chunks)

    def start(self) -> None:
        """Heartbeat, sweep abandoned uploads and probe the store, each now and then."""
        self._heartbeat.start(HEARTBEAT_SECONDS, now=True)
        self._sweeper.start(SWEEP_SECONDS, now=True)
        self._prober.start(HEALTH_PROBE_SECONDS, now=False)

    def unavailable(self) -> str | None:
        """Why the store is down (the last requests got no answer or a 5xx), or None."""
        if self.client.failures_in_a_row < DOWN_AFTER_FAILURES:
            return None
        return f"the object store {self.client.last_failure}"

    def _probe(self) -> None:
        """HEAD the bucket, so the health follows the store while no upload runs
        (and a store that came back is seen: a refused request sends nothing)."""
        if self._probing:
            return  # the previous probe still waits (a stalled store)
        self._probing = True

        async def probe() -> None:
            try:
                await self.client.request(
                    "HeadBucket",
                    "HEAD",
                    ok=(200, 301, 403, 404),
                    timeout=HEALTH_PROBE_TIMEOUT_SECONDS,
                )
            except S3Error:
                pass  # counted by the client
            finally:
                self._probing = False

        ensureDeferred(probe())

    async def abandoned(self, fields: list[str], headers: dict[str, str]) -> bool:
        """Whether a claim (``fields`` of its body) is left by a run that died
        before its object was complete, so another upload may take it over.

        A claim whose object is present with the claimed size stands whoever
        made it; otherwise it is abandoned once its run's heartbeat is missing
        or stale (a claim without a run, from before runs were recorded, once
        it is ``RUN_STALE_SECONDS`` old).  This run's own claims are live.
        """
        key, _, size, run = [*fields, "", "", "", ""][:4]
        if key:
            head = await self.client.request("HeadObject", "HEAD", key, ok=(200, 404))
            if head.status == 200 and head.headers.get("content-length") == size:
                return False
        now = time.time()
        if not run:
            return now - _http_date(headers.get("last-modified", "")) >= RUN_STALE_SECONDS
        if run == self.run:
            return False
        beat = await self.client.request("HeadObject", "HEAD", self.run_key(run), ok=(200, 404))
        if beat.status != 200:
            return True
        return now - _http_date(beat.headers.get("last-modified", "")) >= RUN_STALE_SECONDS

    def stop(self) -> Any:
        for loop in (self._heartbeat, self._sweeper, self._prober):
            if loop.running:
                loop.stop()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._digest_pool.started:
            self._digest_pool.stop()
        await self.delete_quietly(self.run_key(self.run))
        await self.client.close()

    def open_writer(self) -> S3PartWriter:
        return S3PartWriter(self)

    # names

    def instance_key(self, instance: InstanceRef) -> str:
        return self.location.key(
            f"{instance.study_instance_uid}/{instance.series_instance_uid}/"
            f"{instance.sop_instance_uid}.dcm"
        )

    def index_key(self, instance: InstanceRef) -> str:
        return self.location.key(INDEX_DIR + instance.sop_instance_uid)

    def run_key(self, run: str) -> str:
        return self.location.key(f"{STOW_DIR}runs/{run}")

    def upload_marker(self, upload_id: str) -> str:
        return self.location.key(f"{STOW_DIR}uploads/{self.run}/{upload_id}")

    # helpers

    def sleep(self, seconds: float) -> Deferred[None]:
        return deferLater(self.reactor, seconds, lambda: None)

    async def delete_quietly(self, key: str, *, if_match: str | None = None) -> None:
        """DeleteObject, a failure only logged; with ``if_match`` only that version
        (412: it was replaced meanwhile, and the replacement stays)."""
        headers = {"If-Match": if_match} if if_match else None
        try:
            await self.client.request(
                "DeleteObject", "DELETE", key, headers=headers, ok=(200, 204, 404, 412)
            )
        except S3Error as e:
            log.warn("could not delete {key}: {error}", key=key, error=e)

    def _beat(self) -> Deferred[None]:
        d = ensureDeferred(
            self.client.request("PutObject", "PUT", self.run_key(self.run), body=b"alive\n")
        )
        d.addErrback(lambda f: log.warn("S3 heartbeat failed: {error}", error=f.value))
        return d.addCallback(lambda _: None)

    def _sweep_later(self) -> None:
        self.last_sweep = ensureDeferred(self.sweep())
        self.last_sweep.addErrback(
            lambda f: log.warn("S3 sweep of abandoned uploads failed: {error}", error=f.value)
        )

    async def _list(self, prefix: str) -> list[tuple[str, float]]:
        """Keys under ``prefix`` and their LastModified (epoch seconds)."""
        found: list[tuple[str, float]] = []
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            answer = await self.client.request("ListObjectsV2", "GET", query=query)
            for item in find_all(answer.body, "Contents"):
                found.append((text_of(item, "Key"), _epoch(text_of(item, "LastModified"))))
            tokens = find_all(answer.body, "NextContinuationToken")
            token = tokens[0].text if tokens else None
            if not token:
                return found

    async def sweep(self, *, now: float | None = None) -> int:
        """Abort the multipart uploads of runs that stopped; returns how many were aborted.

        A run is gone once its heartbeat is older than ``RUN_STALE_SECONDS``
        (or missing); another live server's uploads are never touched.  Any
        upload under the prefix older than ``UPLOAD_MAX_AGE_SECONDS`` goes too.
        """
        now = time.time() if now is None else now
        runs_prefix = self.location.key(f"{STOW_DIR}runs/")
        alive = {
            key[len(runs_prefix) :]
            for key, modified in await self._list(runs_prefix)
            if now - modified < RUN_STALE_SECONDS
        }
        alive.add(self.run)
        aborted = 0
        uploads_prefix = self.location.key(f"{STOW_DIR}uploads/")
        for marker, _ in await self._list(uploads_prefix):
            run, _, upload_id = marker[len(uploads_prefix) :].partition("/")
            if run in alive or not upload_id:
                continue
            answer = await self.client.request("GetObject", "GET", marker, ok=(200, 404))
            if answer.status == 200:
                key = answer.body.decode(errors="replace")
                await self.client.request(
                    "AbortMultipartUpload",
                    "DELETE",
                    key,
                    query={"uploadId": upload_id},
                    ok=(200, 204, 404),
                )
                aborted += 1
            await self.delete_quietly(marker)
            await self.delete_quietly(self.run_key(run))
        answer = await self.client.request(
            "ListMultipartUploads",
            "GET",
            query={"uploads": "", "prefix": self.location.prefix},
        )
        for upload in find_all(answer.body, "Upload"):
            if now - _epoch(text_of(upload, "Initiated")) < UPLOAD_MAX_AGE_SECONDS:
                continue
            await self.client.request(
                "AbortMultipartUpload",
                "DELETE",
                text_of(upload, "Key"),
                query={"uploadId": text_of(upload, "UploadId")},
                ok=(200, 204, 404),
            )
            aborted += 1
        if aborted:
            log.info("S3 sweep aborted {count} abandoned multipart uploads", count=aborted)
        return aborted


def _http_date(text: str) -> float:
    """An HTTP date (``Last-Modified``) as epoch seconds; 0 if unreadable (counts as old)."""
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return 0.0


def _epoch(text: str) -> float:
    """S3's ISO 8601 times (``2026-12-02T01:30:45.000Z``) as epoch seconds; 0 if unreadable."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
