"""Drive one upload: parser events → part writers → validation → commit → outcomes.

``Ingest`` owns the parts of one request.  Each part's bytes go to a storage
writer as they arrive, and through a ``HeaderCapture`` that keeps the few
UIDs validation needs (so the instance's name is known before the part
ends).  When the parser ends the part, the writer finishes (the data
complete: for the filesystem, synced), the captured header is validated (on
the reactor: it is a few comparisons, no file is read), checked against the
request's policies, and the part is committed.  When all of that is known as
the part ends (header captured and valid, no digest to check first), a
writer that offers it finishes and commits in one storage step
(``_commit_at_end``).  Parts are pipelined: part N
is finished and committed while part N+1 is still arriving.  Every part ends
as exactly one ``Outcome``, in the order the parts were sent; a problem with
one part never reaches another.

Ingest owns the upload's backpressure too (``flow``): it counts the bytes
handed to writers until each write's Deferred fires (they left memory), the
bytes its header captures keep, and the parts between "received whole" and
"outcome known".  Those bytes are the upload's share of the process's one
memory budget (``core.budget``), shared with every other upload.

The header walk is bounded per part (``core.dicomheader``), but up to 65,536
steps of it (~90 ms) for each part of a few kilobytes would still let one
socket read of hostile parts hold the reactor for seconds (issue 17 point
1).  So each ``handle`` call (one socket read) walks at most
``CAPTURE_STEPS_PER_READ`` steps at once; a walk left behind continues in
slices of ``CAPTURE_STEPS_PER_SLICE`` steps on the reactor's shared
``Cooperator`` (round-robin with every other upload's, about 10 ms per
reactor iteration in all), with the request paused meanwhile.  A real header
(a few hundred elements) never leaves the fast path.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.task import CooperativeTask, cooperate
from twisted.logger import Logger
from twisted.python.failure import Failure

from .core.budget import MemoryBudget
from .core.dicomheader import HeaderCapture
from .core.digests import DigestFieldError, ExpectedDigest, part_digests
from .core.errors import StowError, UnsupportedMediaType
from .core.mediatype import DICOM, parse_media_type
from .core.multipart import Event, PartData, PartEnded, PartStarted
from .core.outcomes import Failed, FailureReason, InstanceRef, Outcome, Stored, WarningReason
from .core.policy import CommitResult, Duplicates, IngestPolicy, StorageFull, StudyMismatch
from .core.validation import validate_header
from .deferreds import detached
from .flow import BytesInFlight, Pausable
from .interfaces import INamedPartWriter, IOneStepPartWriter, IPartWriter, IStorage
from .ops import observe
from .ops.metrics import COMMIT_SECONDS, STORAGE_ERRORS

log = Logger()

# Part media types we store; a part without Content-Type takes the root
# type (RFC 2387 §3.1), which for our routes is application/dicom.
_DICOM_PART_TYPES = frozenset({DICOM})

# Header-walk steps (``HeaderCapture.feed``: an element header, value or
# item, or one inflated slice; ~1.4 us each, measured on the issue-17 bomb)
# taken at once per socket read: ~3 ms, five times a real header's few
# hundred, so real uploads never wait for the cooperator.
CAPTURE_STEPS_PER_READ = 2048
# Steps of a walk left behind per cooperator slice (~1.5 ms): the cooperator
# runs slices of every upload in turn until its 10 ms per iteration are used.
CAPTURE_STEPS_PER_SLICE = 1024

Cooperate = Callable[[Iterator[None]], CooperativeTask[Iterator[None]]]


@dataclass(slots=True, eq=False)
class _PartClaims:
    """The digests a part's headers claim, and the hashes computed here to check them.

    SHA-256 comes from the writer (``IPartWriter.sha256``: computed where the
    bytes are stored, off the reactor for the filesystem); only the other
    algorithms a client names (sha-512, MD5) are hashed here, on the
    reactor, and only for parts that ask.
    """

    expected: list[ExpectedDigest]
    hashes: dict[str, Any]  # hashlib name → hash object, not sha256

    @classmethod
    def of(cls, expected: list[ExpectedDigest]) -> _PartClaims:
        names = {claim.hash_name for claim in expected} - {"sha256"}
        return cls(expected, {name: hashlib.new(name) for name in names})

    def mismatch(self, sha256: bytes | None) -> str | None:
        """The reason naming the first digest that does not match, or None."""
        for claim in self.expected:
            name = claim.hash_name
            actual = sha256 if name == "sha256" else self.hashes[name].digest()
            if actual is None:
                return f"{claim.source} cannot be checked: the storage computed no SHA-256"
            if actual != claim.value:
                return claim.mismatch(actual)
        return None


_NO_CLAIMS = _PartClaims([], {})


@dataclass(slots=True, eq=False)
class _InFlow:
    """A part counted in the flow's pending parts; leaves it once (outcome or held)."""

    flow: BytesInFlight
    counted: bool = True

    def leave(self) -> None:
        if self.counted:
            self.counted = False
            self.flow.part_finished()


