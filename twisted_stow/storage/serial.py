"""Per-part ordered work on a shared thread pool.

Each part being stored gets a ``SerialQueue``: its operations (write a batch,
sync, link) run strictly in order, one pool job per operation, so parts take
turns on the threads and a few fast uploads cannot hold every worker.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class Jobs:
    """The shared thread pool as the part queues see it.

    ``ThreadPool.callInThread`` silently drops a job once ``stop`` has begun,
    and a queue re-submits itself after every operation: without this gate a
    part's remaining operations would be dropped at shutdown instead of run.
    ``close`` (called just before the pool stops) makes ``submit`` refuse, so
    a worker runs the rest of its part's queue itself.
    """

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job`` on the pool; False once the pool is stopping."""
        with self._lock:
            if self._closed:
                return False
            self.pool.callInThread(job)
            return True

    def close(self) -> None:
        with self._lock:
            self._closed = True


class SerialQueue:
    """Runs one part's operations in order on a shared thread pool.

    ``submit`` is called from the reactor thread; each result comes back with
    one ``callFromThread``.  At most one pool job per queue exists at a time
    (``_running``), which keeps a part's operations serial; each job runs a
    single operation and, if more are queued, submits a new job behind every
    other part's, so parts take turns on the threads.
    """

    def __init__(self, jobs: Jobs, reactor: IReactorFromThreads) -> None:
        self._jobs = jobs
        self._reactor = reactor
        # An operation and its Deferred; None for one that reports its own
        # result (``submit_reporting``).
        self._ops: deque[tuple[Callable[[], Any], Deferred[Any] | None]] = deque()
        self._lock = threading.Lock()
        self._running = False

    def submit(self, op: Callable[[], T]) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        self._queue(op, d)
        return d

    def submit_reporting(self, op: Callable[[], None]) -> None:
        """Queue ``op``, which reports its own outcome (it must not raise).

        For an operation whose answer comes later from another thread (a
        commit waiting for its group fsync): no Deferred, and no
        ``callFromThread`` of a result nobody wants.
        """
        self._queue(op, None)

    def _queue(self, op: Callable[[], Any], d: Deferred[Any] | None) -> None:
        with self._lock:
            self._ops.append((op, d))
            start = not self._running
            self._running = True
        if start:
            # Refused only after stop(): as with ThreadPool itself, nothing
            # submitted after that runs (start-up sweeps what it leaves).
            self._jobs.submit(self._run_one)

    def _run_one(self) -> None:
        while True:
            with self._lock:
                op, d = self._ops.popleft()
            if d is None:
                op()
            else:
                try:
                    result = op()
                except BaseException:
                    self._reactor.callFromThread(d.errback, Failure())
                else:
                    self._reactor.callFromThread(d.callback, result)
            with self._lock:
                if not self._ops:
                    self._running = False
                    return
            if self._jobs.submit(self._run_one):
                return
            # The pool is stopping and takes no new jobs; stop() waits for
            # this thread, so finishing the queue here keeps its promise to
            # wait for every queued operation.
