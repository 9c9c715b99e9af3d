"""``make_site``: the one place where the server's object graph is assembled."""

from __future__ import annotations

from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.web.server import Site

from .app import StowService
from .auth.accesslog import access_log_line
from .channel import StowChannel
from .core.config import StowConfig
from .interfaces import IStorage
from .request import StreamingRequest
from .workflow.spool import Spool
from .workflow.trigger import RunInThread, WorkflowTrigger


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
) -> StowSite:
    """Build the Site serving ``config`` with ``storage`` on ``reactor``.

    ``workflows``: where the MONAI routes' workflow requests go; by default a
    spool at ``config.workflow_spool_dir``, created here.
    """

    def run_in_thread(f: Any, *args: Any) -> Any:
        # Validation (pydicom) runs on the reactor's pool, apart from the
        # storage writer threads, so parsing never queues behind an fsync.
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    if workflows is None:
        workflows = make_workflow_trigger(config, run_in_thread)
        workflows.spool.open()
    service = StowService(config, storage, reactor, run_in_thread, workflows)
    return StowSite(service, timeout=config.idle_timeout_seconds)


def make_workflow_trigger(config: StowConfig, run_in_thread: RunInThread) -> WorkflowTrigger:
    """The spool-backed trigger of ``config`` (its directory is not created yet)."""
    return WorkflowTrigger(
        Spool(config.workflow_spool_dir),
        run_in_thread,
        storage_root=config.storage,
        default_workflows=config.default_workflows,
    )
