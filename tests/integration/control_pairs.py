"""Main and worker ends of the control connection over a real UNIX socketpair, in one reactor.

As the main process connects each worker: ``socket.socketpair()``, each end
adopted with ``reactor.adoptStreamConnection`` (which takes a duplicate of the
descriptor, so ours is closed at once).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from twisted.internet.protocol import Factory, Protocol

from twisted_stow.workers.control import MainControl, WorkerControl, main_side, worker_side
from twisted_stow.workers.shared import SharedState


class _One(Factory):
    """Builds the one protocol instance it was given."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.protocol_instance


def adopt(reactor: Any, end: socket.socket, protocol: Protocol) -> None:
    reactor.adoptStreamConnection(end.fileno(), socket.AF_UNIX, _One(protocol))
    end.close()


@dataclass
class Pair:
    main: MainControl
    worker: WorkerControl


def connect(reactor: Any, shared: SharedState, worker_id: str, **worker: Any) -> Pair:
    """One worker's control connection to ``shared``'s main process, both ends adopted."""
    main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pair = Pair(main_side(shared, worker_id), worker_side(reactor))
    for name, value in worker.items():
        setattr(pair.worker, name, value)
    adopt(reactor, main_end, pair.main)
    adopt(reactor, worker_end, pair.worker)
    return pair


class Silent(Protocol):
    """A main end that reads every message and never answers (a wedged main process)."""

    def dataReceived(self, data: bytes) -> None:
        pass


def connect_to_silence(reactor: Any, **worker: Any) -> tuple[WorkerControl, Silent]:
    """A worker end whose main process never answers, and that main end."""
    main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    control, silent = worker_side(reactor), Silent()
    for name, value in worker.items():
        setattr(control, name, value)
    adopt(reactor, main_end, silent)
    adopt(reactor, worker_end, control)
    return control, silent
