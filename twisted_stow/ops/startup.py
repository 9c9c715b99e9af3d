"""Start-up that fails loudly, in one line: exit status 2, no traceback.

A port already in use used to log ``CannotListenError`` and keep the
process running while it listened on nothing (under systemd it looked
healthy); a missing TLS key or a storage path that is a file gave a
30-line traceback.  Each is now one line naming the option and the problem
on standard error, and exit status 2; twistd logs debug events too, so no
traceback is logged at all (the error's own words name the cause).  Also
here: ``--version`` and the start-up warning about a listener on a
non-loopback address without authentication or without TLS.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any, NoReturn

from twisted.application.internet import StreamServerEndpointService
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from . import metrics
from .health import probe_writable

log = Logger()

# Exit status of a start-up that cannot go on (a usage error, as getopt tools use).
STARTUP_FAILURE_STATUS = 2
HELP_HINT = "Run 'twistd stow --help' for the options."
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def fail(message: str) -> NoReturn:
    """One line on standard error (twistd's real one, even once logging began), exit 2."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"twistd stow: {message}\n{HELP_HINT}\n")
    stream.flush()
    raise SystemExit(STARTUP_FAILURE_STATUS)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    import twisted

    try:
        ours = version("twisted-stow")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        ours = "unknown"
    return f"twisted-stow {ours} (Twisted {twisted.__version__}, Python {sys.version.split()[0]})"


def check_storage(storage: Path) -> None:
    """``--storage`` is a writable directory (created if missing), or exit 2."""
    if storage.exists() and not storage.is_dir():
        fail(f"--storage {storage}: is not a directory")
    try:
        storage.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"--storage {storage}: cannot create the directory: {e.strerror}")
    problem = probe_writable(storage)
    if problem is not None:
        fail(f"--storage {storage}: {problem}")


def endpoint(reactor: Any, description: str, option: str) -> Any:
    """``serverFromString``, a bad description or a missing TLS file being one line."""
    from twisted.internet.endpoints import serverFromString

    try:
        return serverFromString(reactor, description)
    except Exception as e:
        fail(f"{option} {description}: {describe_error(e)}")


def describe_error(error: BaseException) -> str:
    """An exception in a few words: a file error as ``strerror: filename``."""
    strerror = getattr(error, "strerror", None)
    filename = getattr(error, "filename", None)
    if strerror and filename:
        return f"{strerror}: {filename}"
    return str(error) or type(error).__name__


class Listener(StreamServerEndpointService):
    """A listening port that cannot be opened ends the start-up (exit 2)."""

    def __init__(self, endpoint: Any, factory: Any, option: str, description: str) -> None:
        super().__init__(endpoint, factory)
        # Fail inside privilegedStartService instead of logging and running on.
        self._raiseSynchronously = True
        self._option = option
        self._description = description

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            fail(f"{self._option} {self._description}: cannot listen: {describe_error(e)}")


def _interface(description: str) -> str | None:
    """The address a tcp/ssl description binds ("" for every interface); None otherwise."""
    kind, _, rest = description.partition(":")
    if kind.lower() not in ("tcp", "tcp6", "ssl"):
        return None
    for field in rest.split(":")[1:]:
        name, _, value = field.partition("=")
        if name == "interface":
            return value
    return ""


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed(description: str, *, authenticated: bool) -> None:
    """Log a warning for a listener others can reach without authentication or TLS."""
    host = _interface(description)
    if host is None or (host and is_loopback(host)):
        return
    missing = [
        what
        for what, present in (
            ("authentication", authenticated),
            ("TLS", description.lower().startswith("ssl:")),
        )
        if not present
    ]
    if missing:
        log.warn(
            "--listen {description} serves {where} without {missing}: anyone who can reach "
            "it may store",
            description=description,
            where=f"address {host}" if host else "every interface",
            missing=" or ".join(missing),
            stow_event="server.exposed",
        )


class MetricsSite(Site):
    """Serves ``/metrics`` only (its own listener: never on the STOW port)."""


def metrics_site() -> MetricsSite:
    from prometheus_client.twisted import MetricsResource

    root = Resource()
    root.putChild(b"metrics", MetricsResource(metrics.registry()))
    return MetricsSite(root)
