"""Issue 12 point 5 / 13 point 4: one process's peak RSS under the one memory budget.

Scenarios (each run on a fresh ``twistd -n stow``, one process):

- ``s3-1x2G``: one upload of one 2 GiB instance into S3 behind a throttle;
- ``s3-16x``/``s3-64x``: 16 or 64 concurrent uploads, one instance each,
  into the throttled S3;
- ``disk-1x2G``, ``disk-16x``/``disk-64x``: the same into a local directory.

The store is a real SeaweedFS (``tests/integration/seaweedfs.py``) behind a
rate-limiting proxy of ours (``tests/integration/throttle.py``) on
127.0.0.1, so the store is slower than the clients and the server's buffers
are what is measured.  Each run first stores one warm-up instance, then
resets VmHWM (``/proc/PID/clear_refs``) and records the RSS at rest; it
reports the peak (VmHWM) and its growth over rest, in MiB, of the one
process that grew most: the target is per process, and a server of
``--workers N`` is a main process and N workers (their sum is not what the
target bounds).

``--code DIR`` runs the server from another checkout (``PYTHONPATH``): the
same script measures before and after side by side, alternately, e.g.

    git worktree add /tmp/before <commit>
    python3 -m benchmarks.budget_rss --code /tmp/before --runs 3

``--size tiny`` shrinks everything for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import _client
from benchmarks._dicom import Part, framing_bytes, plan_request
from benchmarks._server_usage import RssSampler, kernel_peaks, reset_kernel_peak, tree
from benchmarks._servers import Ours
from tests.helpers import iter_multipart, multipart_content_type
from tests.integration.seaweedfs import SeaweedFS, credentials_env
from tests.integration.throttle import ThrottledProxy

MIB = 1024 * 1024
CHUNK_BYTES = 256 * 1024
# The store's pace for all connections together: slower than loopback clients.
STORE_BYTES_PER_SECOND = 96 * MIB
SIZES = {
    "full": {"one": 2048 * MIB, "each16": 32 * MIB, "each64": 16 * MIB},
    "tiny": {"one": 48 * MIB, "each16": 6 * MIB, "each64": 6 * MIB},
}
SCENARIOS = ("s3-1x2G", "s3-16x", "s3-64x", "disk-1x2G", "disk-16x", "disk-64x")


def body_of(parts: list[Part]) -> _client.Body:
    pieces = iter_multipart((part.chunks() for part in parts), chunk_size=CHUNK_BYTES)
    length = framing_bytes(len(parts)) + sum(part.size for part in parts)
    return _client.Body(multipart_content_type(), length, pieces)


def upload(port: int, parts: list[Part]) -> _client.Reply:
    uids = [part.sop_instance_uid for part in parts]
    return _client.post(port, "/studies", body_of(parts), chunked=True, uids=uids)


def status_rss(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in text.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def tree_rss(pid: int) -> list[int]:
    """VmRSS of each process of ``pid``'s tree (main process first, then its workers)."""
    return [status_rss(process.pid) for process in tree(pid)]


def run(
    scenario: str,
    size: str,
    code: Path | None,
    seaweed: SeaweedFS,
    proxy: ThrottledProxy,
    server_args: list[str],
) -> dict[str, Any]:
    sizes = SIZES[size]
    s3 = scenario.startswith("s3")
    count = 1 if scenario.endswith("1x2G") else int(scenario.split("-")[1].rstrip("x"))
    each = sizes["one"] if count == 1 else sizes[f"each{count}"]
    env = {**os.environ, **credentials_env()}
    if code is not None:
        env["PYTHONPATH"] = str(code)
    args: list[str] = ["--max-requests", "0", *server_args]
    if s3:
        bucket = seaweed.new_bucket()
        args += ["--storage", f"s3://{bucket}/bench", "--s3-endpoint", proxy.endpoint]
    with tempfile.TemporaryDirectory(prefix="budget-rss-") as tmp:
        if s3:
            args += ["--workflow-spool", str(Path(tmp) / "spool")]
        server = Ours(Path(tmp), args, env=env)
        try:
            warm = upload(server.port, plan_request(6 * MIB, 1))
            if warm.problem:
                raise RuntimeError(f"warm-up failed: {warm.problem}")
            time.sleep(1.0)
            # Per process: the target is one process's RSS, and with
            # --workers the tree is a main process plus its workers.
            rests = tree_rss(server.pid)
            reset_kernel_peak(server.pid)
            requests = [plan_request(each, 1) for _ in range(count)]
            replies: list[_client.Reply | None] = [None] * count

            def client(i: int) -> None:
                replies[i] = upload(server.port, requests[i])

            started = time.monotonic()
            with RssSampler(server.pid) as sampler:
                threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            seconds = time.monotonic() - started
            ends = tree_rss(server.pid)
            peaks = kernel_peaks(server.pid) or [0] * len(rests)
        finally:
            server.stop()
    problems = [r.problem if r else "no reply" for r in replies if r is None or r.problem]
    if not (len(rests) == len(peaks) == len(ends)):
        problems.append(f"the process tree changed during the run: {len(rests)} -> {len(peaks)}")
    # The process that grew most (a worker, or the one process of --workers 1).
    worst = max(range(min(len(rests), len(peaks), len(ends))), key=lambda i: peaks[i] - rests[i])
    rest, peak, end_rss = rests[worst], peaks[worst], ends[worst]
    return {
        "scenario": scenario,
        "code": str(code) if code else "this checkout",
        "uploads": count,
        "bytes_each": each,
        "seconds": round(seconds, 1),
        "processes": len(rests),
        "rest_mib": round(rest / MIB, 1),
        "peak_mib": round(peak / MIB, 1),
        "growth_mib": round((peak - rest) / MIB, 1),
        "end_mib": round(end_rss / MIB, 1),
        # When the tree's sampled RSS first came within 1 MiB of its peak (s from the start).
        "peak_at_seconds": next(
            (round(t, 1) for t, rss in sampler.samples if rss >= sampler.peak - MIB), None
        ),
        "problems": [str(p) for p in problems][:3],
    }


def alternate(codes: list[Path | None], runs: int) -> Iterator[Path | None]:
    for _ in range(runs):
        yield from codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--code", type=Path, help="also run the server from this checkout")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--server-args", default="", help="more options for the server, e.g. '--memory-budget 16M'"
    )
    options = parser.parse_args(argv)
    codes: list[Path | None] = [None] if options.code is None else [options.code, None]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="budget-rss-weed-") as weed_dir:
        seaweed = SeaweedFS(Path(weed_dir))
        seaweed.start()
        proxy = ThrottledProxy(seaweed.s3_port, STORE_BYTES_PER_SECOND).start()
        try:
            for scenario in options.scenarios.split(","):
                for code in alternate(codes, options.runs):
                    result = run(
                        scenario, options.size, code, seaweed, proxy, options.server_args.split()
                    )
                    results.append(result)
                    print(json.dumps(result), flush=True)
        finally:
            proxy.stop()
            seaweed.stop()
    print("\nmedians (peak / growth over rest, MiB):")
    for scenario in options.scenarios.split(","):
        for code in codes:
            label = str(code) if code else "this checkout"
            mine = [r for r in results if r["scenario"] == scenario and r["code"] == label]
            peak = statistics.median(r["peak_mib"] for r in mine)
            growth = statistics.median(r["growth_mib"] for r in mine)
            print(f"  {scenario:10s} {label:30s} peak {peak:7.1f}  growth {growth:7.1f}")
    if options.out:
        options.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
