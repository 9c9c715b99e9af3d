"""The control connection between the main process and its workers, over real UNIX socketpairs.

Two worker ends against one ``SharedState``, all in this test's reactor: the
limits hold across the workers, a lost worker frees its slots, a cancelled
acquire frees the slot granted after it, blocks reach every worker, the KDF
budget is one, and a worker whose main process is gone or wedged answers 503.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred

from tests.integration.control_pairs import Pair, connect, connect_to_silence
from tests.integration.observe import poll
from twisted_stow.core.config import StowConfig
from twisted_stow.core.errors import ServiceUnavailable
from twisted_stow.limits import RETRY_AFTER_SECONDS, Release
from twisted_stow.workers.control import CONTROL_LATE, CONTROL_LOST
from twisted_stow.workers.shared import SharedState


def reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class World:
    """One main process's SharedState and the worker connections made to it."""

    def __init__(self, **options: Any) -> None:
        self.shared = SharedState(StowConfig(**options), reactor().seconds)
        self.pairs: list[Pair] = []

    def worker(self, name: str) -> Pair:
        pair = connect(reactor(), self.shared, name)
        self.pairs.append(pair)
        return pair

    def close(self) -> None:
        for pair in self.pairs:
            if pair.worker.transport is not None:
                pair.worker.transport.loseConnection()


@pytest.fixture
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    options = getattr(request, "param", {"max_requests": 1})
    built = World(**options)
    yield built
    built.close()


async def refusal(d: Deferred[Release]) -> ServiceUnavailable:
    try:
        await d
    except ServiceUnavailable as refused:
        return refused
    raise AssertionError("the acquire was granted")


@pytest_twisted.ensureDeferred
async def test_the_total_limit_holds_across_workers(world: World) -> None:
    """--max-requests 1: a slot held through one worker refuses the other's acquire with
    today's message and Retry-After; once released, the other worker gets it."""
    a, b = world.worker("a").worker, world.worker("b").worker
    release = await a.slots.acquire("10.0.0.1")
    refused = await refusal(b.slots.acquire("10.0.0.2"))
    assert refused.status == 503
    assert refused.retry_after_seconds == RETRY_AFTER_SECONDS
    assert refused.detail == "the server is receiving 1 uploads, its limit"
    release()
    release()  # idempotent: one release message
    assert await poll(lambda: world.shared.slots.active == 0)
    again = await b.slots.acquire("10.0.0.2")
    assert world.shared.slots.active == 1 and b.slots.active == 1 and a.slots.active == 0
    again()


@pytest.mark.parametrize("world", [{"max_requests_per_peer": 1}], indirect=True)
@pytest_twisted.ensureDeferred
async def test_the_per_peer_limit_holds_across_workers(world: World) -> None:
    """--max-requests-per-peer 1: the peer's second upload, on the other worker, is refused;
    another peer is served there."""
    a, b = world.worker("a").worker, world.worker("b").worker
    await a.slots.acquire("10.0.0.1")
    refused = await refusal(b.slots.acquire("10.0.0.1"))
    assert "from 10.0.0.1 are running, the limit per client" in refused.detail
    await b.slots.acquire("10.0.0.2")
    assert world.shared.slots.per_peer == {"10.0.0.1": 1, "10.0.0.2": 1}


