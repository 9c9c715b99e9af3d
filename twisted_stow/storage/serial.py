"""Per-part ordered work on the storage's own writer threads.

Each part being stored gets a ``SerialQueue``: its operations (write a batch,
sync, link) run strictly in order, one pool job per operation, so parts take
turns on the threads and a few fast uploads cannot hold every worker.

The threads are ours (``Jobs``), not a Twisted ``ThreadPool``: a job on that
pool passed its team coordinator, a context tracker and several locks, ~40
CPU-us each against ~6 for a ``SimpleQueue`` (measured, docs/DESIGN.md "Cost
per instance"), and a small instance takes two jobs.  Results go back to the
reactor through ``Completions``, several per wake-up when they come faster
than the reactor takes them.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

T = TypeVar("T")

log = Logger()


class Jobs:
    """The storage's writer threads, fed from one FIFO queue.

    A queue re-submits itself after every operation, so once ``stop`` has
    begun ``submit`` refuses (returns False) and the caller runs the rest of
    its part's queue itself: ``stop`` still waits for every queued operation.
    Jobs submitted before ``start`` wait for it.
    """

    def __init__(self, threads: int, name: str = "stow-storage") -> None:
        self._count = threads
        self._name = name
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        for index in range(self._count):
            name = f"{self._name}-{index}"
            thread = threading.Thread(target=self._worker, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job``; False once ``stop`` has begun."""
        with self._lock:
            if self._closed:
                return False
            self._queue.put(job)
            return True

    def close(self) -> None:
        """Refuse new jobs from now on (``stop`` does this first)."""
        with self._lock:
            self._closed = True

    def stop(self) -> None:
        """Refuse new jobs, let the threads finish every queued one, and join them."""
        self.close()
        threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)  # behind every queued job: FIFO
        for thread in threads:
            thread.join()

    def _worker(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                job()
            except BaseException:
                # Jobs report their own errors; one that raises anyway must
                # not take a writer thread with it.
                log.failure("storage job failed")


class Completions:
    """Results from writer threads handed to the reactor, in the order they came.

    ``send`` queues a call; only the first call queued since the reactor last
    took them costs a ``callFromThread`` (a wake-up: a pipe write, an epoll
    turn and a read on the reactor), so completions that arrive while the
    reactor is busy go back together.
    """

    def __init__(self, reactor: IReactorFromThreads) -> None:
        self._reactor = reactor
        self._lock = threading.Lock()
        self._waiting: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def send(self, f: Callable[..., object], *args: Any) -> None:
        """Run ``f(*args)`` on the reactor, after every call sent before it."""
        with self._lock:
            self._waiting.append((f, args))
            wake = len(self._waiting) == 1
        if wake:
            self._reactor.callFromThread(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            calls, self._waiting = self._waiting, []
        for f, args in calls:
            try:
                f(*args)
            except Exception:
                # One failing call must not drop the others delivered with it.
                log.failure("storage completion failed")


class SerialQueue:
    """Runs one part's operations in order on the writer threads.

    ``submit`` is called from the reactor thread; each result comes back
    through ``Completions``.  At most one job per queue exists at a time
    (``_running``), which keeps a part's operations serial; each job runs a
    single operation and, if more are queued, submits a new job behind every
    other part's, so parts take turns on the threads.
    """

    def __init__(self, jobs: Jobs, completions: Completions) -> None:
        self._jobs = jobs
        self._completions = completions
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
        commit waiting for its group fsync): no Deferred, and no completion
        of a result nobody wants.
        """
        self._queue(op, None)

    def _queue(self, op: Callable[[], Any], d: Deferred[Any] | None) -> None:
        with self._lock:
            self._ops.append((op, d))
            start = not self._running
            self._running = True
        if start:
            # Refused only after stop(): nothing submitted after that runs
            # (start-up sweeps what it leaves).
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
                    self._completions.send(d.errback, Failure())
                else:
                    self._completions.send(d.callback, result)
            with self._lock:
                if not self._ops:
                    self._running = False
                    return
            if self._jobs.submit(self._run_one):
                return
            # The writer threads are stopping and take no new jobs; stop()
            # waits for this thread, so finishing the queue here keeps its
            # promise to wait for every queued operation.
