"""Interfaces of the pluggable edges: storage and its part writers.

A writer needs no local file: the header a part starts with is captured as
it streams (``core.dicomheader.HeaderCapture``), so the instance's name is
known before the part ends, and an object store can implement the same
four steps (write, finish, commit, abort) as the filesystem does.
Backpressure is not the writer's business: the ingest side counts the bytes
it handed to ``write`` until their Deferreds fire.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from .core.outcomes import InstanceRef
    from .core.policy import CommitResult


class IPartWriter(Interface):
    """Receives one part's bytes as they arrive and stores them durably.

    Lifecycle: ``write`` any number of times, then ``finish``; once the
    captured header is validated, ``commit``.  ``abort`` may be called at any
    point, any number of times, and removes whatever was written.  Nothing is
    listed as stored before ``commit`` has fired.

    Every byte passes once through the writer, so the writer computes the
    part's SHA-256 where it handles the bytes (the filesystem in its writer
    thread) and exposes it as ``sha256`` once ``finish`` has fired; it keeps
    the digest with the instance when it commits (docs/DESIGN.md,
    "Integrity").
    """

    sha256 = Attribute(
        "bytes | None: the SHA-256 (32 bytes) of every byte written, set before the "
        "Deferred of ``finish`` fires; None until then."
    )

    drainable = Attribute(
        """bool: whether every byte the writer holds will leave memory without more bytes.

        A writer that gathers bytes (the filesystem's 1 MiB batches, an object
        store's 5 MiB parts) waits for more before it writes them; ``Ingest``
        yields its upload's memory window only at a read after which this is
        true, or the window would never come back (``core/budget.py``)."""
    )

    def write(data: bytes | memoryview) -> Deferred[None]:
        """Accept the next bytes of the part.

        The writer may keep a reference to ``data`` until the returned
        Deferred fires, so the caller must not mutate it.  The Deferred fires
        with ``None`` once storage no longer holds those bytes: written, or
        dropped after a failure or an ``abort``.  It never fails: a write
        failure is reported by ``finish``.  This is how a writer reports
        progress; the caller does the flow accounting.
        """

    def finish() -> Deferred[int]:
        """No more data: fires with the part's size in bytes once its data is complete.

        For the filesystem that means the staged bytes are synced to disk;
        a store without rename may only complete the data here and write it
        durably in ``commit``.  Fails with ``StorageFull`` (no room) or
        ``OSError`` (any other storage fault).
        """

    def commit(instance: InstanceRef, *, overwrite: bool) -> Deferred[CommitResult]:
        """Store the finished part under ``instance``'s name, durable and visible.

        Fires with a ``CommitResult`` once the instance is durable under its
        name (for the filesystem: file and every directory it created or
        changed synced); a SOP Instance UID is unique across studies.  Fails
        with ``StorageFull`` or ``OSError``, leaving nothing listed as stored.
        """

    def abort() -> Deferred[None]:
        """Discard the part.  Idempotent; safe at any point, also after ``commit``.

        Fires with ``None`` once nothing of the part remains in storage
        (callers that report the part as failed wait for it; a lost
        connection need not).  Never fails.
        """


class INamedPartWriter(IPartWriter):
    """A writer that wants the instance's name while the part still streams.

    An object store writes a large part at its final key (a multipart upload
    cannot be renamed), so ``Ingest`` tells it as soon as the part's header
    capture is done, which is within ``MAX_HEADER_READ_BYTES``.  Writers that
    stage locally (filesystem, memory) do not provide it and are never told.
    """

    def hold_commit() -> None:
        """``commit`` will wait for the whole body (``--verify-body-digest``): hold
        nothing in memory for it.  Called at most once, right after the writer is
        opened, before any ``write``.  An object store that would keep a small
        part until ``commit`` sends it at ``finish`` instead, or a body of more
        such parts than the upload's memory window would pause for good."""

    def named(instance: InstanceRef | None) -> None:
        """The header is understood: ``instance`` will be ``commit``'s (None: the
        part will not be stored, its bytes may be dropped).  Called at most once,
        and maybe never (the part ended first); ``commit`` still names it."""


class IOneStepPartWriter(IPartWriter):
    """A writer that can finish and commit a part in one storage step.

    The filesystem stages locally and links after the fsync: when the commit
    is decided as the part ends (header valid, no digest to wait for, the
    study policy keeps it), ``Ingest`` asks for both at once, so a small
    instance costs one writer job and one trip back to the reactor.
    """

    def finish_then_commit(
        instance: InstanceRef, *, overwrite: bool
    ) -> tuple[Deferred[int], Deferred[CommitResult]] | None:
        """``finish`` then ``commit`` in one step; None when this part cannot
        (then ``finish`` and ``commit`` as usual)."""


class IStorage(Interface):
    """Where accepted instances are kept."""

    def start() -> None:
        """Prepare the storage (directories, threads, connections) before serving."""

    def stop() -> Deferred[None] | None:
        """Release what ``start`` took once queued operations are done.

        May return a Deferred that fires when that is so (the S3 backend
        closes its connections); the filesystem waits and returns None.
        """

    def open_writer() -> IPartWriter:
        """A writer for one new part."""

    def unavailable() -> str | None:
        """Why the storage cannot take an upload now (a 503 from the headers), or None.

        Cheap and answered from state the storage already keeps (no request
        to the store): it runs on every STOW request at header time.
        """
