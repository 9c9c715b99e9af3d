"""Small filesystem facts that durable writes rest on (no Twisted).

Shared by instance storage, the workflow spool and the auth files: each
makes a rename durable by syncing its directory, and each tells a crashed
writer's leftovers from a live one's by the writer's pid.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_directory(path: Path) -> None:
    """Make a directory's entries (new names, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (ours to signal or not)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process / no such pid
        return False
    except PermissionError:
        return True
    return True
