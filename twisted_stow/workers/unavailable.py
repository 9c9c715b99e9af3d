"""What the main process answers while no worker is up: 503 to everything.

Between the death of the last serving worker and the start of its
replacement (a restart back-off can last up to 30 s) nobody would accept on
the shared sockets: clients would wait in the listen backlog and a load
balancer polling ``/readyz`` would see a timeout, not a "not ready".  So
the main process adopts its own copies of the plain TCP sockets meanwhile
and answers every request 503 + ``Retry-After`` (``/readyz`` included),
closing the connection; it stops as soon as a worker reports ready.  An
``ssl:`` socket is left to wait: the main process holds no TLS options of
its own (each worker builds its reloadable ones).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from .handover import KIND_TCP, HandedPort

log = Logger()


class NoWorker(Resource):
    """Every path: 503, no worker serves now."""

    isLeaf = True

    def __init__(self, retry_after: Callable[[], float]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._retry_after = retry_after

    def render(self, request: Any) -> bytes:
        request.setResponseCode(503)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        seconds = max(1, math.ceil(self._retry_after()))
        request.setHeader(b"Retry-After", str(seconds).encode())
        request.setHeader(b"Connection", b"close")
        return b"no worker process is serving now\n"


class NoWorkerSite(Site):
    """The main process's stand-in while no worker serves."""

    def __init__(self, retry_after: Callable[[], float]) -> None:
        super().__init__(NoWorker(retry_after))  # type: ignore[no-untyped-call]
        # Plain answers, no access log line per poll: the supervisor logs why.
        self.noisy = False

    def log(self, request: Any) -> None:
        pass


class Unavailable:
    """Answers on the handed-over TCP sockets while ``start``ed, until ``stop``."""

    def __init__(
        self, reactor: Any, ports: list[HandedPort], retry_after: Callable[[], float]
    ) -> None:
        self._reactor = reactor
        self._ports = ports
        self._site = NoWorkerSite(retry_after)
        self._listening: list[Any] = []

    @property
    def answering(self) -> bool:
        return bool(self._listening)

    def start(self) -> None:
        if self._listening:
            return
        for port in self._ports:
            if port.kind != KIND_TCP or port.sock.fileno() < 0:
                continue
            # adoptStreamPort duplicates the descriptor: stopping closes the copy only.
            self._listening.append(
                self._reactor.adoptStreamPort(port.sock.fileno(), port.family, self._site)
            )
        if self._listening:
            log.warn(
                "no worker is serving: answering 503 until one is",
                stow_event="server.no_worker",
            )

    def stop(self) -> None:
        listening, self._listening = self._listening, []
        for port in listening:
            port.stopListening()
