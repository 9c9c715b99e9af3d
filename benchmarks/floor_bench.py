"""The floor of durable large uploads on this machine, beside twisted-stow.

How fast can *any* server store the large study (20 x 50 MiB) durably here,
and what does the SHA-256 of every instance cost when nothing else does?
Side by side in one run, ``--runs`` rounds interleaved, for 1 and 4 clients:

* ``sink``: the loopback discard sink (``_sink.py``), what the client and
  loopback TCP allow;
* ``floor``: the sink storing every body as fsynced files of one instance
  each, directory fsynced before the answer: recv, write, fsync and nothing
  else (no HTTP parsing, multipart or DICOM, every call on MiB buffers with
  the GIL released);
* ``floor+sha256``: the same with every byte hashed, as ours does;
* ``disk``: the bytes copied from files with an fsync per file, one writer
  thread per client (issue 12's "disk limit", ``stow_bench.DiskTarget``);
* ``ours``: ``twistd -n stow`` at its default worker count.

For each: MB/s, the server's CPU-s per GB (its process tree), the client's
(this process, its threads are the clients) and how busy the machine's CPUs
were (/proc/stat).  A run with the machine near 100% busy is CPU-bound, so
a target's cost per GB, not its code path, sets its speed.

    python3 -m benchmarks.floor_bench            # ~4 min, 3 rounds
    python3 -m benchmarks.floor_bench --size tiny
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import _client, _servers, _studies
from benchmarks._server_usage import cpu_seconds
from benchmarks.stow_bench import DiskTarget

GB = 10**9
SETTLE_SECONDS = 0.5


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of every CPU so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def measure(
    run: Callable[[list[tuple[_studies.Instance, ...]]], _client.Batch],
    requests: list[tuple[_studies.Instance, ...]],
    server_pid: int | None,
) -> dict[str, float]:
    nbytes = sum(instance.size for request in requests for instance in request)
    server = cpu_seconds(server_pid) if server_pid else 0.0
    own = own_cpu_seconds()
    ticks = machine_ticks()
    batch = run(requests)
    busy, total = machine_ticks()
    failed = [r for r in batch.replies if r.status != 200 or r.problem]
    if failed or len(batch.replies) != len(requests):
        raise RuntimeError(f"{len(failed)} of {len(requests)} requests failed: {failed[:1]}")
    gb = nbytes / GB
    return {
        "mb_per_second": nbytes / batch.seconds / 1e6,
        "server_cpu_s_per_gb": ((cpu_seconds(server_pid) - server) / gb) if server_pid else 0.0,
        "client_cpu_s_per_gb": (own_cpu_seconds() - own) / gb,
        "machine_busy": (busy - ticks[0]) / max(1, total - ticks[1]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the medians as JSON here")
    args = parser.parse_args(argv)
    spec = (_studies.FULL if args.size == "full" else _studies.TINY)["large"]
    results: dict[str, dict[int, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="floor-bench-") as tmp:
        work = Path(tmp)
        study = _studies.generate(work / "studies", "large", spec)
        file_bytes = study.instances[0].size
        if any(instance.size != file_bytes for instance in study.instances):
            raise SystemExit("the floor cuts files of one size: the study's instances differ")
        # The floor's files hold the instance bytes only, its cut ignores the
        # multipart framing (~100 bytes a part): close enough for a floor.
        sink = _servers.Sink()
        floor = _servers.Sink(work / "floor", ["--file-bytes", str(file_bytes)])
        hashed = _servers.Sink(work / "hashed", ["--file-bytes", str(file_bytes), "--sha256"])
        ours = _servers.Ours(work / "ours")
        disk = DiskTarget(work / "disk")
        servers: dict[str, tuple[_servers.Started | None, str]] = {
            "sink": (sink, "/studies"),
            "floor": (floor, "/studies"),
            "floor+sha256": (hashed, "/studies"),
            "disk": (None, ""),
            "ours": (ours, "/studies"),
        }
        tags = itertools.count(1)
        try:
            names = list(servers)
            for run, clients in itertools.product(range(args.runs), args.clients):
                # The order rotates so no target always follows the same one.
                shift = (run * len(args.clients) + args.clients.index(clients)) % len(names)
                for name in names[shift:] + names[:shift]:
                    for process, _ in servers.values():
                        if process is not None:
                            process.release_space()
                    disk.release_space()
                    time.sleep(SETTLE_SECONDS)
                    requests = study.variant(next(tags)).split(clients)
                    process, path = servers[name]
                    if process is None:

                        def run_disk(
                            r: list[tuple[_studies.Instance, ...]], c: int = clients
                        ) -> _client.Batch:
                            return disk.run(r, c)

                        figures = measure(run_disk, requests, None)
                    else:
                        port, check = process.port, name == "ours"

                        def run_http(
                            r: list[tuple[_studies.Instance, ...]],
                            c: int = clients,
                            p: int = port,
                            k: bool = check,
                            u: str = path,
                        ) -> _client.Batch:
                            return _client.run_clients(p, u, r, c, chunked=True, check=k)

                        figures = measure(run_http, requests, process.pid)
                    results.setdefault(name, {}).setdefault(clients, []).append(figures)
                    print(
                        json.dumps({"run": run, "clients": clients, "target": name, **figures}),
                        flush=True,
                    )
        finally:
            for process, _ in servers.values():
                if process is not None:
                    process.stop()
    medians: dict[str, dict[str, dict[str, float]]] = {}
    print(f"\nlarge: {len(study.instances)} x {file_bytes} bytes, medians of {args.runs} runs")
    print("clients  target         MB/s  server CPU-s/GB  client CPU-s/GB  machine busy")
    for clients in args.clients:
        for name in servers:
            runs = results[name][clients]
            median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            medians.setdefault(str(clients), {})[name] = median
            print(
                f"{clients:>7}  {name:<13} {median['mb_per_second']:>5.0f}"
                f"  {median['server_cpu_s_per_gb']:>15.2f}  {median['client_cpu_s_per_gb']:>15.2f}"
                f"  {100 * median['machine_busy']:>11.0f}%"
            )
        row = {name: figures["mb_per_second"] for name, figures in medians[str(clients)].items()}
        ratios = (
            ("floor+sha256", "floor"),
            ("floor+sha256", "disk"),
            ("ours", "disk"),
            ("ours", "floor+sha256"),
        )
        print(
            f"  {clients} client(s): "
            + ", ".join(f"{a} / {b} {row[a] / row[b]:.2f}" for a, b in ratios)
        )
    if args.out is not None:
        args.out.write_text(json.dumps({"runs": args.runs, "medians": medians}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
