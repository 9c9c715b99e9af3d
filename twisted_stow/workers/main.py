"""The object graph of a multi-worker main process (``twistd stow --workers N``).

What the main process owns for the whole server: the listening sockets
(bound here, served by the workers), the workflow spool's one AMQP
publisher (woken by the workers' ``Spooled`` notices and its own periodic
rescan, so no entry is published by two processes at once), the spool
depth and drain metrics, ``--metrics-listen`` (served once, for every
worker) and the ``Supervisor``.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service

from ..core.config import StowConfig
from ..ops import metrics, startup
from ..site import SpoolService, make_publisher
from ..workflow.spool import Spool
from . import handover
from .scrape import workers_metrics_site
from .shared import SharedState
from .supervisor import Supervisor


class BoundPorts(Service):
    """Binds every ``--listen`` socket when the application starts, as a listener would
    (before twistd drops privileges); a port that cannot be opened ends start-up."""

    def __init__(self, config: StowConfig, reactor: Any) -> None:
        self._config = config
        # Parsed now: a bad description or TLS file is a start-up line at once.
        self._endpoints = [
            (description, startup.endpoint(reactor, description, "--listen"))
            for description in config.listen
        ]
        self.ports: list[handover.HandedPort] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        for description, endpoint in self._endpoints:
            try:
                self.ports.append(handover.bind(description, endpoint))
            except OSError as e:
                startup.fail(f"--listen {description}: cannot listen: {startup.describe_error(e)}")
            startup.warn_if_exposed(description, authenticated=_authenticated(self._config))


def _authenticated(config: StowConfig) -> bool:
    return any(
        path is not None
        for path in (config.users_file, config.tokens_file, config.jwt_key_file, config.jwks_file)
    )


def make_main_services(
    config: StowConfig, reactor: Any, arguments: list[str], count: int
) -> MultiService:
    """The main process's services; the workers build theirs (``child.py``)."""
    top = MultiService()
    bound = BoundPorts(config, reactor)
    bound.setServiceParent(top)
    spool = Spool(config.workflow_spool_dir)
    SpoolService(spool).setServiceParent(top)
    metrics.watch_spool(lambda: len(spool.pending()))
    # With --index the workers relay the shared outbox themselves (its rows
    # are claimed atomically); the spool then stays empty and unpublished.
    publisher = None if config.index_url is not None else make_publisher(config, spool, reactor)
    supervisor = Supervisor(
        reactor=reactor,
        shared=SharedState(config, reactor.seconds),
        arguments=arguments,
        ports=bound.ports,
        count=count,
        storage_dir=config.storage if config.s3 is None else None,
        drain_timeout_seconds=config.drain_timeout_seconds,
        spooled=publisher.wake if publisher is not None else lambda: None,
    )
    if publisher is not None:
        publisher.setServiceParent(top)
    if config.metrics_listen is not None:
        startup.Listener(
            startup.endpoint(reactor, config.metrics_listen, "--metrics-listen"),
            workers_metrics_site(supervisor.metrics_dir, supervisor.refresh_gauges),
            "--metrics-listen",
            config.metrics_listen,
        ).setServiceParent(top)
    supervisor.setServiceParent(top)
    return top
