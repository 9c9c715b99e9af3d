"""The multiprocess metrics directory of a multi-worker server, and the sweep of stale ones.

The main process removes its directory when it exits, but a SIGKILL (or a
power cut) leaves it behind, one per crash.  So the directory's name says
whose it is: ``stow-metrics-BOOT-PID-START-RANDOM``, the kernel's boot id,
the main process's pid and its start time (clock ticks since boot, from
``/proc/PID/stat``).  At start-up a server removes every such directory
of its own user whose owner is gone: another boot, no process with that
pid, or a process with that pid that started at another time (the pid was
reused).  A directory a live server uses always matches its owner, so it
is never swept; a name in any other form is left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

PREFIX = "stow-metrics-"
_NAME = re.compile(r"^stow-metrics-([0-9a-f]{8})-(\d+)-(\d+)-[A-Za-z0-9_]+$")


def boot_id() -> str:
    """The first 8 hex digits of this boot's id (a pid means nothing across a reboot)."""
    try:
        text = Path("/proc/sys/kernel/random/boot_id").read_text()
    except OSError:
        return "00000000"
    return text.strip().replace("-", "")[:8]


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if there is none."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold anything.
    fields = stat_line.rpartition(")")[2].split()
    # Field 22 of proc(5); fields[0] here is field 3.
    return int(fields[19])


def make(parent: str | None = None) -> str:
    """Create this process's directory (under the temporary directory by default)."""
    own_start = start_time(os.getpid())
    prefix = f"{PREFIX}{boot_id()}-{os.getpid()}-{own_start}-"
    return tempfile.mkdtemp(prefix=prefix, dir=parent)


def is_stale(name: str, *, boot: str) -> bool:
    """Whether a directory named ``name`` belongs to a server process that is gone."""
    match = _NAME.match(name)
    if match is None:
        return False
    owner_boot, pid, started = match.group(1), int(match.group(2)), int(match.group(3))
    if owner_boot != boot:
        return True
    return start_time(pid) != started


def sweep(parent: str | None = None) -> list[str]:
    """Remove the stale directories of this user under ``parent``; the paths removed."""
    parent = parent or tempfile.gettempdir()
    boot = boot_id()
    uid = os.getuid()
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    for name in names:
        if not name.startswith(PREFIX) or not is_stale(name, boot=boot):
            continue
        path = os.path.join(parent, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        # Another user's directory, or a link planted under our name: not ours.
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            removed.append(path)
    return removed