@dataclass(slots=True, eq=False)
class _Behind:
    """A capture with bytes still to walk, and who waits for it to catch up."""

    capture: HeaderCapture
    writer: IPartWriter | None = None
    waiters: list[Deferred[None]] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _Decided:
    """A part committed as it ended: its instance, and its writer's two answers."""

    instance: InstanceRef
    finished: Deferred[int]
    committed: Deferred[CommitResult]


@dataclass(slots=True)
class IngestResult:
    """Everything the response needs: outcomes in part order, and the
    request-level error (broken framing) if the body could not be read to
    its end."""

    outcomes: list[Outcome] = field(default_factory=list)
    request_error: StowError | None = None

    @property
    def stored_any(self) -> bool:
        return any(isinstance(o, Stored) for o in self.outcomes)


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None


class Ingest:
    """One upload's parts; feed it parser events, then ``close`` or ``abort``."""

    def __init__(
        self,
        storage: IStorage,
        policy: IngestPolicy,
        producer: Pausable,
        *,
        budget: MemoryBudget | None = None,
        cooperate: Cooperate = cooperate,
    ) -> None:
        self._storage = storage
        self._policy = policy
        # Backpressure has one owner: this upload's ingest decides when the
        # request stops reading the socket, within its share of ``budget``
        # (the process's; None: one of its own).
        self.flow = BytesInFlight(producer, budget=budget)
        # Bytes each header capture was last counted as keeping (flow).
        self._capture_held: dict[HeaderCapture, int] = {}
        self._writer: IPartWriter | None = None
        self._capture = HeaderCapture()
        # The capture whose writer was told its instance (INamedPartWriter).
        self._named: HeaderCapture | None = None
        # The verdict each such capture's writer was told, kept for its part's
        # end: a done capture's result no longer changes (one validation per part).
        self._verdicts: dict[HeaderCapture, InstanceRef | Failed] = {}
        # Why the part being received will not be stored (None: it may be).
        self._skip_reason: Failed | None = None
        self._pending: list[Deferred[Outcome]] = []
        self._request_error: StowError | None = None
        self._parts_ended = 0
        # Header walks left behind, oldest first, and the cooperator task
        # walking them (None: none behind).
        self._cooperate = cooperate
        self._behind: deque[_Behind] = deque()
        self._task: CooperativeTask[Iterator[None]] | None = None
        self._read_steps = 0
        self._claims = _NO_CLAIMS
        # --verify-body-digest: commits wait for this verdict on the body's
        # Content-Digest (None: it matched; else the reason it did not).
        self.body_verdict: Deferred[str | None] | None = None

    def handle(self, events: Iterable[Event]) -> None:
        """Apply parser events in order (one call per socket read)."""
        self._read_steps = CAPTURE_STEPS_PER_READ
        for event in events:
            if isinstance(event, PartData):
                if self._skip_reason is None:
                    if self._writer is None:
                        # Opened on the first byte: an empty part costs no file.
                        self._writer = self._open_writer()
                    self._write(self._writer, event.data)
                    self._walk(event.data)
                    for digest in self._claims.hashes.values():
                        digest.update(event.data)
            elif isinstance(event, PartStarted):
                self._start_part(event.headers)
            elif isinstance(event, PartEnded):
                self._end_part()
            # BodyEnded needs no action: close() follows when the body is in.
        self.flow.read_ended(drainable=self._drainable())

    def _open_writer(self) -> IPartWriter:
        writer = self._storage.open_writer()
        if self.body_verdict is not None and INamedPartWriter.providedBy(writer):
            # Its commit waits for the whole body: it must not hold bytes until then.
            writer.hold_commit()
        return writer

    def _drainable(self) -> bool:
        """Whether storage can empty what it holds of this upload without more bytes."""
        writer = self._writer
        return writer is None or bool(writer.drainable)

    def _count_capture(self, capture: HeaderCapture, *, dropped: bool = False) -> None:
        """Bring the flow's count of what ``capture`` keeps up to date.

        Its views of bytes fed but not walked keep the socket reads they
        slice alive, even once the writer let go of them (issue 12 point 5:
        a captured header's bytes are reserved like any other buffer).
        """
        held = 0 if dropped or capture.done else capture.held_bytes
        before = self._capture_held.get(capture, 0)
        if held == before:
            return
        if held:
            self._capture_held[capture] = held
        else:
            del self._capture_held[capture]
        if held > before:
            self.flow.add(held - before)
        else:
            self.flow.done(before - held)

    def _write(self, writer: IPartWriter, data: bytes | memoryview) -> None:
        """Hand ``data`` to ``writer``; it stays in flight until the write's Deferred fires."""
        nbytes = len(data)
        self.flow.add(nbytes)
        writer.write(data).addBoth(self._written, nbytes)

    def _walk(self, data: bytes | memoryview) -> None:
        """Feed the part's capture: at once within this read's steps, else queued."""
        capture = self._capture
        steps = 0 if self._behind else self._read_steps
        self._read_steps -= capture.feed(data, max_steps=steps)
        self._count_capture(capture)
        self._name(self._writer, capture)
        if capture.pending and not (self._behind and self._behind[-1].capture is capture):
            self._behind.append(_Behind(capture, self._writer))
            if self._task is None:
                self.flow.captures_behind_changed(True)
                self._task = self._cooperate(self._catch_up())

    def _catch_up(self) -> Iterator[None]:
        """The cooperator's work: walk the captures behind, a slice at a time."""
        while self._behind:
            entry = self._behind[0]
            entry.capture.run(CAPTURE_STEPS_PER_SLICE)
            self._count_capture(entry.capture)
            if not entry.capture.pending:
                self._behind.popleft()
                self._name(entry.writer, entry.capture)
                for waiter in entry.waiters:
                    waiter.callback(None)
            yield None
        self._task = None
        self.flow.captures_behind_changed(False)

    def _name(self, writer: IPartWriter | None, capture: HeaderCapture) -> None:
        """Tell a writer that wants it which instance its part is, once the header is known.

        Once per capture: called after every walk, it acts on the first that
        leaves ``capture`` done.
        """
        if not capture.done or self._named is capture:
            return
        self._named = capture
        if writer is None or not INamedPartWriter.providedBy(writer):
            return
        verdict = self._verdict(capture)
        writer.named(None if isinstance(verdict, Failed) else verdict)

    def _verdict(self, capture: HeaderCapture) -> InstanceRef | Failed:
        """The judgement of a done capture, made once per part (kept until ``_retire``)."""
        verdict = self._verdicts.get(capture)
        if verdict is None:
            verdict = validate_header(capture.result(), self._policy.validation)
            self._verdicts[capture] = verdict
        return verdict

    def _caught_up(self, capture: HeaderCapture) -> Deferred[None]:
        """Fires once ``capture`` has walked every byte fed to it."""
        for entry in self._behind:
            if entry.capture is capture:
                waiter: Deferred[None] = Deferred()
                entry.waiters.append(waiter)
                return waiter
        return succeed(None)

    def _written(self, result: object, nbytes: int) -> None:
        self.flow.done(nbytes)
        if isinstance(result, Failure):
            # IPartWriter.write never fails; a writer that does must not
            # leave an unhandled error (its failure surfaces in finish()).
            log.failure("part writer's write failed", result)

    def _start_part(self, headers: Sequence[tuple[str, str]]) -> None:
        self._capture = HeaderCapture()
        self._claims = _NO_CLAIMS
        try:
            expected = part_digests(headers)
        except DigestFieldError as e:
            # A claim we cannot read is not a claim we can check: the part is
            # not stored unverified.
            self._skip_reason = Failed(FailureReason.CANNOT_UNDERSTAND, f"part digest field: {e}")
            return
        if expected:
            self._claims = _PartClaims.of(expected)
        content_type = _header(headers, "content-type")
        try:
            essence = parse_media_type(content_type or DICOM).essence
        except UnsupportedMediaType:
            essence = None
        if essence not in _DICOM_PART_TYPES:
            # Metadata+bulkdata parts are not supported; the part cannot be
            # understood as a PS3.10 instance (PS3.18 Table I.2-2, Cxxx).
            self._skip_reason = Failed(
                FailureReason.CANNOT_UNDERSTAND,
                f"part Content-Type {content_type!r} is not application/dicom",
            )

    def _end_part(self) -> None:
        writer, self._writer = self._writer, None
        skipped, self._skip_reason = self._skip_reason, None
        claims, self._claims = self._claims, _NO_CLAIMS
        # Every part passes through the flow's part count, empty or skipped
        # ones too (they leave it at once): one budget for all parts.
        self.flow.part_started()
        in_flow = _InFlow(self.flow)
        self._parts_ended += 1
        part = self._parts_ended
        if skipped is not None:
            self._pending.append(succeed(self._part_finished(skipped, in_flow, part)))
        elif writer is None:
            empty = Failed(FailureReason.CANNOT_UNDERSTAND, "empty part")
            self._pending.append(succeed(self._part_finished(empty, in_flow, part)))
        else:
            decided = self._commit_at_end(writer, self._capture, claims)
            outcome = ensureDeferred(
                self._finish_part(writer, self._capture, claims, in_flow, decided)
            )
            outcome.addBoth(self._part_finished, in_flow, part)
            self._pending.append(outcome)

    def _commit_at_end(
        self, writer: IPartWriter, capture: HeaderCapture, claims: _PartClaims
    ) -> _Decided | None:
        """Finish and commit the part in one storage step, when its commit is
        decided already as it ends; None: ``_store`` decides after ``finish``.

        Decided means: the writer offers the step (``IOneStepPartWriter``: the
        filesystem, for a part of one batch), the header is captured and
        valid, the study policy keeps it, and nothing waits for the digest
        (no part digest claim, no ``--verify-body-digest``).  Every check
        ``_store`` makes after ``finish`` would pass, so the storage may link
        the file straight after its fsync: one writer job and one trip back
        to the reactor per small instance instead of two.
        """
        if not IOneStepPartWriter.providedBy(writer):
            return None
        if claims.expected or self.body_verdict is not None or not capture.done:
            return None
        verdict = self._verdict(capture)
        if isinstance(verdict, Failed):
            return None
        expected = self._policy.expected_study_uid
        if (
            expected is not None
            and verdict.study_instance_uid != expected
            and self._policy.study_mismatch is StudyMismatch.REJECT
        ):
            return None
        overwrite = self._policy.duplicates is Duplicates.OVERWRITE
        started = writer.finish_then_commit(verdict, overwrite=overwrite)
        if started is None:
            return None
        finished, committed = started
        return _Decided(verdict, finished, committed)

    def _part_finished(self, outcome: Outcome, in_flow: _InFlow, part: int) -> Outcome:
        in_flow.leave()
        outcome = replace(outcome, part=part)
        observe.outcome_known(outcome)
        return outcome

    async def _finish_part(
        self,
        writer: IPartWriter,
        capture: HeaderCapture,
        claims: _PartClaims,
        in_flow: _InFlow,
        decided: _Decided | None,
    ) -> Outcome:
        try:
            return await self._store(writer, capture, claims, in_flow, decided)
        except Exception:
            # Anything unexpected stays with this one part (dcm4chee#3517:
            # one bad part must never turn the request into a 500).
            log.failure("unexpected error while storing a part")
            await writer.abort()
            return Failed(FailureReason.PROCESSING_FAILURE, "internal error while storing")
        finally:
            self._retire(capture)

    def _retire(self, capture: HeaderCapture) -> None:
        """Nobody needs ``capture`` any more: stop its walk and uncount what it keeps."""
        if any(entry.capture is capture for entry in self._behind):
            self._behind = deque(entry for entry in self._behind if entry.capture is not capture)
        self._verdicts.pop(capture, None)
        self._count_capture(capture, dropped=True)

    async def _store(
        self,
        writer: IPartWriter,
        capture: HeaderCapture,
        claims: _PartClaims,
        in_flow: _InFlow,
        decided: _Decided | None,
    ) -> Outcome:
        try:
            size = await (writer.finish() if decided is None else decided.finished)
        except StorageFull as e:
            _unstaged(decided)
            await writer.abort()
            return Failed(FailureReason.OUT_OF_RESOURCES, f"storage full: {e}")
        except OSError as e:
            _unstaged(decided)
            await writer.abort()
            STORAGE_ERRORS.inc()
            log.error("storage error while staging a part: {error}", error=e)
            return Failed(FailureReason.PROCESSING_FAILURE, f"storage error: {e.strerror}")
        if self._behind:  # else nothing to wait for: no Deferred to await
            await self._caught_up(capture)
        # Never 0: the writer is opened on a part's first byte.
        verdict = decided.instance if decided is not None else self._verdict(capture)
        if isinstance(verdict, Failed):
            await writer.abort()
            return verdict
        instance: InstanceRef = verdict
        sha256: bytes | None = writer.sha256
        # Before commit: a part whose bytes are not what its client hashed is
        # never stored (RFC 9530 §2, RFC 1864).
        mismatch = claims.mismatch(sha256)
        if mismatch is not None:
            await writer.abort()
            return _failed(FailureReason.CANNOT_UNDERSTAND, mismatch, instance)

        warning: WarningReason | None = None
        detail = ""
        expected = self._policy.expected_study_uid
        if expected is not None and instance.study_instance_uid != expected:
            detail = (
                f"Study Instance UID {instance.study_instance_uid} differs "
                f"from the target study {expected}"
            )
            if self._policy.study_mismatch is StudyMismatch.REJECT:
                await writer.abort()
                return _failed(FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, detail, instance)
            warning = WarningReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS

        if self.body_verdict is not None:
            # Held until the body's digest is checked (--verify-body-digest):
            # staged and judged, it no longer counts as pending work, or a
            # body of more than HIGH_WATER_PARTS parts would pause forever.
            in_flow.leave()
            body_mismatch = await detached(self.body_verdict)
            if body_mismatch is not None:
                await writer.abort()
                return _failed(FailureReason.CANNOT_UNDERSTAND, body_mismatch, instance)
        overwrite = self._policy.duplicates is Duplicates.OVERWRITE
        committing = time.monotonic()
        try:
            result = await (
                writer.commit(instance, overwrite=overwrite)
                if decided is None
                else decided.committed
            )
            COMMIT_SECONDS.observe(time.monotonic() - committing)
        except StorageFull as e:
            return _failed(FailureReason.OUT_OF_RESOURCES, f"storage full: {e}", instance)
        except OSError as e:
            STORAGE_ERRORS.inc()
            log.error("storage error while committing: {error}", error=e)
            return _failed(
                FailureReason.PROCESSING_FAILURE, f"storage error: {e.strerror}", instance
            )
        if result is CommitResult.CONFLICTING_DUPLICATE:
            return _failed(
                FailureReason.DUPLICATE_SOP_INSTANCE,
                "SOP Instance UID already stored with different content",
                instance,
            )
        # Its log line is ops.observe.outcome_known's, once the part has its
        # outcome (one line per instance: a second line here cost the main
        # process of a multi-worker server a relayed event per instance).
        digest = sha256.hex() if sha256 is not None else None
        return Stored(instance, warning, detail, size_bytes=size, sha256=digest)

    def fail_request(self, error: StowError) -> None:
        """The body cannot be read further (broken framing, too large).

        The part in flight is dropped; parts completed before the damage are
        kept, and the damage is reported as a failure without UIDs
        (OtherFailuresSequence, 0xC000).
        """
        if self._request_error is not None:
            return
        self._request_error = error
        self._abort_current()
        self._pending.append(
            succeed(Failed(FailureReason.CANNOT_UNDERSTAND, f"{error.title}: {error.detail}"))
        )

    def _abort_current(self) -> None:
        writer, self._writer = self._writer, None
        self._skip_reason = None
        # The part in flight will not be judged: stop walking its header (a
        # part that has not ended has nobody waiting for its capture).
        self._retire(self._capture)
        if writer is not None:
            writer.abort()

    def abort(self) -> None:
        """The client went away: drop the part in flight, nothing else."""
        self._abort_current()
        self.flow.close()

    def close(self) -> Deferred[IngestResult]:
        """The body is complete: fires with every part's outcome, in order."""
        pending = list(self._pending)
        error = self._request_error
        # No more bytes come: the upload's memory window goes to another
        # once what it holds has left memory.
        self.flow.close()

        def collect(results: list[tuple[bool, Any]]) -> IngestResult:
            outcomes: list[Outcome] = []
            for ok, value in results:
                # _finish_part never fails; keep the invariant visible.
                assert ok, value
                outcomes.append(value)
            return IngestResult(outcomes, error)

        return DeferredList(pending, consumeErrors=True).addCallback(collect)


def _unstaged(decided: _Decided | None) -> None:
    """Staging failed: the commit that would have followed fails the same way, unheard."""
    if decided is not None:
        decided.committed.addErrback(lambda _: None)


def _failed(reason: FailureReason, detail: str, instance: InstanceRef) -> Failed:
    return Failed(reason, detail, instance.sop_class_uid, instance.sop_instance_uid)
