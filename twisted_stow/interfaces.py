"""Interfaces of the pluggable edges: storage and its part writers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from .core.outcomes import InstanceRef
    from .core.policy import CommitResult
    from .flow import BytesInFlight


class IPartWriter(Interface):
    """Receives one part's bytes as they arrive and stages them durably.

    Lifecycle: ``write`` any number of times, then ``finish``; after the
    staged bytes are validated, ``commit``.  ``abort`` may be called at any
    point, any number of times, and removes whatever was staged.
    """

    staged_path = Attribute(
        "Local path of the staged bytes once finish() has fired (for validation)."
    )

    def write(data: bytes | memoryview) -> None:
        """Accept the next bytes of the part; the writer may keep a reference
        to ``data`` until it is written, so the caller must not mutate it."""

    def finish() -> Deferred[int]:
        """No more data: returns a Deferred firing with the part size in
        bytes once the staged bytes are synced to disk, or failing with
        ``StorageFull`` or ``OSError``."""

    def commit(instance: InstanceRef, *, overwrite: bool) -> Deferred[CommitResult]:
        """Move the staged part into place for ``instance`` (an InstanceRef).

        Returns a Deferred firing with a ``CommitResult``; durable (file and
        every directory it created or changed synced) when it fires.  Fails
        with ``StorageFull`` or ``OSError``."""

    def abort() -> Deferred[None]:
        """Discard the part.  Idempotent; safe at any point.

        The Deferred fires once nothing of the part remains in storage (callers
        that report the part as failed wait for it; a lost connection need not).
        """


class IStorage(Interface):
    """Where accepted instances are kept."""

    def open_writer(flow: BytesInFlight) -> IPartWriter:
        """A writer for one new part; ``flow`` is the upload's ``BytesInFlight``."""
