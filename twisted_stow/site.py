"""``make_services`` and ``make_site``: the one place where the server's object graph is built.

Wiring only: ``tap.makeService`` and the in-process test servers both call
``make_services`` and add their listening ports; nothing here decides
anything about a request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService, Service
from twisted.web.server import Site

from .app import StowService
from .auth.accesslog import access_log_line
from .channel import StowChannel
from .core.budget import upload_window_bytes
from .core.config import S3Target, StowConfig
from .deferreds import reactor_threads
from .interfaces import IStorage
from .ops import metrics
from .ops.health import Readiness
from .request import StreamingRequest
from .storage.filesystem import FilesystemStorage
from .storage.s3client import S3Location, default_endpoint
from .workflow.amqp import AmqpPublisher
from .workflow.spool import Spool
from .workflow.trigger import WorkflowTrigger

if TYPE_CHECKING:
    from .cluster.outbox import OutboxTable
    from .workers.control import WorkerControl


class StowSite(Site):
    """A Site whose requests stream their bodies into ``stow``."""

    # HTTP/1.1 only (see acceptableProtocols), so the channel itself rather
    # than Twisted's HTTP/2-negotiating wrapper around it.
    protocol = StowChannel  # type: ignore[assignment]

    def __init__(self, stow: StowService, *, timeout: float) -> None:
        super().__init__(
            stow.app.resource(),
            requestFactory=StreamingRequest,
            timeout=timeout,
            # The authenticated principal in each request's access line.
            logFormatter=access_log_line,
        )
        self.stow = stow
        # Tracebacks are for the log, never for clients.
        self.displayTracebacks = False

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.stow = self.stow
        protocol.header_timeout = self.stow.config.header_timeout_seconds
        return protocol

    def acceptableProtocols(self) -> list[bytes]:
        # HTTP/2 would need a different early-refusal path (no raw answer on a stream):
        # serve STOW over HTTP/1.1 only, also behind TLS with ALPN.
        return [b"http/1.1"]


def make_site(
    config: StowConfig,
    storage: IStorage,
    reactor: Any,
    workflows: WorkflowTrigger | None = None,
    *,
    control: WorkerControl | None = None,
) -> StowSite:
    """The Site serving ``config`` with ``storage`` on ``reactor``; opens nothing.

    ``workflows``: where the MONAI routes' workflow requests go (None: they
    trigger nothing).  Starting storage and the spool is their services' job
    (``make_services``).  ``control``: a worker process's connection to the
    main process, whose server-wide limits the service then uses.
    """
    run_in_thread = reactor_threads(reactor)
    service = StowService(config, storage, reactor, run_in_thread, workflows, control=control)
    service.readiness = Readiness(
        run_in_thread,
        # The directory probe is the filesystem's check; other backends bring their own.
        storage_dir=config.storage if isinstance(storage, FilesystemStorage) else None,
        space=service.space,
        draining=lambda: service.drain.draining,
        unavailable=storage.unavailable,
    )
    metrics.watch_uploads(service.drain.uploads)
    return StowSite(service, timeout=config.idle_timeout_seconds)


def make_services(
    config: StowConfig,
    reactor: Any,
    storage: IStorage | None = None,
    *,
    in_worker: bool = False,
    control: WorkerControl | None = None,
) -> tuple[MultiService, StowSite]:
    """The server's object graph: its services and the Site they serve.

    The services start storage, open the workflow spool and run the AMQP
    publisher (with ``--amqp-url``), in that order, and stop them in reverse;
    the caller adds the listening endpoints.  ``storage`` defaults to the
    filesystem at ``config.storage``.  ``in_worker``: a worker process of
    ``--workers``, whose main process runs the one publisher over the shared
    spool and reports its depth (``twisted_stow/workers``).  ``control``: in
    a worker process, its end of the AMP connection to the main process
    (``workers.control.worker_side()``): upload slots, the authentication
    throttle and the password budget are then the main process's,
    server-wide; None keeps them in this process.
    """
    if storage is None:
        storage = make_storage(config, reactor)
    outbox = None
    if config.index_url is not None:
        # The shared index decides every commit; the shared outbox replaces
        # the spool's role (docs/CLUSTER.md).
        from .cluster.wiring import with_index

        storage, outbox = with_index(storage, config.index_url, reactor)
    run_in_thread = reactor_threads(reactor)
    workflows = WorkflowTrigger(
        Spool(config.workflow_spool_dir),
        run_in_thread,
        storage_root=config.storage_root,
        default_workflows=config.default_workflows,
        record=outbox.record if outbox is not None else None,
    )
    top = MultiService()
    StorageService(storage).setServiceParent(top)
    SpoolService(workflows.spool).setServiceParent(top)
    publisher: AmqpPublisher | None = None
    if outbox is not None:
        # The shared outbox's rows are claimed atomically (FOR UPDATE SKIP
        # LOCKED), so every process relays it: each worker, as each node.
        publisher = make_publisher(config, outbox, reactor)
    elif not in_worker:
        # The spool is one directory of files: one publisher per server,
        # the main process's under --workers.
        metrics.watch_spool(lambda: len(workflows.spool.pending()))
        publisher = make_publisher(config, workflows.spool, reactor)
    if publisher is not None:
        workflows.on_spooled(publisher.wake)
        publisher.setServiceParent(top)
    return top, make_site(config, storage, reactor, workflows, control=control)


def make_publisher(
    config: StowConfig, outbox: Spool | OutboxTable, reactor: Any
) -> AmqpPublisher | None:
    """The AMQP publisher of the workflow spool or shared outbox (``--amqp-url``), or None."""
    if config.amqp_url is None:
        return None
    return AmqpPublisher(
        outbox,
        config.amqp_url,
        exchange=config.amqp_exchange,
        routing_key=config.amqp_routing_key,
        reactor=reactor,
        run_in_thread=reactor_threads(reactor),
        ca_file=config.amqp_ca,
    )


def s3_location(target: S3Target) -> S3Location:
    """Where the S3 backend of ``--storage s3://...`` talks to."""
    endpoint = target.endpoint or default_endpoint(target.region)
    return S3Location(target.bucket, target.prefix, endpoint, target.region)


def make_storage(config: StowConfig, reactor: Any, *, run_token: str | None = None) -> IStorage:
    """The backend ``--storage`` names: an S3 bucket (``s3://``) or a directory.

    ``run_token``: names this run's staging files (a worker's main process
    picks it, to sweep them once the worker is gone).
    """
    if config.s3 is None:
        return FilesystemStorage(config.storage, reactor, run_token=run_token)
    from .storage.s3 import S3Storage
    from .storage.s3client import S3Client, load_credentials

    credentials = load_credentials(custom_endpoint=config.s3.endpoint is not None)
    if credentials is None:
        raise ValueError("no S3 credentials (AWS_ACCESS_KEY_ID/AWS_PROFILE/shared files)")
    window = upload_window_bytes(config.memory_budget_bytes, s3=True)
    return S3Storage(
        S3Client(s3_location(config.s3), credentials, reactor), reactor, window_bytes=window
    )


class StorageService(Service):
    """Starts and stops the storage (directories, threads) with the application."""

    def __init__(self, storage: IStorage) -> None:
        self.storage = storage

    def startService(self) -> None:
        self.storage.start()
        super().startService()

    def stopService(self) -> Any:
        # An object store's stop may return a Deferred (its last requests):
        # twistd waits for it (IStorage.stop).
        stopped = self.storage.stop()
        super().stopService()
        return stopped


class SpoolService(Service):
    """Creates the workflow spool before the server listens."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def startService(self) -> None:
        self.spool.open()
        super().startService()
