"""``stow-verify``: re-read stored instances and report any whose bytes no longer match.

    stow-verify STORAGE_DIR [--quiet]

Walks the SOP index (``.sop-index/<SOPInstanceUID>``, one symlink per stored
instance), re-reads each file the index names and compares its SHA-256 with
the one the server computed while it streamed in and kept on the inode
(``staging.DIGEST_XATTR``).  Prints one line per problem:

    MISMATCH <path> stored <hex> now <hex>
    NO-DIGEST <path>          (stored before digests were kept, or on a filesystem without xattrs)
    UNREADABLE <path>: <error>

and a summary on stderr.  Exit status 0 when every instance matched, 1 when
any mismatched or could not be read, 2 for a usage error.  An index entry
whose file is gone (a crash between index and link, which reads as absent)
is not an instance and is skipped.  Read-only, and safe beside a running
server: an instance being overwritten meanwhile may report NO-DIGEST or
UNREADABLE once, never a false MISMATCH (the digest lives on the inode it
describes).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .filesystem import INDEX_DIR_NAME
from .staging import DIGEST_XATTR

# Read in pieces of this size: large instances (hundreds of MiB) stream
# through the hash without being held.
READ_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Finding:
    """One instance that did not verify: what kind of problem, where, and the detail."""

    kind: str  # "MISMATCH", "NO-DIGEST", "UNREADABLE"
    path: Path
    detail: str = ""

    def line(self) -> str:
        return f"{self.kind} {self.path}{self.detail}"


@dataclass(slots=True)
class Summary:
    checked: int = 0
    matched: int = 0
    findings: int = 0


def stored_files(root: Path) -> Iterator[Path]:
    """Every stored instance the index names (dangling entries and temporaries skipped)."""
    index = root / INDEX_DIR_NAME
    with os.scandir(index) as entries:
        for entry in entries:
            if entry.name.endswith(".tmp") or not entry.is_symlink():
                continue
            target = Path(os.path.normpath(index / os.readlink(entry.path)))
            if target.is_file():
                yield target


def file_sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(READ_BYTES)
        view = memoryview(buffer)
        while count := f.readinto(buffer):
            digest.update(view[:count])
    return digest.digest()


def check(path: Path) -> Finding | None:
    """None when ``path``'s bytes still hash to the digest stored with it."""
    try:
        kept = os.getxattr(path, DIGEST_XATTR)
    except OSError:
        return Finding("NO-DIGEST", path)
    try:
        actual = file_sha256(path)
    except OSError as e:
        return Finding("UNREADABLE", path, f": {e.strerror}")
    if actual != kept:
        return Finding("MISMATCH", path, f" stored {kept.hex()} now {actual.hex()}")
    return None


def verify(root: Path, out: list[Finding] | None = None) -> Summary:
    """Check every stored instance under ``root``; findings are printed (and kept in ``out``)."""
    summary = Summary()
    for path in stored_files(root):
        summary.checked += 1
        finding = check(path)
        if finding is None:
            summary.matched += 1
            continue
        summary.findings += 1
        print(finding.line(), flush=True)
        if out is not None:
            out.append(finding)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stow-verify", description=__doc__.split("\n\n")[0].strip()
    )
    parser.add_argument("storage", type=Path, help="the server's --storage directory")
    parser.add_argument("--quiet", action="store_true", help="no summary line")
    args = parser.parse_args(argv)
    if not (args.storage / INDEX_DIR_NAME).is_dir():
        print(f"stow-verify: {args.storage} has no {INDEX_DIR_NAME}/", file=sys.stderr)
        return 2
    summary = verify(args.storage)
    if not args.quiet:
        print(
            f"stow-verify: {summary.checked} instances, {summary.matched} match, "
            f"{summary.findings} problems",
            file=sys.stderr,
        )
    return 1 if summary.findings else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
