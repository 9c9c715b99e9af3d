"""``/healthz`` and ``/readyz``: liveness, and whether the server can store now.

Readiness runs its checks on every poll (a load balancer polls about once a
second): the storage directory is writable (a small file created and
removed under it, in a thread: as root ``os.access`` says yes for almost
anything), its free space is above ``--min-free-space``, and the server is
not draining.  Each check answers a problem in words or None.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from ..core.errors import RetryLater
from ..deferreds import RunInThread

HEALTH_PATHS = ("/healthz", "/readyz")
# How soon a client refused for lack of space should try again.
SPACE_RETRY_AFTER_SECONDS = 60
_PROBE_PREFIX = ".ready-probe-"


class InsufficientStorage(RetryLater):
    """Free space below ``--min-free-space`` (RFC 4918 §11.5)."""

    status = 507
    title = "Insufficient Storage"


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system of ``path``."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


class FreeSpace:
    """``--min-free-space``: refuses uploads from the headers below it."""

    def __init__(self, path: Path, minimum_bytes: int | None) -> None:
        self.path = path
        self.minimum_bytes = minimum_bytes

    def problem(self) -> str | None:
        if self.minimum_bytes is None:
            return None
        try:
            free = free_bytes(self.path)
        except OSError as e:
            return f"cannot read the free space of {self.path}: {e.strerror}"
        if free < self.minimum_bytes:
            return (
                f"{free} bytes free under {self.path}, below --min-free-space {self.minimum_bytes}"
            )
        return None

    def check(self) -> None:
        """Raise ``InsufficientStorage`` below the threshold (one statvfs, ~µs)."""
        problem = self.problem()
        if problem is not None:
            raise InsufficientStorage(problem, SPACE_RETRY_AFTER_SECONDS)


def probe_writable(directory: Path) -> str | None:
    """Blocking: create, write, fsync and remove a small file under ``directory``."""
    probe = directory / f"{_PROBE_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"ready")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"{directory} is not writable: {e.strerror}"
    return None


class Readiness:
    """The checks of ``/readyz``, by name."""

    def __init__(
        self,
        run_in_thread: RunInThread,
        *,
        storage_dir: Path | None,
        space: FreeSpace,
        draining: Callable[[], bool],
        unavailable: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._run_in_thread = run_in_thread
        self._storage_dir = storage_dir
        # The other backends' check: their own cheap health (IStorage.unavailable).
        self._unavailable = unavailable
        self._space = space
        self._draining = draining

    async def checks(self) -> dict[str, str | None]:
        """Each check's problem, None when it passes."""
        results: dict[str, str | None] = {}
        results["draining"] = "the server is draining" if self._draining() else None
        if self._storage_dir is not None:
            results["storage"] = await self._run_in_thread(probe_writable, self._storage_dir)
        else:
            results["storage"] = self._unavailable()
        results["free_space"] = self._space.problem()
        return results


def readiness_answer(results: dict[str, str | None]) -> tuple[int, bytes]:
    """200 with every check "ok", or 503 naming the ones that failed."""
    failed = {name: problem for name, problem in results.items() if problem is not None}
    body = {
        "status": "ready" if not failed else "not ready",
        "checks": {name: problem or "ok" for name, problem in results.items()},
    }
    return (200 if not failed else 503), json.dumps(body).encode() + b"\n"


ALIVE_BODY = b'{"status": "alive"}\n'
