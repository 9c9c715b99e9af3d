"""The thread side of one staged part: a file written with ``writev``.

Only the part's ``SerialQueue`` touches a ``StagingFile``, so it needs no
lock.  OS errors meaning "disk full" become ``StorageFull`` (FailureReason
0xA700); every other one stays an ``OSError`` (0x0110).
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

from ..core.policy import StorageFull

# Above this many buffers in one batch (tiny HTTP chunks), the writer thread
# joins them into one: copying about a MiB costs less than walking thousands
# of iovecs.  A batch of ordinary 64 KiB chunks holds 16 and is not copied.
_JOIN_ABOVE_BUFFERS = 64

# Errors that mean "the disk is full" rather than "storage is broken"; the
# first maps to FailureReason 0xA700, everything else to 0x0110.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

# The extended attribute holding a stored file's SHA-256 (32 raw bytes).  On
# the inode rather than in a file of its own: it is made durable by the
# staged file's fsync, and moves with the inode through every link and
# replace of a commit, so no overwrite or crash can pair an instance with
# another's digest.  ``stow-verify`` reads it.
DIGEST_XATTR = "user.stow.sha256"
# Filesystems without user extended attributes (some tmpfs, NFSv3): the
# digest is still logged and in the workflow request, only not kept on disk.
_NO_XATTR_ERRNOS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM})


def _iov_max() -> int:
    """The kernel's limit on buffers per writev (more fails with EINVAL)."""
    try:
        value = os.sysconf("SC_IOV_MAX")
    except (ValueError, OSError):
        value = -1
    # -1 means "indeterminate"; 16 is POSIX's guaranteed minimum
    # (_XOPEN_IOV_MAX).  Linux reports 1024.
    return value if value > 0 else 16


_IOV_MAX = _iov_max()


def translate_os_error(exc: OSError) -> Exception:
    if exc.errno in _FULL_ERRNOS:
        return StorageFull(os.strerror(exc.errno or 0))
    return exc


class StagingFile:
    """Thread-side state of one staged part.  Only touched by its queue."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.size = 0
        # Fed in the writer thread, which touches every batch anyway: the
        # digest costs no extra pass or thread hop, and hashlib releases the
        # GIL for buffers above 2 KiB, so the reactor runs meanwhile.
        self._sha256 = hashlib.sha256()
        self.sha256: bytes | None = None  # set by sync_and_close
        # The first write error; later writes and the final sync re-raise it,
        # so a part with a hole in it can never be reported as staged.
        self.error: Exception | None = None

    def hash(self, buffers: list[bytes | memoryview]) -> None:
        """Feed the digest (a part's own hash queue, in batch order)."""
        if len(buffers) > _JOIN_ABOVE_BUFFERS:
            buffers = [b"".join(buffers)]  # one call, not thousands (tiny chunks)
        for buffer in buffers:
            self._sha256.update(buffer)

    def write(self, buffers: list[bytes | memoryview], *, hash: bool = True) -> None:
        """Append ``buffers``; feed the digest too unless ``hash`` is False (the
        caller hashes them on another queue)."""
        if self.error is not None:
            raise self.error
        try:
            if self.fd is None:
                # O_EXCL: a name collision must never clobber another part.
                self.fd = os.open(
                    self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
                )
            if len(buffers) > _JOIN_ABOVE_BUFFERS:
                # Many tiny chunks (a client sending 20-byte HTTP chunks puts
                # ~50,000 in a batch): writev refuses more than IOV_MAX
                # buffers with EINVAL, and one copy is cheaper anyway.
                buffers = [b"".join(buffers)]
            if hash:
                for buffer in buffers:
                    self._sha256.update(buffer)
            while buffers:
                # Still capped: IOV_MAX may be below the join threshold.
                written = os.writev(self.fd, buffers[:_IOV_MAX])
                self.size += written
                buffers = _drop_written(buffers, written)
        except OSError as e:
            self.error = translate_os_error(e)
            raise self.error from e

    def sync_and_close(self, last: list[bytes | memoryview] | None = None) -> int:
        """Write ``last`` (the part's final batch), set the digest, fsync, close."""
        try:
            if self.error is not None:
                raise self.error
            if last or self.fd is None:  # an empty part still gets a (empty) file
                self.write(last or [])
            assert self.fd is not None
            self.sha256 = self._sha256.digest()
            _set_digest(self.fd, self.sha256)
            # One fsync makes data and digest durable together.
            os.fsync(self.fd)
        except OSError as e:
            raise translate_os_error(e) from e
        finally:
            self._close()
        return self.size

    def discard(self) -> None:
        # Anything queued behind the discard (a sync waiting for the hash
        # queue) must fail, not recreate the file under its staging name.
        self.error = OSError(errno.ECANCELED, "the part was discarded", str(self.path))
        self._close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def _set_digest(fd: int, digest: bytes) -> None:
    """Keep ``digest`` on the file, unless the filesystem has no user xattrs."""
    try:
        os.setxattr(fd, DIGEST_XATTR, digest)
    except OSError as e:
        if e.errno not in _NO_XATTR_ERRNOS:
            raise


def _drop_written(buffers: list[bytes | memoryview], written: int) -> list[bytes | memoryview]:
    """What is left of ``buffers`` after a (possibly short) writev."""
    done = 0
    while done < len(buffers) and written >= len(buffers[done]):
        written -= len(buffers[done])
        done += 1
    rest = buffers[done:]
    if written and rest:
        rest[0] = memoryview(rest[0])[written:]
    return rest