@pytest.mark.parametrize("world", [{"max_requests": 3}], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_lost_worker_connection_frees_its_slots(world: World) -> None:
    """A worker's connection ends (it died): every slot it held is free at once, the other
    worker's stay; the lost worker refuses new acquires itself."""
    a, b = world.worker("a").worker, world.worker("b").worker
    await a.slots.acquire("p")
    await a.slots.acquire("p")
    await b.slots.acquire("q")
    assert world.shared.slots.active == 3
    assert a.transport is not None
    a.transport.abortConnection()
    assert await poll(lambda: world.shared.slots.active == 1)
    assert world.shared.slots.per_peer == {"q": 1} and world.shared.workers == 1
    with pytest.raises(ServiceUnavailable) as refused:
        a.slots.acquire("p")
    assert refused.value.detail == CONTROL_LOST


@pytest_twisted.ensureDeferred
async def test_a_cancelled_acquire_frees_the_slot_granted_after_it(world: World) -> None:
    """Cancelled before its answer (the request went away): the slot the main process grants
    is freed by the release sent right behind the acquire, so the worker's next acquire,
    on the same ordered connection, gets the only slot."""
    a = world.worker("a").worker
    first = a.slots.acquire("p")
    first.cancel()
    with pytest.raises(CancelledError):
        await first
    second = await a.slots.acquire("p")
    assert world.shared.slots.active == 1 and a.slots.active == 1
    second()
    assert await poll(lambda: world.shared.slots.active == 0)
    assert a.slots.active == 0


@pytest.mark.parametrize("world", [{}], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_block_decided_from_failures_on_one_worker_reaches_the_other(
    world: World,
) -> None:
    """Five failures reported through two workers block the peer on both, and a worker
    that connects later learns the block in force."""
    a, b = world.worker("a").worker, world.worker("b").worker
    for control in (a, b, a, b):
        counted = control.throttle.failed("10.0.0.9")
        assert isinstance(counted, Deferred)
        await counted
    assert b.throttle.retry_after("10.0.0.9") is None
    assert a.throttle.retry_after("10.0.0.9") is None
    fifth = a.throttle.failed("10.0.0.9")
    assert isinstance(fifth, Deferred)
    await fifth
    # The block reached the reporting worker before the answer (one connection, in
    # order), so its 401, held for that answer, is followed by a 429 there.
    assert a.throttle.retry_after("10.0.0.9") == 10
    assert await poll(lambda: b.throttle.retry_after("10.0.0.9") is not None)
    assert 9 <= (b.throttle.retry_after("10.0.0.9") or 0) <= 10
    late = world.worker("c").worker
    assert await poll(lambda: late.throttle.retry_after("10.0.0.9") is not None)
    assert a.throttle.retry_after("10.0.0.8") is None


@pytest.mark.parametrize("world", [{}], indirect=True)
@pytest_twisted.ensureDeferred
async def test_the_kdf_budget_is_shared(world: World) -> None:
    """Half a KDF second per second for the server: two dear checks through one worker spend
    it, and the other worker's check is refused."""
    a, b = world.worker("a").worker, world.worker("b").worker
    assert await a.kdf_budget.take(0.4)
    assert await a.kdf_budget.take(0.4)
    assert not await b.kdf_budget.take(0.001)


@pytest_twisted.ensureDeferred
async def test_a_worker_whose_main_process_died_refuses_at_once(world: World) -> None:
    """The main end closes: a question waiting for its answer fails with 503, later acquires
    are refused at once, and the KDF budget says no (never a hang)."""
    pair = world.worker("a")
    waiting = pair.worker.slots.acquire("p")
    assert pair.main.transport is not None
    pair.main.transport.abortConnection()
    refused = await refusal(waiting)
    assert refused.detail == CONTROL_LOST
    assert refused.retry_after_seconds == 1
    assert not pair.worker.connected
    with pytest.raises(ServiceUnavailable):
        pair.worker.slots.acquire("p")
    assert not await pair.worker.kdf_budget.take(0.01)
    assert world.shared.slots.active == 0


@pytest_twisted.ensureDeferred
async def test_a_wedged_main_process_is_answered_503_by_the_worker() -> None:
    """A main end that never answers: after the answer timeout the acquire fails with 503
    and the budget says no."""
    control, silent = connect_to_silence(reactor(), answer_timeout=0.05)
    try:
        refused = await refusal(control.slots.acquire("p"))
        assert refused.detail == CONTROL_LATE
        assert not await control.kdf_budget.take(0.01)
    finally:
        assert silent.transport is not None
        silent.transport.loseConnection()
