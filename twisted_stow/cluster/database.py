"""``Database``: the node's PostgreSQL connections, off the reactor, with a health state.

Blocking psycopg calls run on a thread pool of the database's own (not the
reactor's, which the spool and readiness use; not storage's writer
threads), one connection per thread, so no call ever blocks the reactor
and at most ``THREADS`` connections per process reach the server. A thread
pool rather than psycopg's asyncio mode: twistd's reactor is epoll, not
asyncio, and the measured round trip through the pool is well below the
per-instance costs it sits beside (docs/CLUSTER.md, "Measurements").

Connections are autocommit: the common statements (claim a new UID, mark it
stored, write an outbox row, claim and delete outbox rows) are one statement
each, so one round trip; the rare paths that read then write open an
explicit transaction. A connection that fails at the connection level
(refused, reset, the server shut down) is closed and the database counts as
down until the next probe or call succeeds; every such failure reaches the
caller as ``IndexUnavailable`` (an ``OSError``, so ingest fails the one part
0x0110 like any storage fault).
"""

from __future__ import annotations

import errno
import select
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

log = Logger()

T = TypeVar("T")

# Connections per process: a node's index calls are short (one statement);
# more threads would only queue more work on a database that is slow anyway.
THREADS = 4
# A database that does not answer a connect within this is down for now.
CONNECT_TIMEOUT_SECONDS = 3
# No statement of ours takes longer unless the server is stuck; past it the
# call fails (0x0110) rather than holding a part forever.
STATEMENT_TIMEOUT_MS = 10_000
# A silent peer (host gone, packets dropped) is noticed this fast instead of
# after the kernel's 15-minute TCP retransmission limit.
TCP_USER_TIMEOUT_MS = 5_000
# The health probe's period: an outage or a recovery is seen within it.
PROBE_SECONDS = 2.0


class IndexUnavailable(OSError):
    """The database could not be reached or failed mid-call."""

    # What a request that needed it is told (503): about the probe's period
    # twice, as for the object store.
    retry_after_seconds = 5

    def __init__(self, detail: str) -> None:
        super().__init__(errno.EIO, f"index database unavailable: {detail}")


def conninfo_options() -> dict[str, Any]:
    """What every connection adds to ``--index``'s URL (timeouts; no password ever)."""
    return {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "application_name": "twisted-stow",
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 2,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
    }


def connect(url: str) -> psycopg.Connection[Any]:
    """Blocking: one autocommit connection to ``url`` (password from PGPASSWORD/.pgpass)."""
    return psycopg.connect(url, autocommit=True, **conninfo_options())


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


class Database:
    """The thread pool, its per-thread connections, and whether the server answers."""

    def __init__(self, url: str, reactor: Any, *, threads: int = THREADS) -> None:
        self.url = url
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name="stow-index")
        self._local = threading.local()
        self._connections: set[psycopg.Connection[Any]] = set()
        self._lock = threading.Lock()
        # Why the database is down (None: it answered last time).
        self.problem: str | None = None
        self._probe = LoopingCall(self._check)
        self._probe.clock = reactor
        self._probing: Deferred[Any] | None = None

    def start(self) -> None:
        self._pool.start()
        self._probe.start(PROBE_SECONDS, now=False)

    def stop(self) -> None:
        """Blocking (at shutdown): stop probing, let queued calls end, close connections."""
        if self._probe.running:
            self._probe.stop()
        self._pool.stop()
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            conn.close()

    def unavailable(self) -> str | None:
        """Why the index cannot be used now (a 503 from the headers), or None. No I/O."""
        return self.problem

    def run(self, work: Callable[..., T], *args: Any) -> Deferred[T]:
        """``work(connection, *args)`` on a pool thread; fails with ``IndexUnavailable``
        when the database does not answer (and with the error itself for a bug)."""
        d: Deferred[T] = deferToThreadPool(self._reactor, self._pool, self._call, work, *args)
        d.addCallbacks(self._answered, self._failed)
        return d

    def _answered(self, result: T) -> T:
        if self.problem is not None:
            log.info("index database {url} answers again", url=self._safe_url())
            self.problem = None
        return result

    def _failed(self, failure: Any) -> Any:
        if failure.check(IndexUnavailable) and self.problem is None:
            self.problem = str(failure.value.strerror)
            log.warn("{problem}", problem=self.problem)
        return failure

    def _safe_url(self) -> str:
        return self.url.split("?", 1)[0]

    def _call(self, work: Callable[..., T], *args: Any) -> T:
        """In a pool thread: this thread's connection (opened on demand), then ``work``."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and (conn.closed or conn.broken or _hung_up(conn)):
            self._forget(conn)
            conn = None
        if conn is None:
            try:
                conn = connect(self.url)
            except psycopg.Error as e:
                raise IndexUnavailable(_describe(e)) from e
            self._local.conn = conn
            with self._lock:
                self._connections.add(conn)
        try:
            return work(conn, *args)
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            # The connection itself failed (or a statement timed out): never
            # reuse it, its state is unknown.
            self._forget(conn)
            raise IndexUnavailable(_describe(e)) from e

    def _forget(self, conn: psycopg.Connection[Any]) -> None:
        self._local.conn = None
        with self._lock:
            self._connections.discard(conn)
        try:
            conn.close()
        except psycopg.Error:
            pass

    def _check(self) -> None:
        """The periodic probe; one at a time, and one that hangs counts as down."""
        if self._probing is not None:
            if self.problem is None:
                self.problem = "index database unavailable: no answer to the health probe"
                log.warn("{problem}", problem=self.problem)
            return
        started = time.monotonic()
        self._probing = self.run(_select_one)

        def done(result: object) -> None:
            self._probing = None
            if time.monotonic() - started > PROBE_SECONDS * 2:
                log.info("index probe took {s:.1f} s", s=time.monotonic() - started)

        self._probing.addBoth(done)


def _hung_up(conn: psycopg.Connection[Any]) -> bool:
    """An idle connection with something to read has been closed by the server
    (a restart sends its FATAL notice and hangs up): do not send the next
    part's claim into it only to fail that part 0x0110. No round trip."""
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(readable)


def _select_one(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT 1")
