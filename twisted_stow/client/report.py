"""The per-instance report (``--report FILE``): one JSON line per file.

Pure.  Each line: ``path``, ``sop_instance_uid`` (null for a skipped file),
``outcome`` (``stored``, ``already-stored``, ``failed`` or ``skipped``),
``reason`` (the FailureReason or WarningReason, or null), ``reason_text``
and ``http_status`` (of the last answer about it, or null).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO


class Outcome(enum.Enum):
    """The final outcome of one file."""

    STORED = "stored"
    ALREADY_STORED = "already-stored"  # skipped because the journal records it
    FAILED = "failed"
    SKIPPED = "skipped"  # not an instance to upload


@dataclass(frozen=True, slots=True)
class Line:
    """One report line."""

    path: Path
    sop_instance_uid: str | None
    outcome: Outcome
    reason: int | None = None
    reason_text: str = ""
    http_status: int | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "path": str(self.path.absolute()),
                "sop_instance_uid": self.sop_instance_uid,
                "outcome": self.outcome.value,
                "reason": self.reason,
                "reason_text": self.reason_text,
                "http_status": self.http_status,
            },
            separators=(",", ":"),
        )


class Report:
    """A report file being written (or nowhere, for ``Report(None)``)."""

    def __init__(self, path: Path | None) -> None:
        self._file: IO[str] | None = None if path is None else open(path, "w", encoding="utf-8")

    def write(self, line: Line) -> None:
        if self._file is not None:
            self._file.write(line.to_json() + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
