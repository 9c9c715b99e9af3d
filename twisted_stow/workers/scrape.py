"""``--metrics-listen`` of a multi-worker server: served once, by the main process.

A scrape first asks every worker to write the gauges it reads from
callbacks (uploads in flight, paused, bytes in flight) into its
multiprocess files, then renders ``metrics.workers_registry``: the workers'
files summed, plus the families the main process owns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ..ops import metrics
from ..ops.startup import MetricsSite


class WorkersMetrics(Resource):
    """GET /metrics: refresh the workers' gauges, then render every process's metrics."""

    isLeaf = True

    def __init__(self, directory: str, refresh: Callable[[], Deferred[None]]) -> None:
        super().__init__()
        self._directory = directory
        self._refresh = refresh

    def render_GET(self, request: Any) -> Any:
        def render(_: object) -> None:
            # A few small files read with mmap: cheap enough for the reactor.
            body = generate_latest(metrics.workers_registry(self._directory))
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
            request.write(body)
            request.finish()

        self._refresh().addCallback(render)
        return NOT_DONE_YET


def workers_metrics_site(directory: str, refresh: Callable[[], Deferred[None]]) -> MetricsSite:
    root = Resource()
    root.putChild(b"metrics", WorkersMetrics(directory, refresh))
    return MetricsSite(root)
