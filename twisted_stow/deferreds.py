"""Small Deferred helpers shared by the edges: a copy a cancel cannot reach, the thread runner."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

T = TypeVar("T")

# Runs a blocking call off the reactor; fires with its result (fails with its error).
RunInThread = Callable[..., "Deferred[Any]"]


def reactor_threads(reactor: Any) -> RunInThread:
    """The one thread runner of the server: the reactor's own pool.

    Blocking work that is not storage (the workflow spool, the AMQP
    publisher's spool reads) runs here; storage has its own writer threads,
    so a spool write never queues behind an fsync of a large part.
    """

    def run_in_thread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    return run_in_thread


def detached(d: Deferred[T]) -> Deferred[T]:
    """A new Deferred with ``d``'s result; ``d`` keeps its own callback chain.

    Cancelling the copy never reaches ``d`` (Klein cancels a route handler
    when its client goes away; the work behind ``d`` must go on).  After such
    a cancel the copy has fired already, and Twisted drops the later callback
    of a Deferred cancelled without a canceller.  ``d`` must not fail: give
    it an errback first if it can.
    """
    copy: Deferred[T] = Deferred()

    def forward(result: T) -> T:
        copy.callback(result)
        return result

    d.addCallback(forward)
    return copy
