"""``Upload``: one STOW-RS request body on its way from the socket to storage.

Created by ``StowService.begin_upload`` from what ``admit`` decided at header
time, fed by ``StreamingRequest`` chunk by chunk, and read by the Klein route
once the body is complete.  Its ``BodyPipeline`` is the one path a body byte
takes: the reader, the size limits, then ``Ingest``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import CooperativeTask, cooperate
from twisted.logger import Logger

from .core.admission import Admission, BodyLimits, Target
from .core.budget import MemoryBudget
from .core.contentcoding import BodyDecoder
from .core.digests import ALGORITHMS, ExpectedDigest, digest_field
from .core.errors import BodyTooLarge, InvalidChunkSize, MalformedMultipart, StowError
from .core.multipart import BodyReader, Event, PartData, PartStarted
from .core.outcomes import Failed, FailureReason, Outcome
from .flow import WINDOW_READ_BYTES, BytesInFlight, Pausable
from .ingest import Cooperate, Ingest, IngestResult
from .interfaces import IStorage

log = Logger()

# No body is larger (RFC 9112 §7.1 asks to guard chunk sizes against overflow).
MAX_CHUNK_BYTES = 2**63 - 1

# The most one socket read hands the parser (flow.BytesInFlight.read_size_bytes).
READ_SIZE_BYTES = WINDOW_READ_BYTES

# A compressed body is inflated at most this many bytes per zlib call (RFC
# 9110 §8.4.1: gzip/deflate), the size checks and the parser running between
# calls: a bomb never has more than one slice inflated in memory.
DECODE_SLICE_BYTES = 256 * 1024
# Decoded bytes handed on at once per socket read: half the flow's high-water
# mark on disk (flow.HIGH_WATER_BYTES, the 8 MiB window), so one read of a highly compressible
# body cannot queue more than the backpressure allows.  Past it the rest of
# the read is inflated on the reactor's cooperator, a slice per turn, the
# socket paused meanwhile, and never while storage is behind.
DECODED_BYTES_PER_READ = 4 * 1024 * 1024


class ReadGate:
    """The request's read side, shared by the flow (storage behind) and the decoder.

    Paused while either wants it paused; ``storage_resumed`` fires when the
    flow resumes, which is when a decoding left behind may go on.
    """

    def __init__(self, producer: Pausable) -> None:
        self._producer = producer
        self.storage_paused = False
        self._decoding_behind = False
        self._paused = False
        self._waiters: list[Deferred[None]] = []

    def pauseProducing(self) -> None:
        self.storage_paused = True
        self._apply()

    def resumeProducing(self) -> None:
        self.storage_paused = False
        self._apply()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def decoding_behind(self, behind: bool) -> None:
        self._decoding_behind = behind
        self._apply()

    def storage_resumed(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def _apply(self) -> None:
        want = self.storage_paused or self._decoding_behind
        if want and not self._paused:
            self._paused = True
            self._producer.pauseProducing()
        elif not want and self._paused:
            self._paused = False
            self._producer.resumeProducing()


class BodyPipeline:
    """Reader → size limits → ingest, with one failure path.

    Like h11's ``Connection.next_event``: the events decoded before any
    damage are delivered (a part completed earlier in the same chunk is
    stored), then the pipeline fails once and all later input is refused.
    Damage in the body itself (``MalformedMultipart``) is reported with the
    outcomes once the body is in; a limit (``BodyTooLarge``: body, part size
    or part count,
    ``InvalidChunkSize``) is also raised from ``feed``, for the request to
    answer at once.
    """

    def __init__(
        self,
        reader: BodyReader,
        ingest: Ingest,
        limits: BodyLimits,
        *,
        decoder: BodyDecoder | None = None,
        gate: ReadGate | None = None,
        body_digests: Sequence[ExpectedDigest] = (),
        hold_commits: bool = False,
        cooperate: Cooperate = cooperate,
    ) -> None:
        self._reader = reader
        self._ingest = ingest
        self._limits = limits
        self.received_bytes = 0
        self.decoded_bytes = 0  # of a compressed body (the limits apply to these)
        self._part_bytes = 0  # of the part being received
        self._parts_started = 0
        self.error: StowError | None = None  # why the body failed, once it has
        # Content-Encoding: the decoder, and the gate its catch-up pauses.
        self._decoder = decoder
        self._gate = gate
        self._cooperate = cooperate
        self._task: CooperativeTask[Iterator[Any]] | None = None
        self._close_waiters: list[Deferred[None]] = []
        # Called with a limit met while inflating behind the socket before
        # the body is complete (no feed call to raise it from, no close() to
        # report it through); the request sets it to its mid-body refusal.
        self.on_limit: Callable[[StowError], None] | None = None
        # The body's Content-Digest (RFC 9530), hashed over the bytes as
        # received (the content, after its coding) on the reactor: only for
        # clients that send one.
        self._body_hashes = [(claim, hashlib.new(claim.hash_name)) for claim in body_digests]
        self.body_digest_mismatch: str | None = None
        if hold_commits and body_digests:
            ingest.body_verdict = Deferred()

    def feed(self, data: bytes, announced_after: int = 0) -> None:
        """The next piece of the body.

        ``announced_after`` is what the framing already promises after this
        piece (the rest of its chunk): a body that could never pass the limit,
        or an absurd chunk-size, is refused before its data is processed.
        Raises ``BodyTooLarge`` or ``InvalidChunkSize``.
        """
        self.received_bytes += len(data)
        limit = self._limits.max_body_bytes
        if limit is not None and self.received_bytes + announced_after > limit:
            raise BodyTooLarge(
                f"the body is larger than this server's limit of {limit} bytes"
                + (f" (a chunk announces {announced_after} more)" if announced_after else "")
            )
        if len(data) + announced_after > MAX_CHUNK_BYTES:
            raise InvalidChunkSize(f"a chunk-size of {len(data) + announced_after} bytes")
        if self.error is not None:
            return  # failed: the rest of the body is read, never parsed
        for _, digest in self._body_hashes:
            digest.update(data)
        decoder = self._decoder
        if decoder is None:
            self._parse(data)
            return
        decoder.push(data)
        if self._task is None:
            self._decode(DECODED_BYTES_PER_READ)
            if decoder.pending and self.error is None:
                self._fall_behind()

    def _decode(self, budget: int) -> None:
        """Inflate and parse up to ``budget`` bytes, a slice at a time; raises a limit."""
        decoder = self._decoder
        assert decoder is not None
        limit = self._limits.max_body_bytes
        while budget > 0 and self.error is None:
            if self._gate is not None and self._gate.storage_paused:
                return  # storage is behind: inflating more would only queue it
            try:
                out = decoder.decode(min(DECODE_SLICE_BYTES, budget))
            except MalformedMultipart as error:
                self._fail([], error)
                return
            if not out:
                return
            budget -= len(out)
            self.decoded_bytes += len(out)
            if limit is not None and self.decoded_bytes > limit:
                too_large = BodyTooLarge(
                    f"the decoded body is larger than this server's limit of {limit} bytes"
                )
                self._fail([], too_large)  # as _parse does for the part limits
                raise too_large
            self._parse(out)

    def _fall_behind(self) -> None:
        """Inflate the rest of this read on the cooperator, the socket paused."""
        assert self._gate is not None
        self._gate.decoding_behind(True)
        self._task = self._cooperate(self._catch_up())

    def _catch_up(self) -> Iterator[Any]:
        decoder, gate = self._decoder, self._gate
        assert decoder is not None and gate is not None
        try:
            while decoder.pending and self.error is None:
                if gate.storage_paused:
                    yield gate.storage_resumed()
                    continue
                try:
                    self._decode(DECODE_SLICE_BYTES)
                except StowError as error:
                    # The pipeline has failed (_fail: the part in flight
                    # dropped, the parts before it kept).  With close()
                    # waiting, the whole body is in (a small bomb fits one
                    # read): its outcomes carry the limit to the route's
                    # answer, and a refusal now would be a second response.
                    if self.on_limit is not None and not self._close_waiters:
                        self.on_limit(error)
                    return
                yield None
        finally:
            self._task = None
            gate.decoding_behind(False)
            waiters, self._close_waiters = self._close_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _parse(self, data: bytes) -> None:
        """Reader → size limits → ingest for (decoded) body bytes."""
        delivered: list[Event] = []
        try:
            for event in self._reader.events(data):
                self._check_part_size(event)
                delivered.append(event)
        except StowError as error:
            self._fail(delivered, error)
            if not isinstance(error, MalformedMultipart):
                raise
            return
        self._ingest.handle(delivered)

    def close(self) -> Deferred[IngestResult]:
        """The last byte arrived: close the reader, collect the outcomes.

        With a compressed body still being inflated behind the socket, once
        that is done.
        """
        if self._task is not None:
            waiter: Deferred[None] = Deferred()
            self._close_waiters.append(waiter)
            return waiter.addCallback(lambda _: self._close_now())
        return self._close_now()

    def _close_now(self) -> Deferred[IngestResult]:
        if self.error is None:
            try:
                if self._decoder is not None:
                    self._decoder.close()
                events = self._reader.close()
            except StowError as error:
                self._fail([], error)
            else:
                self._ingest.handle(events)
        self._check_body_digest()
        return self._ingest.close()

    def _check_body_digest(self) -> None:
        """Compare the body's Content-Digest; release or fail the held commits.

        Without ``--verify-body-digest`` the parts were committed as they
        arrived, so a mismatch can only be reported: the response carries a
        warning naming the digest (docs/CONFORMANCE.md).
        """
        for claim, digest in self._body_hashes:
            actual = digest.digest()
            if actual != claim.value:
                self.body_digest_mismatch = claim.mismatch(actual)
                break
        self._release_held(self.body_digest_mismatch)

    def _release_held(self, reason: str | None) -> None:
        verdict = self._ingest.body_verdict
        if verdict is not None and not verdict.called:
            verdict.callback(reason)

    def abort(self) -> None:
        """The body will not arrive whole: stop inflating, fail the held commits."""
        task, self._task = self._task, None
        if task is not None:
            task.stop()
            if self._gate is not None:
                self._gate.decoding_behind(False)
        self._release_held("the body did not arrive whole, so its Content-Digest was not checked")

    def _check_part_size(self, event: Event) -> None:
        part_limit = self._limits.max_part_bytes
        if isinstance(event, PartStarted):
            self._part_bytes = 0
            self._parts_started += 1
            # Every part counts, empty or skipped ones too: each costs an
            # outcome and a response item (issue 17 point 3).
            max_parts = self._limits.max_parts
            if max_parts is not None and self._parts_started > max_parts:
                raise BodyTooLarge(
                    f"the body has more than this server's limit of {max_parts} parts"
                )
        elif part_limit is not None and isinstance(event, PartData):
            self._part_bytes += len(event.data)
            if self._part_bytes > part_limit:
                raise BodyTooLarge(
                    f"part {self._parts_started} is larger than this server's limit of "
                    f"{part_limit} bytes per instance"
                )

    def _fail(self, delivered: list[Event], error: StowError) -> None:
        """Deliver what came before the damage, then fail the request once.

        The part in flight is dropped by ingest; parts complete before the
        damage are kept.
        """
        self.error = error
        self._ingest.handle(delivered)
        self._ingest.fail_request(error)


class Upload:
    """One request body being parsed and stored as it arrives."""

    def __init__(
        self,
        admission: Admission,
        *,
        release: Callable[[], None],
        storage: IStorage,
        producer: Pausable,
        principal: str | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.target: Target = admission.target
        # Who sent it (authentication), None when authentication is off.
        self.principal = principal
        self.base_url = admission.base_url  # RetrieveURL base, fixed from the headers
        self.release = release  # frees the upload slot; idempotent
        self.response_type = admission.response_type
        gate = ReadGate(producer) if admission.coding is not None else None
        # ``budget``: the process's (None: the upload gets one of its own).
        self.ingest = Ingest(storage, admission.policy, gate or producer, budget=budget)
        self.body = BodyPipeline(
            admission.reader,
            self.ingest,
            admission.limits,
            decoder=BodyDecoder(admission.coding) if admission.coding is not None else None,
            gate=gate,
            body_digests=admission.body_digests,
            hold_commits=admission.hold_commits,
        )
        # Want-Content-Digest: the algorithm key of the response's Content-Digest.
        self.response_digest = admission.response_digest
        self.result: Deferred[IngestResult] | None = None
        self._closed = False

    def outcomes(self, result: IngestResult) -> list[Outcome]:
        """The outcomes to answer with: the parts', and a body digest that did not match.

        Parts are committed as they arrive, so without --verify-body-digest
        the ones listed as stored were committed before the mismatch could
        be known: the response says so in OtherFailuresSequence (0xC000,
        hence 202, or 409 with nothing stored) and its Warning header.  With
        it every held part failed with that reason already.
        """
        mismatch = self.body.body_digest_mismatch
        if mismatch is None or self.ingest.body_verdict is not None:
            return result.outcomes
        return [
            *result.outcomes,
            Failed(
                FailureReason.CANNOT_UNDERSTAND,
                f"request {mismatch}; the instances listed as stored were committed "
                "before the body's digest could be checked",
            ),
        ]

    def response_digest_header(self, body: bytes) -> str | None:
        """``Content-Digest`` of the response, when the request's Want-Content-Digest asked."""
        key = self.response_digest
        if key is None:
            return None
        return digest_field(key, hashlib.new(ALGORITHMS[key], body).digest())

    @property
    def flow(self) -> BytesInFlight:
        """The upload's backpressure, owned by its ingest."""
        return self.ingest.flow

    def body_complete(self) -> Deferred[IngestResult]:
        """The last byte arrived: close the reader, collect the outcomes."""
        self._closed = True
        self.result = self.body.close()
        return self.result

    def abort(self) -> None:
        """The connection is gone or the request was refused mid-body."""
        if not self._closed:
            self._closed = True
            self.body.abort()
            self.ingest.abort()
