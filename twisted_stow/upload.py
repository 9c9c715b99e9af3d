"""``Upload``: one STOW-RS request body on its way from the socket to storage.

Created by ``StowService.begin_upload`` from what ``admit`` decided at header
time, fed by ``StreamingRequest`` chunk by chunk, and read by the Klein route
once the body is complete.  Its ``BodyPipeline`` is the one path a body byte
takes: the reader, the size limits, then ``Ingest``.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred

from .core.admission import Admission, BodyLimits, Target
from .core.errors import BodyTooLarge, InvalidChunkSize, MalformedMultipart, StowError
from .core.multipart import BodyReader, Event, PartData, PartStarted
from .flow import BytesInFlight, Pausable
from .ingest import Ingest, IngestResult
from .interfaces import IStorage

# No body is larger (RFC 9112 §7.1 asks to guard chunk sizes against overflow).
MAX_CHUNK_BYTES = 2**63 - 1

# A socket read of 256 KiB-1 MiB halves the receive-path CPU compared with
# Twisted's 64 KiB default (measured, docs/DESIGN.md).
READ_SIZE_BYTES = 256 * 1024


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

    def __init__(self, reader: BodyReader, ingest: Ingest, limits: BodyLimits) -> None:
        self._reader = reader
        self._ingest = ingest
        self._limits = limits
        self.received_bytes = 0
        self._part_bytes = 0  # of the part being received
        self._parts_started = 0
        self.error: StowError | None = None  # why the body failed, once it has

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
        """The last byte arrived: close the reader, collect the outcomes."""
        if self.error is None:
            try:
                events = self._reader.close()
            except StowError as error:
                self._fail([], error)
            else:
                self._ingest.handle(events)
        return self._ingest.close()

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

    read_size_bytes = READ_SIZE_BYTES

    def __init__(
        self,
        admission: Admission,
        *,
        release: Callable[[], None],
        storage: IStorage,
        producer: Pausable,
        principal: str | None = None,
    ) -> None:
        self.target: Target = admission.target
        # Who sent it (authentication), None when authentication is off.
        self.principal = principal
        self.base_url = admission.base_url  # RetrieveURL base, fixed from the headers
        self.release = release  # frees the upload slot; idempotent
        self.response_type = admission.response_type
        self.ingest = Ingest(storage, admission.policy, producer)
        self.body = BodyPipeline(admission.reader, self.ingest, admission.limits)
        self.result: Deferred[IngestResult] | None = None
        self._closed = False

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
            self.ingest.abort()
