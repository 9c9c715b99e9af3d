"""Worker processes: instances/s of 16 clients with ``--workers 1`` beside the default.

Each run starts a fresh server, sends a small CT series (``--instances`` x
``--size``, fresh UIDs every run) as POSTs of ``--per-request`` instances
taken by 16 concurrent clients, and stops it.  The two configurations
alternate, ``--runs`` times each, so both see the same machine load; the
report gives each run, the medians and their ratio, and how the default
server's requests were spread over its workers (from the pids in the
workers' access log lines: the kernel's accept distribution).

    python3 -m benchmarks.workers_bench            # ~1 min
    python3 -m benchmarks.workers_bench --runs 5 --instances 1024
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks import _client, _studies
from benchmarks._server_usage import cpu_seconds
from benchmarks._servers import Ours

CLIENTS = 16
_ACCESS = re.compile(r"\[worker \d+ pid (\d+) [^\]]*\] .*\"POST /studies HTTP/1.1\" 200")


def one_run(
    workdir: Path,
    study: _studies.Study,
    warm: _studies.Study,
    workers: str,
    per_request: int,
) -> dict[str, object]:
    options = [] if workers == "default" else ["--workers", workers]
    server = Ours(workdir, options)
    try:
        # Warm every worker up (first directories, threads, allocations), uncounted.
        warm_requests = warm.split(max(1, len(warm.instances) // per_request))
        _client.run_clients(server.port, "/studies", warm_requests, CLIENTS, chunked=False)
        before = Counter(_ACCESS.findall(server.log()))
        requests = study.split(max(1, len(study.instances) // per_request))
        cpu_before = cpu_seconds(server.pid)
        batch = _client.run_clients(server.port, "/studies", requests, CLIENTS, chunked=False)
        cpu = cpu_seconds(server.pid) - cpu_before
        stored = sum(r.instances for r in batch.replies if r.status == 200 and r.problem is None)
        problems = sorted({r.problem for r in batch.replies if r.problem})
        spread = Counter(_ACCESS.findall(server.log()))
        spread.subtract(before)
    finally:
        server.stop()
    return {
        "workers": workers,
        "instances": stored,
        "seconds": round(batch.seconds, 3),
        "instances_per_second": round(stored / batch.seconds, 1),
        "cpu_seconds": round(cpu, 2),
        "requests_per_worker": sorted((n for n in spread.values() if n), reverse=True),
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--instances", type=int, default=512)
    parser.add_argument("--size", type=int, default=64 * 1024, help="bytes per instance")
    parser.add_argument("--per-request", type=int, default=8)
    args = parser.parse_args(argv)
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="workers-bench-") as temp:
        root = Path(temp)
        study = _studies.generate(root / "studies", "ct", [(args.instances, args.size)])
        warm = _studies.generate(root / "studies", "warm", [(4 * CLIENTS, args.size)])
        tags = itertools.count(1)
        for run, workers in itertools.product(range(args.runs), ("1", "default")):
            result = one_run(
                root / f"{workers}-{run}",
                study.variant(next(tags)),
                warm.variant(next(tags)),
                workers,
                args.per_request,
            )
            print(json.dumps(result), flush=True)
            results.append(result)
    medians = {}
    for workers in ("1", "default"):
        rates = [float(str(r["instances_per_second"])) for r in results if r["workers"] == workers]
        medians[workers] = statistics.median(rates)
    print(
        json.dumps(
            {
                "clients": CLIENTS,
                "median_instances_per_second": medians,
                "ratio_default_to_1": round(medians["default"] / medians["1"], 2),
            }
        )
    )
    return 0 if all(not r["problems"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
