"""One small Deferred helper shared by the edges."""

from __future__ import annotations

from typing import TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")


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
