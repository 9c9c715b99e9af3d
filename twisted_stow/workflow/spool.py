"""The workflow spool: one JSON file per workflow request, written atomically.

Blocking file operations without Twisted: the edges run them in a thread.
The spool is the sink when no broker is configured, and the outbox when one
is: an entry is removed only after the broker confirmed it (amqp.py).

Layout (docs/WORKFLOW.md): ``<spool>/<entry>.json`` where ``<entry>`` is
``<UTC time, 20 digits of ns>-<payload_id>``, so names sort by arrival.
A file under such a name is complete and durable: it is written as
``.tmp-<pid>-<payload_id>``, fsynced, renamed, and the directory fsynced
before ``write`` returns.  Readers skip dot-files.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..durable import fsync_directory, pid_alive

ENTRY_SUFFIX = ".json"
_TEMP_PREFIX = ".tmp-"


class Spool:
    """A directory of durable workflow requests."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory).absolute()

    def open(self) -> None:
        """Blocking: create the directory and remove temp files of dead processes.

        A temp file never renamed belongs to a request that was answered with
        an error (or never answered), so no client was told it is recorded.
        """
        created = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        if created:
            fsync_directory(self.directory.parent)
        for entry in self.directory.iterdir():
            if not entry.name.startswith(_TEMP_PREFIX):
                continue
            pid = entry.name[len(_TEMP_PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
                continue  # another live server sharing the spool is writing it
            with contextlib.suppress(OSError):
                entry.unlink()

    def write(self, name: str, data: bytes) -> Path:
        """Blocking: store ``data`` as entry ``name`` durably; its path.

        Temp file, fsync, rename, fsync of the directory: after a crash the
        entry is either complete under its final name or absent.  Raises
        ``OSError`` (full disk, permissions) with nothing left behind under
        the final name.
        """
        if "/" in name or name.startswith("."):
            raise ValueError(f"not an entry name: {name!r}")
        final = self.directory / f"{name}{ENTRY_SUFFIX}"
        temp = self.directory / f"{_TEMP_PREFIX}{os.getpid()}-{name}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        fsync_directory(self.directory)
        return final

    def pending(self) -> list[Path]:
        """Blocking: complete entries, oldest first."""
        return sorted(
            entry
            for entry in self.directory.iterdir()
            if entry.name.endswith(ENTRY_SUFFIX) and not entry.name.startswith(".")
        )

    @staticmethod
    def read(entry: Path) -> bytes:
        """Blocking: an entry's bytes."""
        return entry.read_bytes()

    def remove(self, entries: list[Path]) -> None:
        """Blocking: delete delivered entries, then make the deletions durable.

        One directory fsync for the batch.  An entry already gone (another
        server sharing the spool delivered it too) is fine.
        """
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        if entries:
            fsync_directory(self.directory)


def entry_name(timestamp_ns: int, payload_id: str) -> str:
    """``<20-digit UTC ns>-<payload_id>``: names that sort by arrival time."""
    return f"{timestamp_ns:020d}-{payload_id}"
