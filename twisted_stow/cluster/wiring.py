"""What ``site.make_services`` and ``tap.makeService`` call for ``--index``."""

from __future__ import annotations

from typing import Any

import psycopg

from ..interfaces import IStorage
from .database import Database, connect
from .index import IndexedStorage, SopIndex
from .outbox import OutboxTable
from .schema import SchemaTooNew, migrate


def prepare(url: str) -> str | None:
    """Blocking, at start-up: the database answers and its schema is current
    (created or migrated now); else the one line saying why not."""
    try:
        with connect(url) as conn:
            migrate(conn)
    except SchemaTooNew as e:
        return f"--index: {e}"
    except psycopg.Error as e:
        first = str(e).strip().splitlines()
        reason = first[0] if first else type(e).__name__
        return f"--index: cannot use the index database: {reason}"
    return None


def with_index(storage: IStorage, url: str, reactor: Any) -> tuple[IndexedStorage, OutboxTable]:
    """``storage`` behind the shared index, and the outbox on the same connections."""
    index = SopIndex(Database(url, reactor))
    return IndexedStorage(storage, index, reactor), OutboxTable(index.database, index.node)
