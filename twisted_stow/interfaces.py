"""Interfaces of the pluggable edges: storage and its part writers."""

from __future__ import annotations

from zope.interface import Attribute, Interface


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

    def finish() -> object:
        """No more data: returns a Deferred firing with the part size in
        bytes once the staged bytes are synced to disk, or failing with
        ``StorageFull`` or ``OSError``."""

    def commit(instance: object, *, overwrite: bool) -> object:
        """Move the staged part into place for ``instance`` (an InstanceRef).

        Returns a Deferred firing with a ``CommitResult``; durable (file and
        every directory it created or changed synced) when it fires.  Fails
        with ``StorageFull`` or ``OSError``."""

    def abort() -> None:
        """Discard the part: nothing of it remains in storage.  Idempotent."""


class IStorage(Interface):
    """Where accepted instances are kept."""

    def open_writer(flow: object) -> IPartWriter:
        """A writer for one new part; ``flow`` is the upload's ``BytesInFlight``."""
