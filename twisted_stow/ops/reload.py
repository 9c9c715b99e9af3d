"""SIGHUP: reload the credential files and the TLS certificates, dropping nothing.

Credentials: ``StowService.reload_credentials`` swaps the guard's portal.
TLS: ``serverFromString`` builds an ``SSL4ServerEndpoint`` whose
``CertificateOptions`` is fixed when the port listens, and the TLS wrapper
asks it for a connection per accepted socket.  So the endpoint is given a
``ReloadableTLS`` instead, which hands each new connection to the options
of the latest good parse of the same ``--listen`` description; connections
already open keep their own OpenSSL connection (nothing is dropped).  The
one private attribute touched is the endpoint's ``_sslContextFactory``,
replaced before it listens (Twisted has no public way to change a listening
port's certificate).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from .startup import describe_error

log = Logger()


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """The TLS options of one ``ssl:`` listener, replaceable while it listens."""

    def __init__(self, reactor: Any, description: str, options: Any) -> None:
        self._reactor = reactor
        self.description = description
        self.options = options

    def serverConnectionForTLS(self, protocol: Any) -> Any:
        return self.options.serverConnectionForTLS(protocol)

    def reload(self) -> bool:
        """Read the key and certificate files again; False (old ones kept) if unusable."""
        try:
            endpoint = serverFromString(self._reactor, self.description)
        except Exception as e:
            log.error(
                "SIGHUP: --listen {description}: {error}; the previous certificate stays",
                description=self.description,
                error=describe_error(e),
                stow_event="reload.failed",
            )
            return False
        self.options = endpoint._sslContextFactory
        log.info(
            "SIGHUP: --listen {description}: certificate reloaded",
            description=self.description,
            stow_event="reload.tls",
        )
        return True


def reloadable(reactor: Any, endpoint: Any, description: str) -> ReloadableTLS | None:
    """For an ``ssl:`` endpoint (not yet listening): its reloadable TLS options."""
    if not isinstance(endpoint, SSL4ServerEndpoint):
        return None
    tls = ReloadableTLS(reactor, description, endpoint._sslContextFactory)
    endpoint._sslContextFactory = tls
    return tls


def install(reactor: Any, reloads: list[Callable[[], bool]]) -> None:
    """SIGHUP runs every reload in the reactor thread (call once the reactor runs)."""

    def run() -> None:
        for reload in reloads:
            reload()

    def signalled(number: int, frame: object) -> None:
        # Between two bytecodes of whatever runs: hand over to the reactor.
        reactor.callFromThread(run)

    signal.signal(signal.SIGHUP, signalled)
