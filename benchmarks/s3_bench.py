"""Issue 13: ``--storage s3://`` into SeaweedFS, side by side with the store's own limit.

One run starts SeaweedFS on 127.0.0.1 (``tests/integration/seaweedfs.py``)
and, for the "large" and "ct" studies (``_studies.FULL``, or ``TINY``),
alternates two targets, each into a bucket of its own:

- **ours**: one chunked POST of the study to ``twistd -n stow --storage
  s3://BUCKET/bench`` (peak RSS sampled every 20 ms, and the kernel's VmHWM);
- **boto3**: boto3 ``upload_file`` of the same instance files, one after the
  other, with boto3's default ``TransferConfig`` (multipart above 8 MiB, 10
  threads per file): what a plain S3 client gets out of the same store.

It prints MB/s (10^6 B/s of instance bytes) per run and the median ratio
ours / boto3 per study; ``--out`` also writes the figures as JSON.

    python3 -m benchmarks.s3_bench                 # full sizes, 2 runs each
    python3 -m benchmarks.s3_bench --size tiny     # seconds (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import _client, _studies
from benchmarks._server_usage import RssSampler, kernel_peak, reset_kernel_peak
from benchmarks._servers import Ours
from tests.integration.seaweedfs import SeaweedFS, credentials_env

MIB = 1024 * 1024
STUDIES = ("large", "ct")
TARGETS = ("ours", "boto3")


def run_ours(
    server: Ours, study: _studies.Study, bucket: str, s3: Any
) -> dict[str, float | int | str]:
    """One chunked POST of ``study``; MB/s, peak RSS, and a check that every object is there."""
    reset_kernel_peak(server.pid)
    with RssSampler(server.pid) as sampler:
        reply = _client.post_instances(server.port, "/studies", study.instances, chunked=True)
    stored = count_objects(s3, bucket)
    problem = reply.problem or ""
    if not problem and stored != len(study.instances):
        problem = f"{stored} of {len(study.instances)} objects in the bucket"
    return {
        "mb_per_second": study.bytes / reply.seconds / 1e6,
        "seconds": reply.seconds,
        "peak_rss_mib": sampler.peak / MIB,
        "kernel_peak_rss_mib": (kernel_peak(server.pid) or 0) / MIB,
        "problem": problem,
    }


def run_boto3(study: _studies.Study, bucket: str, s3: Any) -> dict[str, float | int | str]:
    """boto3 ``upload_file`` of every instance file, default transfer config."""
    started = time.monotonic()
    for index, instance in enumerate(study.instances):
        s3.upload_file(str(instance.path), bucket, f"boto3/{index:05d}.dcm")
    seconds = time.monotonic() - started
    stored = count_objects(s3, bucket)
    problem = "" if stored == len(study.instances) else f"{stored} objects in the bucket"
    return {"mb_per_second": study.bytes / seconds / 1e6, "seconds": seconds, "problem": problem}


def count_objects(s3: Any, bucket: str) -> int:
    """Instance objects in ``bucket`` (the server's claims and markers are not instances)."""
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        count += sum(1 for item in page.get("Contents", []) if item["Key"].endswith(".dcm"))
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--studies", nargs="+", choices=STUDIES, default=list(STUDIES))
    parser.add_argument("--out", type=Path, default=None, help="write results.json here")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    specs = _studies.FULL if args.size == "full" else _studies.TINY
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="s3-bench-") as tmp:
        work = Path(tmp)
        store = SeaweedFS(work / "seaweedfs")
        store.start()
        server: Ours | None = None
        try:
            s3 = store.client()
            # One bucket for the server (the bucket is checked at start-up),
            # a new prefix per run; boto3 gets a bucket per run.
            server_bucket = store.new_bucket()
            server = Ours(
                work / "server",
                ["--storage", f"s3://{server_bucket}/bench", "--s3-endpoint", store.endpoint],
                env={**os.environ, **credentials_env()},
            )
            for name in args.studies:
                study = _studies.generate(work / "studies", name, specs[name])
                for run in range(args.runs):
                    for target in TARGETS:
                        if target == "ours":
                            result = run_ours(server, study.variant(run), server_bucket, s3)
                            _clear(s3, server_bucket)
                        else:
                            result = run_boto3(study, bucket := store.new_bucket(), s3)
                            _clear(s3, bucket)
                        result.update(study=name, target=target, run=run, bytes=study.bytes)
                        runs.append(result)
                        print(_line(result), flush=True)
                        if result["problem"]:
                            print(
                                f"{name} {target} run {run}: {result['problem']}", file=sys.stderr
                            )
                            return 1
                _studies.remove(study)
        finally:
            if server is not None:
                server.stop()
            store.stop()
    summary = _summary(runs, args.studies)
    for line in summary["lines"]:
        print(line)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"runs": runs, "summary": summary}))
    return 0


def _clear(s3: Any, bucket: str) -> None:
    """Delete every object of ``bucket``: the store's disk holds one run at a time."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])


def _line(result: dict[str, Any]) -> str:
    rss = (
        f", peak RSS {result['peak_rss_mib']:.0f} MiB (VmHWM {result['kernel_peak_rss_mib']:.0f})"
        if "peak_rss_mib" in result
        else ""
    )
    return (
        f"{result['study']:<5} {result['target']:<5} run {result['run']}: "
        f"{result['mb_per_second']:.1f} MB/s ({result['seconds']:.1f} s){rss}"
    )


def _summary(runs: list[dict[str, Any]], studies: list[str]) -> dict[str, Any]:
    """Median MB/s per study and target, and ours / boto3."""
    summary: dict[str, Any] = {"studies": {}, "lines": []}
    for name in studies:
        medians = {
            target: statistics.median(
                r["mb_per_second"] for r in runs if r["study"] == name and r["target"] == target
            )
            for target in TARGETS
        }
        peak = max(r["peak_rss_mib"] for r in runs if r["study"] == name and r["target"] == "ours")
        ratio = medians["ours"] / medians["boto3"]
        summary["studies"][name] = {**medians, "ratio": ratio, "ours_peak_rss_mib": peak}
        summary["lines"].append(
            f"{name}: ours {medians['ours']:.1f} MB/s, boto3 upload_file {medians['boto3']:.1f}"
            f" MB/s, ratio {ratio:.0%}; ours peak RSS {peak:.0f} MiB"
        )
    return summary


if __name__ == "__main__":
    sys.exit(main())
