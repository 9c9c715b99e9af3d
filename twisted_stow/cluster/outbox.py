"""The shared workflow outbox: the ``stow_outbox`` table, written and relayed by every node.

With ``--index``, a MONAI POST's workflow request is inserted here (one
statement, autocommit: durable once it returns) after its instances were
marked stored and before the response, instead of the local spool: a node
that dies for good afterwards loses nothing, as any live node relays it.

Every node's ``AmqpPublisher`` takes rows with ``FOR UPDATE SKIP LOCKED``
(nodes never wait on each other's rows) and marks them claimed for
``CLAIM_SECONDS``; it deletes them only once the broker confirmed them. A
relay that dies mid-batch leaves its claim to expire, and another node
publishes the rows again: at least once, under the request's stable
``payload_id`` (the AMQP ``message_id``).
"""

from __future__ import annotations

from typing import Any

import psycopg
from twisted.internet.defer import Deferred

from ..workflow.amqp import Pending
from .database import Database

# How long a relay's claim on rows lasts: far above a batch's publish and
# confirm (milliseconds), and the delay before another node re-publishes
# the rows of a relay that died holding them.
CLAIM_SECONDS = 15

_TAKE = """
    UPDATE stow_outbox AS o
    SET claimed_by = %(node)s, claimed_until = now() + make_interval(secs => %(lease)s),
        attempts = o.attempts + 1
    FROM (
        SELECT id FROM stow_outbox
        WHERE claimed_until IS NULL OR claimed_until < now() OR claimed_by = %(node)s
        ORDER BY id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS free
    WHERE o.id = free.id
    RETURNING o.id, o.body, o.payload_id, o.correlation_id
"""


def record(
    conn: psycopg.Connection[Any], payload_id: str, correlation_id: str, body: bytes
) -> None:
    """Blocking: insert one request (a repeat of the same payload_id is a no-op)."""
    conn.execute(
        "INSERT INTO stow_outbox (payload_id, correlation_id, body) VALUES (%s, %s, %s) "
        "ON CONFLICT (payload_id) DO NOTHING",
        (payload_id, correlation_id, body),
    )


def take(conn: psycopg.Connection[Any], node: str, limit: int) -> list[Pending]:
    """Blocking: claim up to ``limit`` free rows for ``node``, oldest first.

    Rows this node claimed before are free to it again: its publisher runs
    one batch at a time, so a claim of its own is one whose batch failed.
    """
    rows = conn.execute(_TAKE, {"node": node, "lease": CLAIM_SECONDS, "limit": limit}).fetchall()
    rows.sort(key=lambda row: row[0])
    return [Pending(row[0], bytes(row[1]), row[2], row[3]) for row in rows]


def delete(conn: psycopg.Connection[Any], ids: list[int]) -> None:
    conn.execute("DELETE FROM stow_outbox WHERE id = ANY(%s)", (ids,))


def depth(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM stow_outbox").fetchone()
    return int(row[0]) if row else 0


class OutboxTable:
    """The table as the publisher's ``Outbox`` and the trigger's recorder."""

    def __init__(self, database: Database, node: str) -> None:
        self.database = database
        self.node = node
        self.description = "the index database's outbox"

    def record(
        self, name: str, payload_id: str, correlation_id: str, body: bytes
    ) -> Deferred[None]:
        return self.database.run(record, payload_id, correlation_id, body)

    def take(self, limit: int) -> Deferred[list[Pending]]:
        return self.database.run(take, self.node, limit)

    def delivered(self, keys: list[Any]) -> Deferred[None]:
        return self.database.run(delete, list(keys))
