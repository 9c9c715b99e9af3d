"""The repository stands on its own: no file points at documents outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The background documents the project started from live beside the
# repository, not in it; a clone has none of them.
_OUTSIDE = re.compile(r"\.\./shared\b|\b(?:SPEC|TWISTED|PEERS|STYLE)\.md\b")
_TEXT_SUFFIXES = {".py", ".md", ".c", ".ini", ".toml", ".cfg", ".txt", ".json", ""}


def tracked_files() -> list[Path]:
    """The files git tracks (a clean clone's files), text ones only."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout.decode()
    paths = [REPO_ROOT / name for name in listed.split("\0") if name]
    return [path for path in paths if path.suffix in _TEXT_SUFFIXES and path.is_file()]


def test_no_tracked_file_points_outside_the_repository() -> None:
    """No tracked text file names the background documents (broken links in a clone)."""
    offenders = []
    for path in tracked_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if _OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()[:80]}")
    assert offenders == []
