"""What the shared PostgreSQL index and outbox (``--index``) cost.

Starts a private PostgreSQL on 127.0.0.1 (tests/integration/postgres.py) and
measures, side by side in one run:

1. One database round trip (``SELECT 1``), three ways: a plain blocking
   psycopg call (the floor), through ``cluster.database.Database`` (our
   thread pool, from the Twisted reactor), and psycopg's own asyncio
   connection (the alternative to a thread pool).
2. Per instance: two ``twistd -n stow`` on local storage, one without and one
   with ``--index``; ``--instances`` POSTs of one small instance each,
   alternating, over keep-alive HTTP; median ms per POST of each, and the
   index's statements per instance (from ``pg_stat_database.xact_commit``:
   each autocommit statement is one transaction and one round trip).
3. The outbox per POST: the ``--index`` server's ``/studies`` against its
   ``/dicomweb/studies`` (the same storing plus one outbox row), and the
   spool of the server without ``--index`` for comparison.

Each figure is the median of ``--runs`` runs. Run from the repository root:

    python3 -m benchmarks.index_cost --instances 200 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from benchmarks._servers import Ours
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.crafted import instance
from tests.integration.postgres import PostgreSQL

BOUNDARY = "index-benchmark"


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def round_trip_blocking(url: str, count: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            samples.append(time.perf_counter() - started)
    return median_us(samples)


def round_trip_asyncio(url: str, count: int) -> float:
    async def run() -> float:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        samples = []
        try:
            for _ in range(count):
                started = time.perf_counter()
                await (await conn.execute("SELECT 1")).fetchone()
                samples.append(time.perf_counter() - started)
        finally:
            await conn.close()
        return median_us(samples)

    return asyncio.run(run())


def round_trip_thread_pool(url: str, count: int) -> float:
    """Through ``Database.run`` from a running reactor (in a child process:
    a reactor runs once per process)."""
    import subprocess
    import sys

    code = f"""
import time, statistics
from twisted.internet import reactor, defer
from twisted_stow.cluster.database import Database
db = Database({url!r}, reactor)
samples = []
async def go():
    await db.run(lambda c: c.execute("SELECT 1").fetchone())  # connect once
    for _ in range({count}):
        t = time.perf_counter()
        await db.run(lambda c: c.execute("SELECT 1").fetchone())
        samples.append(time.perf_counter() - t)
def main():
    db.start()
    d = defer.ensureDeferred(go())
    d.addBoth(lambda r: (print(statistics.median(samples) * 1e6), reactor.stop(), r)[2])
reactor.callWhenRunning(main)
reactor.run()
db.stop()
"""
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, text=True
    )
    return float(output.stdout.strip().splitlines()[-1])


def commits(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row: Any = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        return int(row[0])


def post_interleaved(routes: dict[str, tuple[int, str]], count: int) -> dict[str, list[float]]:
    """``count`` POSTs per route, one route after the other per round (load
    drifts on a shared machine hit every route alike); seconds each."""
    connections = {
        name: http.client.HTTPConnection("127.0.0.1", port) for name, (port, _) in routes.items()
    }
    samples: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(count):
        for name, (_, path) in routes.items():
            body = build_multipart([instance()], BOUNDARY)
            connection = connections[name]
            started = time.perf_counter()
            connection.request(
                "POST", path, body, {"Content-Type": multipart_content_type(BOUNDARY)}
            )
            response = connection.getresponse()
            response.read()
            samples[name].append(time.perf_counter() - started)
            assert response.status == 200, response.status
    for connection in connections.values():
        connection.close()
    return samples


def statements_per_instance(url: str, port: int, count: int) -> float:
    """The index's committed statements per one-instance POST to /studies.

    PostgreSQL publishes a backend's counters at most once a second, so the
    count is read after a pause; the health probe's statements (one per 2 s)
    in the window are subtracted.
    """
    time.sleep(1.5)
    before = commits(url)
    started = time.monotonic()
    post_interleaved({"index": (port, "/studies")}, count)
    time.sleep(1.5)
    after = commits(url)
    probes = (time.monotonic() - started) / 2.0
    # Minus the one the reading connection commits itself.
    return (after - before - 1 - probes) / count


def median_of(runs: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    values = [measure() for _ in range(runs)]
    return statistics.median(values), values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=200, help="POSTs per server and route")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--round-trips", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        # fsync on: a commit costs what it costs in production (WAL flushed).
        database = PostgreSQL(base / "pg", fsync=True)
        database.start()
        try:
            url = database.new_database()
            print("round trip (SELECT 1), median of runs, microseconds:")
            for name, measure in (
                ("blocking psycopg", round_trip_blocking),
                ("Database thread pool", round_trip_thread_pool),
                ("psycopg asyncio", round_trip_asyncio),
            ):
                value, values = median_of(args.runs, lambda m=measure: m(url, args.round_trips))
                print(f"  {name:22} {value:8.1f}  ({', '.join(f'{v:.1f}' for v in values)})")
            plain = Ours(base / "plain")
            indexed = Ours(base / "indexed", ["--index", url])
            try:
                routes = {
                    "plain /studies": (plain.port, "/studies"),
                    "plain /dicomweb (spool)": (plain.port, "/dicomweb/studies"),
                    "index /studies": (indexed.port, "/studies"),
                    "index /dicomweb (outbox)": (indexed.port, "/dicomweb/studies"),
                }
                medians: dict[str, list[float]] = {name: [] for name in routes}
                for _ in range(args.runs):
                    for name, samples in post_interleaved(routes, args.instances).items():
                        medians[name].append(statistics.median(samples) * 1000)
                print(f"ms per POST of one instance, median of {args.runs} runs:")
                for name, values in medians.items():
                    shown = ", ".join(f"{v:.2f}" for v in values)
                    print(f"  {name:26} {statistics.median(values):6.2f}  ({shown})")
                statements = [
                    statements_per_instance(url, indexed.port, args.instances)
                    for _ in range(args.runs)
                ]
                print(
                    "index statements (round trips) per instance: "
                    + ", ".join(f"{v:.2f}" for v in statements)
                )
            finally:
                plain.stop()
                indexed.stop()
        finally:
            database.close()


if __name__ == "__main__":
    main()
