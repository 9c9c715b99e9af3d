"""The server's Prometheus metrics: module-level, as prometheus-client intends.

Every hook into the hot path is one counter or gauge update per event (a
request, a refusal, a part, a pause, a body chunk), never per byte: the byte
counts are running sums incremented once per socket read or storage write.
Names carry the ``stow_`` prefix and base units (seconds, bytes); labels are
low-cardinality (route family, status, cause, outcome, reason code), never a
UID or a peer.

One process, one registry (prometheus-client's default, which also carries
the process and platform collectors).  With worker processes (``--workers``)
the main process creates a directory and gives it to each worker as
``PROMETHEUS_MULTIPROC_DIR``, so prometheus-client keeps every worker's
values in files there; the main process serves ``--metrics-listen`` once,
from ``workers_registry``: the ``MultiProcessCollector`` of that directory
(summed over the workers, the gauges by their ``multiprocess_mode``) plus
the families the main process itself owns (``MAIN_FAMILIES``: the one AMQP
publisher, the shared spool, the drain).  Gauges read at scrape time from a
callback cannot be in those files: a worker writes them when the main
process asks, just before it collects (``refresh_gauges``).
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


# In a worker process: each gauge read from a callback, and that callback.
_REFRESHED: list[tuple[Gauge, Callable[[], float]]] = []
# The families a multi-worker main process serves from its own registry,
# not from the workers' files (it runs the publisher and owns the drain).
MAIN_FAMILIES = frozenset(
    {
        "stow_amqp_connected",
        "stow_amqp_published",
        "stow_amqp_failed",
        "stow_workflow_spool_depth",
        "stow_draining",
    }
)


def in_worker_process() -> bool:
    """Whether this process keeps its metrics in a multiprocess directory."""
    return bool(os.environ.get(MULTIPROCESS_ENV))


def _watch(gauge: Gauge, read: Callable[[], float]) -> None:
    if in_worker_process():
        # A callback is never written to the worker's files: refresh_gauges does it.
        _REFRESHED.append((gauge, read))
    else:
        gauge.set_function(read)


def refresh_gauges() -> None:
    """In a worker: write each callback gauge's value now (a scrape is coming)."""
    for gauge, read in _REFRESHED:
        gauge.set(read())


def watch_uploads(uploads: Callable[[], list[Any]]) -> None:
    """The upload gauges, from ``uploads()`` (each an ``Upload``) at scrape time."""
    _watch(UPLOADS_IN_FLIGHT, lambda: len(uploads()))
    _watch(UPLOADS_PAUSED, lambda: sum(1 for u in uploads() if u.flow.paused))
    _watch(BYTES_IN_FLIGHT, lambda: sum(u.flow.in_flight_bytes for u in uploads()))


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


class _WorkersCollector:
    """The workers' files, and the families the main process owns from its own registry."""

    def __init__(self, directory: str) -> None:
        from prometheus_client import multiprocess

        self._files = multiprocess.MultiProcessCollector(None, path=directory)  # type: ignore[no-untyped-call]

    def collect(self) -> Any:
        for family in self._files.collect():  # type: ignore[no-untyped-call]
            if family.name not in MAIN_FAMILIES:
                yield family
        for family in REGISTRY.collect():
            if family.name in MAIN_FAMILIES:
                yield family


def workers_registry(directory: str) -> CollectorRegistry:
    """What a multi-worker main process serves: see the module docstring."""
    merged = CollectorRegistry(auto_describe=False)
    merged.register(_WorkersCollector(directory))
    return merged


def worker_ended(directory: str, pid: int) -> None:
    """A worker is gone: its live gauges leave the sums (prometheus-client's own clean-up)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
