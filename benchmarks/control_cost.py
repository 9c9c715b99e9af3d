"""What a server-wide upload slot costs: a worker's acquire + release through the main process.

Three ways, side by side in one run, each the median over ``--batches``
batches of ``--count`` sequential acquire + release pairs (µs per pair):

- ``local``: this process's ``UploadSlots`` (the single-process server, and
  a worker without ``--max-requests``/``--max-requests-per-peer``).
- ``remote, one reactor``: ``worker_side`` and ``main_side`` over a UNIX
  socketpair, both ends in this process (both halves of the work on one core).
- ``remote, two processes``: the main end in a child process, as with
  ``--workers``: the round trip then includes the hand-over between them.

Each acquire waits for its answer before the next starts (one request at a
time: the latency a request sees); the release needs no answer.

    python3 -m benchmarks.control_cost
    python3 -m benchmarks.control_cost --count 500 --batches 3
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet import task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from twisted_stow.core.config import StowConfig
from twisted_stow.limits import UploadSlots
from twisted_stow.workers.control import MainControl, WorkerControl, main_side, worker_side
from twisted_stow.workers.shared import SharedState

reactor: Any = _reactor
# Caps high enough never to refuse: the cost of the bookkeeping, not of a 503.
CONFIG = StowConfig(max_requests=1000, max_requests_per_peer=1000)
PEER = "127.0.0.1"


class _One(Factory):
    def __init__(self, protocol: Protocol) -> None:
        self.instance = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.instance


def _adopt(end: socket.socket, protocol: Protocol) -> None:
    reactor.adoptStreamConnection(end.fileno(), socket.AF_UNIX, _One(protocol))
    end.close()


def local_batch(count: int) -> float:
    slots = UploadSlots(CONFIG.max_requests, CONFIG.max_requests_per_peer)
    start = time.perf_counter()
    for _ in range(count):
        slots.acquire(PEER)()
    return (time.perf_counter() - start) / count * 1e6


async def remote_batch(control: WorkerControl, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        release = await control.slots.acquire(PEER)
        release()
    return (time.perf_counter() - start) / count * 1e6


async def measure(count: int, batches: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"local": [], "one reactor": [], "two processes": []}
    # One reactor: both ends here.
    shared = SharedState(CONFIG, reactor.seconds)
    main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    here = worker_side(reactor)
    _adopt(main_end, main_side(shared, "bench"))
    _adopt(worker_end, here)
    # Two processes: the main end in a child, on the descriptor it inherits.
    child_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.control_cost", "--serve-main", str(child_end.fileno())],
        pass_fds=[child_end.fileno()],
    )
    child_end.close()
    there = worker_side(reactor)
    _adopt(worker_end, there)
    try:
        # Warm-up, then the three side by side in every batch.
        await remote_batch(here, 100)
        await remote_batch(there, 100)
        for _ in range(batches):
            results["local"].append(local_batch(count))
            results["one reactor"].append(await remote_batch(here, count))
            results["two processes"].append(await remote_batch(there, count))
    finally:
        for control in (here, there):
            if control.transport is not None:
                control.transport.loseConnection()
        # The child stops when its connection ends; waited for by its pid.
        await task.deferLater(reactor, 0.2, lambda: None)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return results


def serve_main(fd: int) -> None:
    """The child: a main process's end on ``fd``, until the connection ends."""
    shared = SharedState(CONFIG, reactor.seconds)

    class Main(MainControl):
        def connectionLost(self, reason: Failure = connectionDone) -> None:
            super().connectionLost(reason)
            reactor.stop()

    end = socket.socket(fileno=fd)
    reactor.callWhenRunning(_adopt, end, main_side(shared, "bench", protocol=Main))
    reactor.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="acquire+release pairs per batch")
    parser.add_argument("--batches", type=int, default=7)
    parser.add_argument("--serve-main", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_main is not None:
        serve_main(args.serve_main)
        return

    def run(_: Any) -> Deferred[None]:
        async def go() -> None:
            results = await measure(args.count, args.batches)
            local = statistics.median(results["local"])
            print(f"{args.batches} batches of {args.count} acquire+release pairs")
            print(f"{'slots':<16} {'median µs/pair':>15} {'min':>8} {'max':>8} {'x local':>8}")
            for name, values in results.items():
                median = statistics.median(values)
                print(
                    f"{name:<16} {median:>15.2f} {min(values):>8.2f} {max(values):>8.2f}"
                    f" {median / local:>8.0f}"
                )

        return ensureDeferred(go())

    task.react(run)


if __name__ == "__main__":
    main()
