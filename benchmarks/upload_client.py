"""``stow-upload`` against the benchmarks' raw sendfile client, in one run (issue 15 point 8).

Run from the repository root:

    python3 -m benchmarks.upload_client                # ct + 4 GiB of 50 MiB files, 3 runs
    python3 -m benchmarks.upload_client --size tiny    # seconds

Both clients send the same files to the same ``twistd -n stow`` as the same
requests: ``--max-instances``/``--max-bytes`` groups (100 instances or 512 MiB),
``--concurrency`` (4) at a time, chunked.  The raw client (``_client.py``,
threads, ``os.sendfile``) is the ceiling of a client; ``stow-upload`` runs
as its console script in a process of its own, whose peak RSS is the
kernel's ``ru_maxrss`` for that child (``os.wait4``).  Its rate is timed two
ways: wall time around the process (interpreter start-up included) and
the upload time it reports in its summary (from the first file examined to
the last answer).  The server's storage is cleared before each run, and the
two clients alternate, so neither always meets a fresher disk.  Medians of
``--runs``.  The server has no ``--workers`` option yet: it is measured as
its single process.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import _client, _servers, _studies
from benchmarks._studies import KIB, MIB, Study
from twisted_stow.client.batching import DEFAULT_MAX_INSTANCES, DEFAULT_MAX_REQUEST_BYTES

# name → series (instances, bytes each): the two scenarios.
FULL = {"ct": [(1000, 512 * KIB)], "large-4gib": [(82, 50 * MIB)]}
TINY = {"ct": [(64, 32 * KIB)], "large-4gib": [(6, 2 * MIB)]}
CONCURRENCY = 4
# stow-upload's own defaults, so both clients send the same requests.
MAX_INSTANCES = DEFAULT_MAX_INSTANCES
MAX_BYTES = DEFAULT_MAX_REQUEST_BYTES
_SUMMARY_TIME = re.compile(r"^time\s+([\d.]+) s$", re.MULTILINE)
# The client's target: under 120 MiB of peak RSS.
RSS_LIMIT_BYTES = 120 * MIB


@dataclass
class Run:
    client: str
    seconds: float  # wall time of the transfer
    instances: int
    body_bytes: int
    peak_rss: int | None = None
    own_seconds: float | None = None  # stow-upload's own timing (no start-up)


def raw_requests(study: Study) -> list[tuple[_studies.Instance, ...]]:
    """The study as stow-upload groups it: up to MAX_INSTANCES and MAX_BYTES per request."""
    requests: list[tuple[_studies.Instance, ...]] = []
    current: list[_studies.Instance] = []
    size = 0
    for instance in study.instances:
        if current and (len(current) >= MAX_INSTANCES or size + instance.size > MAX_BYTES):
            requests.append(tuple(current))
            current, size = [], 0
        current.append(instance)
        size += instance.size
    return requests + ([tuple(current)] if current else [])


def run_raw(server: _servers.Ours, study: Study) -> Run:
    batch = _client.run_clients(
        server.port, server.path, raw_requests(study), CONCURRENCY, chunked=True
    )
    problems = [r.problem for r in batch.replies if r.problem]
    if problems:
        raise RuntimeError(f"raw client: {problems[:3]}")
    body = sum(r.body_bytes for r in batch.replies)
    return Run("raw sendfile", batch.seconds, len(study.instances), body)


def run_upload(server: _servers.Ours, study: Study, folder: Path) -> Run:
    command = [
        str(Path(sys.executable).with_name("stow-upload")),
        f"http://127.0.0.1:{server.port}",
        str(folder),
        "--quiet",
        f"--concurrency={CONCURRENCY}",
        f"--max-instances={MAX_INSTANCES}",
        f"--max-bytes={MAX_BYTES}",
    ]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"stow-upload exited {process.returncode}:\n{out}")
    own = _SUMMARY_TIME.search(out)
    body = study.bytes
    return Run(
        "stow-upload",
        seconds,
        len(study.instances),
        body,
        peak_rss=usage.ru_maxrss * 1024,  # KiB on Linux
        own_seconds=float(own.group(1)) if own else None,
    )


def median_line(name: str, runs: list[Run]) -> str:
    seconds = statistics.median(r.seconds for r in runs)
    instances, body = runs[0].instances, runs[0].body_bytes
    line = f"| {name} | {runs[0].client} | {instances / seconds:.0f} | {body / seconds / 1e6:.0f} |"
    own = [r.own_seconds for r in runs if r.own_seconds]
    if own:
        own_s = statistics.median(own)
        line += f" {instances / own_s:.0f} / {body / own_s / 1e6:.0f} |"
    else:
        line += " - |"
    peaks = [r.peak_rss for r in runs if r.peak_rss]
    line += f" {max(peaks) / MIB:.0f} |" if peaks else " - |"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--study", choices=sorted(FULL), action="append", help="default: both")
    args = parser.parse_args(argv)
    sizes = FULL if args.size == "full" else TINY
    spec = {name: sizes[name] for name in args.study or sorted(FULL)}
    workdir = Path(tempfile.mkdtemp(prefix="upload-bench-", dir=args.workdir))
    rows = []
    failures = []
    try:
        studies = {name: _studies.generate(workdir / "files", name, s) for name, s in spec.items()}
        server = _servers.Ours(workdir / "server")
        try:
            for name, study in studies.items():
                print(
                    f"{name}: {len(study.instances)} files, {study.bytes / MIB:.0f} MiB", flush=True
                )
                raw: list[Run] = []
                ours: list[Run] = []
                for run in range(args.runs):
                    order = ("raw", "ours") if run % 2 == 0 else ("ours", "raw")
                    for client in order:
                        server.clear()
                        time.sleep(0.3)
                        if client == "raw":
                            raw.append(run_raw(server, study))
                            result = raw[-1]
                        else:
                            ours.append(run_upload(server, study, workdir / "files" / name))
                            result = ours[-1]
                        print(f"   {result}", flush=True)
                rows += [median_line(name, raw), median_line(name, ours)]
                ratio_wall = statistics.median(r.seconds for r in raw) / statistics.median(
                    r.seconds for r in ours
                )
                own = statistics.median(r.own_seconds or r.seconds for r in ours)
                ratio_own = statistics.median(r.seconds for r in raw) / own
                peak = max(r.peak_rss or 0 for r in ours)
                rows.append(
                    f"| {name} | stow-upload / raw | {ratio_wall:.2f} (wall) |"
                    f" {ratio_own:.2f} (own time) | | |"
                )
                if ratio_own < 0.9:
                    failures.append(f"{name}: stow-upload at {ratio_own:.2f} of the raw client")
                if peak >= RSS_LIMIT_BYTES:
                    failures.append(f"{name}: stow-upload peak RSS {peak / MIB:.0f} MiB")
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"medians of {args.runs} runs; server: one twistd process (no --workers option yet)")
    print("| study | client | instances/s | MB/s | own time: instances/s / MB/s | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    for failure in failures:
        print("below target:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
