"""``stow-verify``: re-read stored instances and report any whose bytes no longer match.

    stow-verify STORAGE_DIR [--quiet]
    stow-verify s3://BUCKET[/PREFIX] [--s3-endpoint URL] [--s3-region REGION] [--quiet]

Directory: walks the SOP index (``.sop-index/<SOPInstanceUID>``, one symlink
per stored instance), re-reads each file the index names and compares its
SHA-256 with the one the server computed while it streamed in and kept on the
inode (``staging.DIGEST_XATTR``).

Object store (the same ``--storage``, ``--s3-endpoint`` and ``--s3-region``
as the server, credentials from the same standard chain): lists the claims
``PREFIX/.sop-index/<SOPInstanceUID>``, each holding its object's key,
SHA-256 and size as the server computed them while the object streamed in,
re-reads each object (GetObject, streamed through the hash) and compares.

Prints one line per problem:

    MISMATCH <path> stored <hex> now <hex>
    NO-DIGEST <path>          (stored before digests were kept, or on a filesystem without xattrs)
    UNREADABLE <path>: <error>

and a summary on stderr.  Exit status 0 when every instance matched, 1 when
any mismatched or could not be read, 2 for a usage error.  An index entry
whose file is gone (a crash between index and link, which reads as absent;
in S3, a claim whose object was never completed) is not an instance and is
skipped.  Read-only, and safe beside a running server: an instance being
overwritten meanwhile may report NO-DIGEST or UNREADABLE once, never a false
MISMATCH on disk (the digest lives on the inode it describes); in S3 the
claim is rewritten just before its object, so an instance overwritten during
the read may report one MISMATCH that a second run clears.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..core.config import s3_target
from .filesystem import INDEX_DIR_NAME, indexed_file
from .staging import DIGEST_XATTR

if TYPE_CHECKING:
    from .s3client import BlockingS3

# Read in pieces of this size: large instances (hundreds of MiB) stream
# through the hash without being held.
READ_BYTES = 1024 * 1024
# S3: how long one read of an object may stall before it counts as UNREADABLE.
READ_TIMEOUT_SECONDS = 60.0


class Readable(Protocol):
    """A file or an HTTP response: anything that reads into a buffer."""

    def readinto(self, buffer: bytearray, /) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Finding:
    """One instance that did not verify: what kind of problem, where, and the detail."""

    kind: str  # "MISMATCH", "NO-DIGEST", "UNREADABLE"
    path: Path | str  # a file, or an object's s3://BUCKET/KEY
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
            target = indexed_file(index, entry.path)
            if target is not None:
                yield target


def stream_sha256(f: Readable) -> tuple[bytes, int]:
    """SHA-256 and length of what ``f`` reads to its end, one buffer reused."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(READ_BYTES)
    view = memoryview(buffer)
    while count := f.readinto(buffer):
        digest.update(view[:count])
        size += count
    return digest.digest(), size


def file_sha256(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return stream_sha256(f)[0]


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
    return _tally((check(path) for path in stored_files(root)), out)


class NotAnInstance(Exception):
    """The claim or its object is gone: nothing was stored there to check."""


def check_object(s3: BlockingS3, claim_key: str) -> Finding | None:
    """None when the object a claim names still hashes to the claim's SHA-256 and size.

    Raises ``NotAnInstance`` when the claim or its object does not exist.
    """
    from .s3client import answer_of, error_code

    location = s3.location
    status, body = answer_of(s3.open("GET", claim_key))
    if status == 404:
        raise NotAnInstance(claim_key)
    if status != 200:
        code, message = error_code(body)
        return Finding("UNREADABLE", location.uri(claim_key), f": HTTP {status} {code} {message}")
    key, sha, size, *_ = [*body.decode(errors="replace").split("\n"), "", "", ""]
    where = location.uri(key or claim_key)
    if not key or len(sha) != 64:
        return Finding("NO-DIGEST", where)
    response = s3.open("GET", key)
    if response.status == 404:
        response.read()
        raise NotAnInstance(key)  # claimed, never completed (a crash between claim and object)
    if response.status != 200:
        code, message = error_code(response.read())
        return Finding("UNREADABLE", where, f": HTTP {response.status} {code} {message}")
    actual, length = stream_sha256(response)
    if actual.hex() != sha or str(length) != size:
        return Finding("MISMATCH", where, f" stored {sha} now {actual.hex()}")
    return None


def verify_s3(s3: BlockingS3, out: list[Finding] | None = None) -> Summary:
    """Check every claimed instance under the location's prefix, as ``verify`` does."""
    from .s3 import INDEX_DIR

    def findings() -> Iterator[Finding | None]:
        for claim_key in s3.list_keys(s3.location.key(INDEX_DIR)):
            try:
                yield check_object(s3, claim_key)
            except NotAnInstance:
                continue
            except OSError as e:  # the connection dropped mid-object: say so, go on
                yield Finding("UNREADABLE", s3.location.uri(claim_key), f": {e}")
                s3.close()  # http.client reconnects on the next request

    return _tally(findings(), out)


def _tally(found: Iterator[Finding | None], out: list[Finding] | None) -> Summary:
    """Count the checked instances; print each finding (and keep it in ``out``)."""
    summary = Summary()
    for finding in found:
        summary.checked += 1
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
    parser.add_argument(
        "storage", help="the server's --storage: a directory or s3://BUCKET[/PREFIX]"
    )
    parser.add_argument("--s3-endpoint", help="as the server's (default: AWS's of the region)")
    parser.add_argument("--s3-region", help="as the server's (default: us-east-1)")
    parser.add_argument("--quiet", action="store_true", help="no summary line")
    args = parser.parse_args(argv)
    try:
        target = s3_target(args.storage, args.s3_endpoint, args.s3_region)
    except ValueError as e:
        print(f"stow-verify: {e}", file=sys.stderr)
        return 2
    if target is None:
        root = Path(args.storage)
        if not (root / INDEX_DIR_NAME).is_dir():
            print(f"stow-verify: {root} has no {INDEX_DIR_NAME}/", file=sys.stderr)
            return 2
        summary = verify(root)
    else:
        from ..site import s3_location
        from .s3client import BlockingS3, S3Error, load_credentials

        credentials = load_credentials(custom_endpoint=target.endpoint is not None)
        if credentials is None:
            print(f"stow-verify: no S3 credentials for {target.uri}", file=sys.stderr)
            return 2
        s3 = BlockingS3(s3_location(target), credentials, timeout=READ_TIMEOUT_SECONDS)
        try:
            summary = verify_s3(s3)
        except (S3Error, OSError) as e:
            print(f"stow-verify: cannot list {target.uri}: {e}", file=sys.stderr)
            return 2
        finally:
            s3.close()
    if not args.quiet:
        print(
            f"stow-verify: {summary.checked} instances, {summary.matched} match, "
            f"{summary.findings} problems",
            file=sys.stderr,
        )
    return 1 if summary.findings else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
