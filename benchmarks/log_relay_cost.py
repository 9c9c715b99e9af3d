"""What relaying a worker's log line through the main process costs (workers/logrelay.py).

Per ``request.done``-shaped event, µs, median of ``--batches`` batches of
``--count`` events, side by side in one run:

- ``direct``: the text line formatted and written by the process that logged
  it (a single process; workers before the relay).
- ``worker: encode``: what a worker now does per event (Twisted's JSON event
  form, written to its pipe: here to an in-memory buffer).
- ``main: decode + format``: what the main process now does per worker event.

    python3 -m benchmarks.log_relay_cost
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from typing import Any

from twisted.logger import LogLevel, formatEventAsClassicLogText

from twisted_stow.workers.logrelay import decode, encode


def event() -> dict[str, Any]:
    return {
        "log_format": (
            "{method} {path} {status} in {duration:.3f} s: {stored} stored, {failed} failed"
        ),
        "log_level": LogLevel.info,
        "log_namespace": "twisted_stow.ops.observe",
        "log_system": "worker 1 pid 4242 twisted_stow.ops.observe#info",
        "log_time": time.time(),
        "stow_event": "request.done",
        "method": "POST",
        "path": "/studies",
        "family": "standard",
        "status": 200,
        "peer": "127.0.0.1",
        "principal": None,
        "correlation_id": None,
        "bytes": 524288,
        "stored": 8,
        "failed": 0,
        "duration": 0.0421,
        "worker": 1,
        "pid": 4242,
    }


def per_event_us(work: Any, count: int, batches: int) -> float:
    runs = []
    for _ in range(batches):
        start = time.process_time()
        for _ in range(count):
            work()
        runs.append((time.process_time() - start) / count * 1e6)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()
    sample = event()
    line = encode(sample)[:-1]
    out = io.StringIO()

    def direct() -> None:
        out.write(formatEventAsClassicLogText(sample) or "")

    def worker() -> None:
        out.write(encode(sample))

    def main_side() -> None:
        decoded = decode(line)
        assert decoded is not None
        out.write(formatEventAsClassicLogText(decoded) or "")

    for name, work in (
        ("direct", direct),
        ("worker: encode", worker),
        ("main: decode + format", main_side),
    ):
        print(f"{name:24} {per_event_us(work, args.count, args.batches):7.1f} µs CPU per event")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
