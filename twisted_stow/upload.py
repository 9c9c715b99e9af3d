"""``Upload``: one STOW-RS request body on its way from the socket to storage.

Created by ``StowService.begin_upload`` once the headers are in, fed by
``StreamingRequest`` chunk by chunk, and read by the Klein route once the
body is complete.  It holds what the route decided from the URL and headers
(target study, response media type) and the ``Ingest`` that stores the parts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from twisted.internet.defer import Deferred

from .core.errors import BodyTooLarge, InvalidChunkSize, StowError
from .core.multipart import Event, PartData, PartStarted
from .core.policy import IngestPolicy
from .core.singlepart import BodyReader
from .flow import BytesInFlight, Pausable
from .ingest import Ingest, IngestResult, RunInThread
from .interfaces import IStorage

# No body is larger (RFC 9112 §7.1 asks to guard chunk sizes against overflow).
MAX_CHUNK_BYTES = 2**63 - 1

# A socket read of 256 KiB-1 MiB halves the receive-path CPU compared with
# Twisted's 64 KiB default (TWISTED.md Q6).
READ_SIZE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Target:
    """What the URL of a STOW request says."""

    base_path: str  # the path before "/studies": WADO-RS base of RetrieveURLs
    study_uid: str | None = None
    workflow_id: str | None = None
    ae_title: str | None = None
    route_family: str = "standard"  # "standard", "monai" or "dcm4chee"


class Upload:
    """One request body being parsed and stored as it arrives."""

    read_size_bytes = READ_SIZE_BYTES

    def __init__(
        self,
        *,
        release: Callable[[], None],
        target: Target,
        base_url: str,
        response_type: str,
        reader: BodyReader,
        storage: IStorage,
        policy: IngestPolicy,
        producer: Pausable,
        run_in_thread: RunInThread,
        max_body_bytes: int | None,
        principal: str | None = None,
        max_part_bytes: int | None = None,
    ) -> None:
        self.target = target
        # Who sent it (authentication), None when authentication is off.
        self.principal = principal
        self.base_url = base_url  # RetrieveURL base, fixed from the headers
        self.release = release  # frees the upload slot; idempotent
        self.response_type = response_type
        self._reader = reader
        self._reader_failed = False
        self._max_body_bytes = max_body_bytes
        self.ingest = Ingest(storage, policy, producer, run_in_thread)
        self.received_bytes = 0
        self._max_part_bytes = max_part_bytes
        self._part_bytes = 0  # of the part being received
        self._parts_started = 0
        self.result: Deferred[IngestResult] | None = None
        self._closed = False

    @property
    def flow(self) -> BytesInFlight:
        """The upload's backpressure, owned by its ingest."""
        return self.ingest.flow

    def feed(self, data: bytes, announced_after: int = 0) -> None:
        """The next piece of the body.

        ``announced_after`` is what the framing already promises after this
        piece (the rest of its chunk): a body that could never pass the limit,
        or an absurd chunk-size, is refused before its data is processed.
        Raises ``BodyTooLarge`` or ``InvalidChunkSize``.
        """
        self.received_bytes += len(data)
        limit = self._max_body_bytes
        if limit is not None and self.received_bytes + announced_after > limit:
            raise BodyTooLarge(
                f"the body is larger than this server's limit of {limit} bytes"
                + (f" (a chunk announces {announced_after} more)" if announced_after else "")
            )
        if len(data) + announced_after > MAX_CHUNK_BYTES:
            raise InvalidChunkSize(f"a chunk-size of {len(data) + announced_after} bytes")
        if self._reader_failed:
            return
        try:
            events = self._reader.feed(data)
        except StowError as error:
            self._reader_failed = True
            # Parts completed in this very chunk, before the damage, count.
            self.ingest.handle(self._within_part_limit(getattr(error, "events_before_damage", ())))
            self.ingest.fail_request(error)
            return
        self.ingest.handle(self._within_part_limit(events))

    def _within_part_limit(self, events: Iterable[Event]) -> Iterable[Event]:
        """``events``, checked against ``max_part_bytes``.

        Over the limit, the events before the overflow go to storage (a part
        completed earlier in the same chunk is kept) and ``BodyTooLarge``
        stops the request; the request's abort then removes the part's
        staged bytes.
        """
        if self._max_part_bytes is None:
            return events
        passed: list[Event] = []
        for event in events:
            if isinstance(event, PartStarted):
                self._part_bytes = 0
                self._parts_started += 1
            elif isinstance(event, PartData):
                self._part_bytes += len(event.data)
                if self._part_bytes > self._max_part_bytes:
                    self.ingest.handle(passed)
                    raise BodyTooLarge(
                        f"part {self._parts_started} is larger than this server's limit of "
                        f"{self._max_part_bytes} bytes per instance"
                    )
            passed.append(event)
        return passed

    def body_complete(self) -> Deferred[IngestResult]:
        """The last byte arrived: close the reader, collect the outcomes."""
        if not self._reader_failed:
            try:
                self.ingest.handle(self._reader.close())
            except StowError as error:
                self._reader_failed = True
                self.ingest.fail_request(error)
        self._closed = True
        self.result = self.ingest.close()
        return self.result

    def abort(self) -> None:
        """The connection is gone or the request was refused mid-body."""
        if not self._closed:
            self._closed = True
            self.ingest.abort()
