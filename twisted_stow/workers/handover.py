"""The listening sockets the main process binds and hands to its workers.

Twisted's documented way to share a port between processes: one process
binds and listens, passes the socket's descriptor to its children, and each
child ``adoptStreamPort``s it.  So one ``--listen`` is one socket whatever
the worker count (port 0 too: the kernel picks the port once), and the
kernel queues connections on it for whichever worker accepts first.

The main process binds the plain TCP socket for ``tcp:``, ``tcp6:`` and
``ssl:`` (a worker wraps an ``ssl:`` socket in TLS itself, with its own,
reloadable, certificate options).  The address, port and backlog are read
from the endpoint ``serverFromString`` parsed, so the descriptions mean
exactly what they mean with one process; those three names are private to
Twisted's endpoints and read here only.  Other endpoint kinds cannot be
handed over (``problem``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
)

# What a worker needs to know about each inherited socket.
KIND_TCP = "tcp"
KIND_TLS = "tls"


@dataclass
class HandedPort:
    """One bound and listening socket of a ``--listen`` description."""

    description: str
    sock: socket.socket
    family: int
    kind: str  # KIND_TCP or KIND_TLS

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def log_prefix(self) -> str:
        """What twisted.web's Site would log for this port ("StowSite (TLS)")."""
        return "StowSite (TLS)" if self.kind == KIND_TLS else "StowSite"


def problem(endpoint: Any) -> str | None:
    """Why ``endpoint`` cannot be shared with worker processes, or None."""
    if isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint | SSL4ServerEndpoint):
        return None
    return (
        f"a {type(endpoint).__name__} cannot be shared with worker processes "
        "(tcp:, tcp6: and ssl: can)"
    )


def bind(description: str, endpoint: Any) -> HandedPort:
    """Bind and listen as ``endpoint.listen`` would, without serving; raises ``OSError``."""
    interface: str = endpoint._interface
    port: int = endpoint._port
    backlog: int = endpoint._backlog
    if isinstance(endpoint, TCP6ServerEndpoint):
        family = socket.AF_INET6
        address: tuple[Any, ...] = socket.getaddrinfo(
            interface or "::", port, socket.AF_INET6, socket.SOCK_STREAM
        )[0][4]
    else:
        family = socket.AF_INET
        address = (interface, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As Twisted's own ports: a restart right after a crash can bind
        # while the old connections sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        # adoptStreamPort needs it; the flag belongs to the open file, which
        # every worker's copy shares.
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    kind = KIND_TLS if isinstance(endpoint, SSL4ServerEndpoint) else KIND_TCP
    return HandedPort(description, sock, family, kind)
