"""The server's Prometheus metrics: module-level, as prometheus-client intends.

Every hook into the hot path is one counter or gauge update per event (a
request, a refusal, a part, a pause, a body chunk), never per byte: the byte
counts are running sums incremented once per socket read or storage write.
Names carry the ``stow_`` prefix and base units (seconds, bytes); labels are
low-cardinality (route family, status, cause, outcome, reason code), never a
UID or a peer.

One process, one registry (prometheus-client's default, which also carries
the process and platform collectors).  With several workers each would set
``PROMETHEUS_MULTIPROC_DIR`` and the metrics listener would serve the
``MultiProcessCollector`` of that directory, summing over the workers; the
gauges declare their ``multiprocess_mode`` for that (docs/OPERATIONS.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.registry import REGISTRY

from ..core.errors import StowError
from ..core.outcomes import Failed, Outcome, Stored

# Request durations: from a health probe (~1 ms) to a multi-GB study (minutes).
DURATION_BUCKETS_SECONDS = (0.005, 0.025, 0.1, 0.5, 1, 2.5, 10, 30, 120, 600, 1800)
# Body sizes: one small instance (~100 KiB) to a whole CT study (several GiB).
SIZE_BUCKETS_BYTES = tuple(float(1024**2 * n) for n in (0.1, 1, 8, 64, 256, 1024, 4096, 16384))
# Per-instance commit (fsync of the file and its directories, or an object store PUT).
COMMIT_BUCKETS_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
# Set by a multi-worker main process for its workers (prometheus-client reads it).
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    "stow_requests",
    "Requests answered, by route family (standard, monai, dcm4chee, ops, other, none) and status.",
    ["family", "status"],
)
REFUSALS = Counter(
    "stow_refusals",
    "Requests refused outside the response cycle, by status and cause (error class).",
    ["status", "cause"],
)
INSTANCES = Counter(
    "stow_instances",
    "Parts by outcome (stored, warning, failed) and Failure/Warning Reason (hex, or none).",
    ["outcome", "reason"],
)
RECEIVED_BYTES = Counter("stow_received_bytes", "Request body bytes received.")
REQUEST_SECONDS = Histogram(
    "stow_request_duration_seconds",
    "From a request's headers to its answer.",
    ["family"],
    buckets=DURATION_BUCKETS_SECONDS,
)
BODY_BYTES = Histogram(
    "stow_request_body_bytes",
    "Body bytes of each STOW request answered.",
    buckets=SIZE_BUCKETS_BYTES,
)
COMMIT_SECONDS = Histogram(
    "stow_commit_duration_seconds",
    "Per instance: the storage commit (durable and visible under its name).",
    buckets=COMMIT_BUCKETS_SECONDS,
)
# The three gauges of uploads are read from the uploads in flight at scrape
# time (``watch_uploads``): nothing on the hot path, and no count can leak
# when an upload is aborted while paused.
UPLOADS_IN_FLIGHT = Gauge(
    "stow_uploads_in_flight", "STOW uploads holding a slot.", multiprocess_mode="livesum"
)
UPLOADS_PAUSED = Gauge(
    "stow_uploads_paused",
    "Uploads whose socket is paused because storage is behind.",
    multiprocess_mode="livesum",
)
BYTES_IN_FLIGHT = Gauge(
    "stow_bytes_in_flight",
    "Body bytes handed to storage and not yet written.",
    multiprocess_mode="livesum",
)
STORAGE_PAUSES = Counter(
    "stow_storage_pauses", "Times an upload stopped reading its socket because storage was behind."
)
STORAGE_ERRORS = Counter("stow_storage_errors", "Storage operations that failed (OSError).")
SPOOL_DEPTH = Gauge(
    "stow_workflow_spool_depth",
    "Workflow requests in the spool (with --amqp-url: not yet confirmed by the broker).",
    multiprocess_mode="liveall",
)
AMQP_CONNECTED = Gauge(
    "stow_amqp_connected", "1 while the AMQP publisher has a channel.", multiprocess_mode="liveall"
)
AMQP_PUBLISHED = Counter("stow_amqp_published", "Workflow requests confirmed by the broker.")
AMQP_FAILED = Counter(
    "stow_amqp_failed", "Publishes that failed: nacked, returned unroutable, or channel lost."
)
DRAINING = Gauge("stow_draining", "1 once SIGTERM started the drain.", multiprocess_mode="max")


def request_answered(family: str, status: int, seconds: float) -> None:
    """A request got its answer (through twisted.web or a raw refusal)."""
    REQUESTS.labels(family, str(status)).inc()
    REQUEST_SECONDS.labels(family).observe(seconds)


def refused(error: StowError) -> None:
    """A raw answer (``StowChannel.answer_and_close``)."""
    REFUSALS.labels(str(error.status), type(error).__name__).inc()


def outcome_known(outcome: Outcome) -> None:
    """One part has its outcome."""
    if isinstance(outcome, Stored):
        if outcome.warning is None:
            INSTANCES.labels("stored", "none").inc()
        else:
            INSTANCES.labels("warning", f"{outcome.warning:#06x}").inc()
    elif isinstance(outcome, Failed):
        INSTANCES.labels("failed", f"{outcome.reason:#06x}").inc()


def watch_uploads(uploads: Callable[[], list[Any]]) -> None:
    """The upload gauges, from ``uploads()`` (each an ``Upload``) at scrape time."""
    UPLOADS_IN_FLIGHT.set_function(lambda: len(uploads()))
    UPLOADS_PAUSED.set_function(lambda: sum(1 for u in uploads() if u.flow.paused))
    BYTES_IN_FLIGHT.set_function(lambda: sum(u.flow.in_flight_bytes for u in uploads()))


def watch_spool(depth: Callable[[], int]) -> None:
    """The spool depth is read at scrape time (a directory listing), not kept."""

    def safe_depth() -> int:
        try:
            return depth()
        except OSError:  # not created yet, or unreadable: nothing countable
            return 0

    SPOOL_DEPTH.set_function(safe_depth)


def registry() -> Any:
    """What ``/metrics`` serves: this process, or every worker in multiprocess mode."""
    directory = os.environ.get(MULTIPROCESS_ENV)
    if not directory:
        return REGISTRY
    from prometheus_client import multiprocess

    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
    return merged
