"""The shared SOP instance index: which node stores which UID, and what it stored.

``IndexedStorage`` wraps any ``IStorage`` (S3 for a cluster, the filesystem
for one node) and puts one decision in front of each commit: the index row
of the SOP Instance UID, whose primary key decides races between every
process on every node (docs/CLUSTER.md).

At ``commit`` the part's bytes are complete, so its size and SHA-256 are
known and the claim can carry them:

1. ``INSERT ... ON CONFLICT DO NOTHING``: a new UID becomes ``pending`` under
   this node's lease (one round trip). The winner commits to the inner
   storage, then marks the row ``stored`` (one round trip), and only then is
   the instance listed as stored.
2. The UID has a row (read under ``FOR UPDATE`` in one transaction):
   ``stored`` with the same SHA-256 → an identical duplicate, nothing is
   written; other bytes → 0x0111, or with ``--duplicates overwrite`` the row
   is taken (pending again) and the object replaced; ``pending`` with an
   expired lease (its node died mid-commit) → taken over, the object written
   again; ``pending`` under a live lease → the other upload is being
   committed right now: wait for it (up to ``BUSY_WAIT_SECONDS``) and
   decide against what it became.

A loser never touches the inner storage's object, so two nodes never both
write one UID's object (no mixed object), and the winner's object is
visible before its row says stored. Any database failure fails that part
0x0110 (``IndexUnavailable`` is an ``OSError``); a failed inner commit
gives the row back.
"""

from __future__ import annotations

import os
import socket
import uuid
from enum import Enum
from typing import Any

import psycopg
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import alsoProvides, implementer

from ..core.outcomes import InstanceRef
from ..core.policy import CommitResult
from ..interfaces import INamedPartWriter, IPartWriter, IStorage
from .database import Database, IndexUnavailable

log = Logger()

# A pending row's lease: longer than any commit can take (the S3 client's
# 60 s request timeout, twice: the claim object and the completion), so a
# live node never loses its row; short enough that a node that died
# mid-commit blocks its UIDs only minutes.
LEASE_SECONDS = 300
# How long a second upload of a UID waits for the first one's commit to end
# before it fails 0x0110 (the client may retry); S3's own racing-retry wait
# is as long.
BUSY_WAIT_SECONDS = 10.0
BUSY_POLL_FIRST_SECONDS = 0.02
BUSY_POLL_MAX_SECONDS = 0.5


def node_id() -> str:
    """This process's name in the index: host, pid and a per-run token."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Claim(Enum):
    """What the index said about a UID this upload wants to commit."""

    OWN = "own"  # a new row, pending under our lease
    TAKEN_OVER = "taken-over"  # an expired or overwritten row, now ours
    IDENTICAL = "identical"  # stored with the same bytes
    CONFLICT = "conflict"  # stored with other bytes, no overwrite
    BUSY = "busy"  # pending under another live lease


_INSERT = """
    INSERT INTO stow_instances (sop_instance_uid, study_instance_uid, series_instance_uid,
        object_key, size_bytes, sha256, state, node, lease_expires)
    VALUES (%s, %s, %s, %s, %s, %s, 'pending', %s, now() + make_interval(secs => %s))
    ON CONFLICT (sop_instance_uid) DO NOTHING
    RETURNING 1
"""

_TAKE = """
    UPDATE stow_instances SET study_instance_uid = %s, series_instance_uid = %s,
        object_key = %s, size_bytes = %s, sha256 = %s, state = 'pending', node = %s,
        lease_expires = now() + make_interval(secs => %s), updated = now()
    WHERE sop_instance_uid = %s
