"""Small Deferred helpers shared by the edges: a copy a cancel cannot reach, an
answer now or later, and the thread runner."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

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


def now_or_later(d: Deferred[T]) -> T | Deferred[T]:
    """``d``'s result if it has one already (a failure is raised), else a Deferred of it.

    For decisions that are usually at hand and sometimes need a thread: the
    caller answers at once when it can.  The Deferred handed out is a copy,
    as with ``detached``: cancelling it (the client went away) never reaches
    ``d``, whose own callbacks still run when the work ends; after such a
    cancel the result is dropped.
    """
    at_once: list[T | Failure] = []
    later: list[Deferred[T]] = []

    def settle(result: T | Failure) -> None:
        if not later:
            at_once.append(result)
        elif not later[0].called:
            if isinstance(result, Failure):
                later[0].errback(result)
            else:
                later[0].callback(result)

    d.addBoth(settle)
    if at_once:
        result = at_once[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result
    copy: Deferred[T] = Deferred()
    later.append(copy)
    return copy
