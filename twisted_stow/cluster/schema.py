"""The cluster's tables, created and migrated by the server itself at start-up.

Versioned: ``stow_schema`` holds one row, the version applied; each entry of
``MIGRATIONS`` brings the schema from its index to the next. ``migrate`` runs
them in one transaction under an advisory lock, so nodes starting together
apply each step once and a failed step leaves the previous version intact;
re-running it on a current schema changes nothing. A database whose version
is newer than this server knows is refused (an older node must not write
into a schema it does not understand).

Blocking (psycopg): run before the server listens (``tap.makeService``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

# pg_advisory_xact_lock key: "stow" in ASCII, so it names us in pg_locks.
MIGRATION_LOCK = 0x73746F77

# Version N+1 is MIGRATIONS[N]. Never edit a released step; append one.
MIGRATIONS: tuple[str, ...] = (
    # 1: the SOP instance index. One row per SOP Instance UID (unique across
    # studies, so it is the key that decides races between nodes); 'pending'
    # while its node writes the object, under a lease another node may take
    # over once it expired; 'stored' once the store confirmed the object.
    """
    CREATE TABLE stow_instances (
        sop_instance_uid    text PRIMARY KEY,
        study_instance_uid  text NOT NULL,
        series_instance_uid text NOT NULL,
        object_key          text NOT NULL,
        size_bytes          bigint NOT NULL,
        sha256              bytea NOT NULL,
        state               text NOT NULL CHECK (state IN ('pending', 'stored')),
        node                text NOT NULL,
        lease_expires       timestamptz,
        updated             timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX stow_instances_study ON stow_instances (study_instance_uid);
    """,
    # 2: the workflow outbox. A row per workflow request, written before the
    # POST is answered; a relay claims rows (claimed_until: its lease) and
    # deletes them once the broker confirmed them.
    """
    CREATE TABLE stow_outbox (
        id             bigserial PRIMARY KEY,
        payload_id     text NOT NULL UNIQUE,
        correlation_id text,
        body           bytea NOT NULL,
        created        timestamptz NOT NULL DEFAULT now(),
        claimed_by     text,
        claimed_until  timestamptz,
        attempts       integer NOT NULL DEFAULT 0
    );
    """,
)

LATEST = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer server than this one."""


def current_version(conn: psycopg.Connection[Any]) -> int:
    """The applied version (0: no schema yet)."""
    exists = conn.execute("SELECT to_regclass('stow_schema') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("SELECT version FROM stow_schema").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: psycopg.Connection[Any], migrations: Sequence[str] = MIGRATIONS) -> int:
    """Blocking: bring the schema to ``len(migrations)``; the version before.

    Idempotent; safe with other nodes migrating at the same moment (they wait
    on the advisory lock, then find the work done).
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS stow_schema (version integer NOT NULL)")
        before = current_version(conn)
        if before > len(migrations):
            raise SchemaTooNew(
                f"the index schema is version {before}, newer than this server's "
                f"{len(migrations)}: upgrade twisted-stow on this node"
            )
        for step in migrations[before:]:
            conn.execute(step)
        if before == 0:
            conn.execute("INSERT INTO stow_schema (version) VALUES (%s)", (len(migrations),))
        elif before < len(migrations):
            conn.execute("UPDATE stow_schema SET version = %s", (len(migrations),))
    return before