"""


def claim(
    conn: psycopg.Connection[Any],
    instance: InstanceRef,
    key: str,
    size: int,
    sha256: bytes,
    node: str,
    overwrite: bool,
    alone_here: bool,
) -> Claim:
    """Blocking: the index's decision for committing ``instance`` with these bytes.

    ``alone_here``: no other upload of this process is committing the UID,
    so a pending row of this node is a leftover of a commit that failed
    (its give-back lost with the database) and is taken over at once.
    """
    row_values = (
        instance.study_instance_uid,
        instance.series_instance_uid,
        key,
        size,
        sha256,
    )
    while True:
        inserted = conn.execute(
            _INSERT, (instance.sop_instance_uid, *row_values, node, LEASE_SECONDS)
        ).fetchone()
        if inserted is not None:
            return Claim.OWN
        with conn.transaction():
            row = conn.execute(
                "SELECT state, sha256, lease_expires < now(), node = %s FROM stow_instances "
                "WHERE sop_instance_uid = %s FOR UPDATE",
                (node, instance.sop_instance_uid),
            ).fetchone()
            if row is None:
                continue  # its commit failed and gave it back meanwhile: insert again
            state, stored_sha256, expired, ours = row
            if state == "stored":
                if bytes(stored_sha256) == sha256:
                    return Claim.IDENTICAL
                if not overwrite:
                    return Claim.CONFLICT
            elif not (expired or (ours and alone_here)):
                return Claim.BUSY
            conn.execute(_TAKE, (*row_values, node, LEASE_SECONDS, instance.sop_instance_uid))
            return Claim.TAKEN_OVER


def mark_stored(conn: psycopg.Connection[Any], sop_instance_uid: str, node: str) -> bool:
    """Blocking: our pending row is stored now; False if it is no longer ours."""
    row = conn.execute(
        "UPDATE stow_instances SET state = 'stored', lease_expires = NULL, updated = now() "
        "WHERE sop_instance_uid = %s AND node = %s AND state = 'pending' RETURNING 1",
        (sop_instance_uid, node),
    ).fetchone()
    return row is not None


def give_back(conn: psycopg.Connection[Any], sop_instance_uid: str, node: str, new: bool) -> None:
    """Blocking: our commit failed. A row we created goes; one we took over
    stays pending with an expired lease, so the next upload takes it over
    (whatever the failed commit left in the store gets replaced)."""
    if new:
        conn.execute(
            "DELETE FROM stow_instances WHERE sop_instance_uid = %s AND node = %s "
            "AND state = 'pending'",
            (sop_instance_uid, node),
        )
    else:
        conn.execute(
            "UPDATE stow_instances SET lease_expires = now() "
            "WHERE sop_instance_uid = %s AND node = %s AND state = 'pending'",
            (sop_instance_uid, node),
        )


class SopIndex:
    """The index operations of one node, as Deferreds."""

    def __init__(self, database: Database, node: str | None = None) -> None:
        self.database = database
        self.node = node or node_id()
        # UID → uploads of this process between their claim and its end.
        self._committing: dict[str, int] = {}

    def enter(self, sop_instance_uid: str) -> None:
        self._committing[sop_instance_uid] = self._committing.get(sop_instance_uid, 0) + 1

    def leave(self, sop_instance_uid: str) -> None:
        left = self._committing[sop_instance_uid] - 1
        if left:
            self._committing[sop_instance_uid] = left
        else:
            del self._committing[sop_instance_uid]

    def claim(
        self, instance: InstanceRef, key: str, size: int, sha256: bytes, overwrite: bool
    ) -> Deferred[Claim]:
        """Call between ``enter`` and ``leave`` of the UID."""
        alone = self._committing.get(instance.sop_instance_uid, 0) <= 1
        return self.database.run(claim, instance, key, size, sha256, self.node, overwrite, alone)

    def mark_stored(self, sop_instance_uid: str) -> Deferred[bool]:
        return self.database.run(mark_stored, sop_instance_uid, self.node)

    def give_back(self, sop_instance_uid: str, *, new: bool) -> Deferred[None]:
        return self.database.run(give_back, sop_instance_uid, self.node, new)


def object_key(storage: IStorage, instance: InstanceRef) -> str:
    """Where ``instance`` lives in ``storage``: the S3 key, else its relative path."""
    instance_key = getattr(storage, "instance_key", None)
    if instance_key is not None:
        return str(instance_key(instance))
    return (
        f"{instance.study_instance_uid}/{instance.series_instance_uid}/"
        f"{instance.sop_instance_uid}.dcm"
    )


@implementer(IStorage)
class IndexedStorage:
    """``inner`` with every commit decided by the shared index first."""

    def __init__(self, inner: IStorage, index: SopIndex, reactor: Any) -> None:
        self.inner = inner
        self.index = index
        self._reactor = reactor

    def start(self) -> None:
        self.index.database.start()
        self.inner.start()

    def stop(self) -> Deferred[None] | None:
        stopped = self.inner.stop()
        self.index.database.stop()
        return stopped

    def open_writer(self) -> IPartWriter:
        return IndexedWriter(self, self.inner.open_writer())

    def unavailable(self) -> str | None:
        return self.inner.unavailable() or self.index.database.unavailable()

    def instance_key(self, instance: InstanceRef) -> str:
        return object_key(self.inner, instance)

    def sleep(self, seconds: float) -> Deferred[None]:
        return deferLater(self._reactor, seconds, lambda: None)


@implementer(IPartWriter)
class IndexedWriter:
    """The inner writer, with ``commit`` going through the index."""

    def __init__(self, storage: IndexedStorage, inner: IPartWriter) -> None:
        self._storage = storage
        self._inner = inner
        self._size: int | None = None
        if INamedPartWriter.providedBy(inner):
            # Ingest tells the name only to writers that ask for it.
            alsoProvides(self, INamedPartWriter)

    @property
    def sha256(self) -> bytes | None:
        digest: bytes | None = self._inner.sha256
        return digest

    @property
    def drainable(self) -> bool:
        # The index holds no bytes: the inner writer decides (core/budget.py).
        drains: bool = self._inner.drainable
        return drains

    def write(self, data: bytes | memoryview) -> Deferred[None]:
        return self._inner.write(data)

    def hold_commit(self) -> None:
        self._inner.hold_commit()  # type: ignore[attr-defined]

    def named(self, instance: InstanceRef | None) -> None:
        self._inner.named(instance)  # type: ignore[attr-defined]

    def finish(self) -> Deferred[int]:
        def sized(size: int) -> int:
            self._size = size
            return size

        return self._inner.finish().addCallback(sized)

    def abort(self) -> Deferred[None]:
        return self._inner.abort()

    def commit(self, instance: InstanceRef, *, overwrite: bool) -> Deferred[CommitResult]:
        index = self._storage.index
        index.enter(instance.sop_instance_uid)
        committed = ensureDeferred(self._commit(instance, overwrite))

        def left(result: object) -> object:
            index.leave(instance.sop_instance_uid)
            return result

        return committed.addBoth(left)

    async def _commit(self, instance: InstanceRef, overwrite: bool) -> CommitResult:
        index = self._storage.index
        sha256 = self._inner.sha256
        if sha256 is None or self._size is None:
            await self._inner.abort()
            raise OSError(5, "the storage computed no SHA-256 for the index")
        key = self._storage.instance_key(instance)
        try:
            decision = await self._decide(instance, key, sha256, overwrite)
        except BaseException:
            # Ingest does not abort after a failed commit: nothing of the
            # part may stay behind in the store.
            await self._inner.abort()
            raise
        if decision is Claim.IDENTICAL:
            await self._inner.abort()
            return CommitResult.IDENTICAL_DUPLICATE
        if decision is Claim.CONFLICT:
            await self._inner.abort()
            return CommitResult.CONFLICTING_DUPLICATE
        new = decision is Claim.OWN
        try:
            # A row taken over may have an object of the dead or overwritten
            # upload behind it: replace it (nothing listed it as stored, or
            # the policy says overwrite).
            result = await self._inner.commit(instance, overwrite=overwrite or not new)
        except BaseException:
            await _quietly(index.give_back(instance.sop_instance_uid, new=new))
            raise
        if result is CommitResult.CONFLICTING_DUPLICATE:
            # The store holds other bytes the index does not know (written
            # before the index was used): the store's answer stands.
            await _quietly(index.give_back(instance.sop_instance_uid, new=new))
            return result
        if not await index.mark_stored(instance.sop_instance_uid):
            raise OSError(5, "the index lease of this instance was taken over meanwhile")
        if decision is Claim.TAKEN_OVER and result is CommitResult.STORED:
            return CommitResult.OVERWRITTEN if overwrite else CommitResult.STORED
        return result

    async def _decide(
        self, instance: InstanceRef, key: str, sha256: bytes, overwrite: bool
    ) -> Claim:
        """The index's claim, waiting out another upload's commit of the same UID."""
        assert self._size is not None
        index = self._storage.index
        waited = 0.0
        pause = BUSY_POLL_FIRST_SECONDS
        while True:
            decision = await index.claim(instance, key, self._size, sha256, overwrite)
            if decision is not Claim.BUSY:
                return decision
            if waited >= BUSY_WAIT_SECONDS:
                raise OSError(
                    16,
                    "another upload of this SOP Instance UID is being stored; send it again",
                )
            await self._storage.sleep(pause)
            waited += pause
            pause = min(pause * 2, BUSY_POLL_MAX_SECONDS)


async def _quietly(d: Deferred[Any]) -> None:
    """Give a row back on a best-effort basis: with the database down, its
    lease expires instead."""
    try:
        await d
    except IndexUnavailable as e:
        log.warn("could not give an index row back: {error}", error=e.detail)
