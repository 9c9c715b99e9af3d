"""The resume journal: one JSON line per instance a server acknowledged.

Pure (plain file I/O).  Each line is ``{"path", "size", "mtime_ns",
"sop_instance_uid"}``; a re-run skips every file whose path, size and mtime
are journaled, without reading it.  Lines are appended and flushed once per
answer, so a client that is killed loses at most the answers in flight; a
last line cut short by the kill is ignored when the journal is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from .files import FileKey, Instance


def read_journal(path: Path) -> dict[FileKey, str]:
    """The journaled files → their SOP Instance UIDs; ``{}`` when ``path`` does not exist.

    Lines that are not a complete entry (a cut-off last line) are skipped.
    """
    entries: dict[FileKey, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return entries
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            key = FileKey(str(entry["path"]), int(entry["size"]), int(entry["mtime_ns"]))
            entries[key] = str(entry["sop_instance_uid"])
        except (ValueError, KeyError, TypeError):
            continue
    return entries


def journal_line(instance: Instance) -> str:
    """The journal line (with its newline) of an acknowledged instance."""
    key = instance.key
    entry = {
        "path": key.path,
        "size": key.size,
        "mtime_ns": key.mtime_ns,
        "sop_instance_uid": instance.sop_instance_uid,
    }
    return json.dumps(entry, separators=(",", ":")) + "\n"


class Journal:
    """An open journal file, appended to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done = read_journal(path)
        self._file: IO[str] = open(path, "a", encoding="utf-8")
        # A cut-off last line would glue onto the next entry: start a fresh line.
        if self._file.tell() and not path.read_bytes().endswith(b"\n"):
            self._file.write("\n")

    def __contains__(self, key: FileKey) -> bool:
        return key in self.done

    def record(self, instances: Iterable[Instance]) -> None:
        """Append the acknowledged ``instances`` and flush (one write per answer)."""
        text = "".join(journal_line(instance) for instance in instances)
        if text:
            self._file.write(text)
            self._file.flush()

    def close(self) -> None:
        self._file.close()
