"""``WorkflowTrigger``: the Twisted edge between the MONAI routes and the spool.

The route calls ``submit`` once the upload's outcomes are in (every stored
instance is durable by then); ``submit`` builds the workflow request (pure,
request.py) and writes it to the spool in a worker thread (or, with
``--index``, inserts it into the shared outbox table: ``record``), and the
route answers only after that write is durable.  Listeners (the AMQP publisher)
are told about each new entry, so they need not poll for it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core.outcomes import Outcome
from ..deferreds import RunInThread
from .request import WorkflowContext, build_workflow_request, encode
from .spool import Spool, entry_name

log = Logger()


@dataclass(frozen=True, slots=True)
class Submission:
    """What ``submit`` did: the request it spooled (None: nothing to trigger),
    or the error that kept it from the spool."""

    workflow_request: dict[str, Any] | None = None
    entry: Path | None = None
    error: BaseException | None = None

    @property
    def retry_after_seconds(self) -> int | None:
        """Set when the error is an outage the client should wait out (503), not a fault."""
        seconds = getattr(self.error, "retry_after_seconds", None)
        return seconds if isinstance(seconds, int) else None


def new_correlation_id() -> str:
    """A fresh correlation id for one HTTP request (a UUID, as MONAI uses)."""
    return str(uuid.uuid4())


class Recorder(Protocol):
    """Writes one workflow request durably somewhere other than the spool."""

    def __call__(
        self, name: str, payload_id: str, correlation_id: str, body: bytes
    ) -> Deferred[Any]: ...


class WorkflowTrigger:
    """Builds and spools one workflow request per qualifying POST."""

    def __init__(
        self,
        spool: Spool,
        run_in_thread: RunInThread,
        *,
        storage_root: Path | str,
        default_workflows: Sequence[str] = (),
        now_ns: Callable[[], int] = time.time_ns,
        record: Recorder | None = None,
    ) -> None:
        self.spool = spool
        # The shared outbox (--index): replaces the spool's write.
        self._record = record
        self._run_in_thread = run_in_thread
        # s3://BUCKET/PREFIX stays as it is; a directory is made absolute.
        root = str(storage_root)
        self._storage_root = root if "://" in root else str(Path(root).absolute())
        self.default_workflows = tuple(default_workflows)
        self._now_ns = now_ns
        self._listeners: list[Callable[[], None]] = []

    def on_spooled(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (on the reactor thread) after each new entry."""
        self._listeners.append(listener)

    def workflows_for(self, workflow_id: str | None) -> list[str]:
        """The URL's workflow, or the configured defaults (possibly none)."""
        return [workflow_id] if workflow_id is not None else list(self.default_workflows)

    def submit(
        self,
        outcomes: Sequence[Outcome],
        *,
        correlation_id: str,
        workflow_id: str | None,
        endpoint: str,
        peer: str,
        principal: str | None,
    ) -> Deferred[Submission]:
        """Spool the workflow request of a POST with ``outcomes``.

        Fires with a ``Submission`` once the entry is durable (or at once
        when nothing was stored); never fails: a spool error is returned as
        ``Submission.error`` for the route to answer.
        """
        timestamp_ns = self._now_ns()
        payload_id = str(uuid.uuid4())
        context = WorkflowContext(
            payload_id=payload_id,
            correlation_id=correlation_id,
            workflows=self.workflows_for(workflow_id),
            endpoint=endpoint,
            peer=peer,
            principal=principal,
            storage_root=self._storage_root,
            timestamp=datetime.fromtimestamp(timestamp_ns / 1e9, tz=timezone.utc),
        )
        workflow_request = build_workflow_request(outcomes, context)
        if workflow_request is None:
            return succeed(Submission())
        name = entry_name(timestamp_ns, payload_id)
        body = encode(workflow_request)
        if self._record is not None:
            d = self._record(name, payload_id, correlation_id, body)
        else:
            d = self._run_in_thread(self.spool.write, name, body)

        def written(entry: Path | None) -> Submission:
            log.info(
                "workflow request {payload_id} spooled: workflows {workflows}, "
                "{file_count} files, correlation {correlation_id}",
                payload_id=payload_id,
                workflows=workflow_request["workflows"],
                file_count=workflow_request["file_count"],
                correlation_id=correlation_id,
            )
            for listener in self._listeners:
                try:
                    listener()
                except Exception:
                    # The entry is durable; a listener's bug must not turn
                    # that into an error for the client.
                    log.failure("workflow spool listener failed")
            return Submission(workflow_request, entry)

        def failed(failure: Failure) -> Submission:
            log.failure(
                "could not spool workflow request {payload_id} (correlation {correlation_id})",
                failure,
                payload_id=payload_id,
                correlation_id=correlation_id,
            )
            return Submission(error=failure.value)

        return d.addCallbacks(written, failed)
