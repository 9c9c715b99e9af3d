"""Issue 13: ``--storage s3://`` into SeaweedFS, side by side with the store's own limits.

One run starts SeaweedFS on 127.0.0.1 (``tests/integration/seaweedfs.py``)
and, for the "large" and "ct" studies (``_studies.FULL``, or ``TINY``),
alternates the targets run by run, each into a bucket (or prefix) of its own:

- **ours**: one chunked POST of the study to ``twistd -n stow --storage
  s3://BUCKET/bench`` (peak RSS sampled every 20 ms, and the kernel's VmHWM);
- **boto3**: boto3 ``upload_file`` of the same instance files, one after the
  other, with boto3's default ``TransferConfig`` (multipart above 8 MiB, 10
  threads per file): what a plain S3 client gets out of the same store;
- **boto3-1** (large only): the same with ``max_concurrency=1``, one part in
  flight as ours: what part concurrency is worth on this store;
- **multipart**: the very request body ours receives (``_client.instances_body``)
  as one object, one multipart upload of ``s3.PART_BYTES`` parts sent one at a
  time from one thread (boto3's low-level client): the store's limit for one
  stream written the way ours writes it, without per-object costs;
- **orthanc** (ct only): the same chunked POST to Orthanc + DICOMweb storing
  on local disk (``_servers.Orthanc``, kept on loopback by its preloaded shim),
  the peer issue 13 compares the ct figure with.

It prints MB/s (10^6 B/s of instance bytes) per run and, per study, the
medians and ours / each other target; ``--out`` (default
``benchmarks/results/``) gets ``s3.json`` (every run and the summary) and
``s3.md`` (the table).

    python3 -m benchmarks.s3_bench                 # full sizes, 3 runs each (~6 min)
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

from boto3.s3.transfer import TransferConfig

from benchmarks import _client, _servers, _studies
from benchmarks._server_usage import RssSampler, cpu_seconds, kernel_peak, reset_kernel_peak
from benchmarks._servers import Ours
from tests.integration.seaweedfs import SeaweedFS, credentials_env
from twisted_stow.storage.s3 import PART_BYTES

MIB = 1024 * 1024
READ_BYTES = MIB
STUDIES = ("large", "ct")
# Per study, the targets run side by side (Orthanc is the peer on ct only).
TARGETS = {
    "large": ("ours", "boto3", "boto3-1", "multipart"),
    "ct": ("ours", "boto3", "multipart", "orthanc"),
}
RESULTS = Path(__file__).resolve().parent / "results"
# boto3 with one part in flight, as ours sends them: the gap to the default
# (10 threads) is what part concurrency is worth on this store.
ONE_PART_IN_FLIGHT = TransferConfig(max_concurrency=1)


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


def run_boto3(
    study: _studies.Study, bucket: str, s3: Any, config: TransferConfig | None = None
) -> dict[str, float | int | str]:
    """boto3 ``upload_file`` of every instance file, default transfer config unless given."""
    started = time.monotonic()
    for index, instance in enumerate(study.instances):
        s3.upload_file(str(instance.path), bucket, f"boto3/{index:05d}.dcm", Config=config)
    seconds = time.monotonic() - started
    stored = count_objects(s3, bucket)
    problem = "" if stored == len(study.instances) else f"{stored} objects in the bucket"
    return {"mb_per_second": study.bytes / seconds / 1e6, "seconds": seconds, "problem": problem}


def run_multipart(study: _studies.Study, bucket: str, s3: Any) -> dict[str, float | int | str]:
    """The request body ours gets, as one object: a multipart upload of ``PART_BYTES``
    parts, one in flight, read from the files as ours reads them from the socket."""
    body = _client.instances_body(study.instances)
    key = "multipart/body"
    started = time.monotonic()
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts: list[dict[str, Any]] = []
    buffer = bytearray()

    def send() -> None:
        number = len(parts) + 1
        answer = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=bytes(buffer)
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        buffer.clear()

    for piece in body.pieces:
        if isinstance(piece, bytes):
            buffer += piece
            continue
        with open(piece.path, "rb") as f:
            f.seek(piece.offset)
            left = piece.count
            while left:
                chunk = f.read(min(READ_BYTES, left))
                buffer += chunk
                left -= len(chunk)
                if len(buffer) >= PART_BYTES:
                    send()
    if buffer or not parts:
        send()
    s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    seconds = time.monotonic() - started
    size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    problem = "" if size == body.length else f"object of {size} bytes, body {body.length}"
    return {"mb_per_second": study.bytes / seconds / 1e6, "seconds": seconds, "problem": problem}


def run_orthanc(orthanc: _servers.Orthanc, study: _studies.Study) -> dict[str, float | int | str]:
    """The chunked POST ours gets, to Orthanc storing on local disk."""
    reply = _client.post_instances(orthanc.port, orthanc.path, study.instances, chunked=True)
    orthanc.release_space()
    return {
        "mb_per_second": study.bytes / reply.seconds / 1e6,
        "seconds": reply.seconds,
        "problem": reply.problem or "",
    }


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of every CPU so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _own_cpu_seconds() -> float:
    """CPU seconds of this process, every thread (boto3's are the client)."""
    times = os.times()
    return times.user + times.system


class CpuShares:
    """Where a run's CPU went: the store, our server, this process, the machine.

    The store, the server and the client share two cores, so a target's
    MB/s says little without it: a run that keeps the machine busy is
    CPU-bound, one that leaves it idle waits on something else.
    """

    def __init__(self, store_pid: int, server_pid: int) -> None:
        self.store_pid, self.server_pid = store_pid, server_pid

    def __enter__(self) -> CpuShares:
        self._store = cpu_seconds(self.store_pid)
        self._server = cpu_seconds(self.server_pid)
        self._own = _own_cpu_seconds()
        self._ticks = _machine_ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        self.store = cpu_seconds(self.store_pid) - self._store
        self.server = cpu_seconds(self.server_pid) - self._server
        self.own = _own_cpu_seconds() - self._own
        busy, total = _machine_ticks()
        self.machine_busy = (busy - self._ticks[0]) / max(1, total - self._ticks[1])

    def figures(self, nbytes: int) -> dict[str, float]:
        gb = nbytes / 1e9
        return {
            "store_cpu_s_per_gb": self.store / gb,
            "server_cpu_s_per_gb": self.server / gb,
            "client_cpu_s_per_gb": self.own / gb,
            "machine_busy": self.machine_busy,
        }


def count_objects(s3: Any, bucket: str) -> int:
    """Instance objects in ``bucket`` (the server's claims and markers are not instances)."""
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        count += sum(1 for item in page.get("Contents", []) if item["Key"].endswith(".dcm"))
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--studies", nargs="+", choices=STUDIES, default=list(STUDIES))
    parser.add_argument("--out", type=Path, default=RESULTS, help="write s3.json and s3.md here")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    specs = _studies.FULL if args.size == "full" else _studies.TINY
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="s3-bench-") as tmp:
        work = Path(tmp)
        store = SeaweedFS(work / "seaweedfs")
        store.start()
        started: list[_servers.Started] = []
        try:
            s3 = store.client()
            # One bucket for the server (the bucket is checked at start-up),
            # emptied after each run; the others get a bucket per run.
            server_bucket = store.new_bucket()
            server = Ours(
                work / "server",
                ["--storage", f"s3://{server_bucket}/bench", "--s3-endpoint", store.endpoint],
                env={**os.environ, **credentials_env()},
            )
            started.append(server)
            orthanc: _servers.Orthanc | None = None
            if any("orthanc" in TARGETS[name] for name in args.studies):
                shim = _servers.compile_shim(work)
                orthanc = _servers.Orthanc(work / "orthanc", shim)
                started.append(orthanc)
                _servers.check_loopback_only(orthanc.pid)
            for name in args.studies:
                study = _studies.generate(work / "studies", name, specs[name])
                for run in range(args.runs):
                    for target in TARGETS[name]:
                        assert store.process is not None
                        # "server": ours, or Orthanc on its own target.
                        serving = orthanc.pid if target == "orthanc" and orthanc else server.pid
                        shares = CpuShares(store.process.pid, serving)
                        # The boto3 and multipart targets write a bucket of their own.
                        own_bucket = target not in ("ours", "orthanc")
                        bucket = store.new_bucket() if own_bucket else server_bucket
                        with shares:
                            if target == "ours":
                                result = run_ours(server, study.variant(run), bucket, s3)
                            elif target == "orthanc":
                                assert orthanc is not None
                                result = run_orthanc(orthanc, study.variant(run))
                            elif target == "boto3":
                                result = run_boto3(study, bucket, s3)
                            elif target == "boto3-1":
                                result = run_boto3(study, bucket, s3, ONE_PART_IN_FLIGHT)
                            else:
                                result = run_multipart(study, bucket, s3)
                        result.update(shares.figures(study.bytes))
                        if target != "orthanc":
                            _clear(s3, bucket)
                        if own_bucket:
                            # SeaweedFS frees a bucket's volumes only with the
                            # bucket: a new 1 GB bucket per run otherwise runs
                            # out of volume slots (InternalError) in one run.
                            s3.delete_bucket(Bucket=bucket)
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
            for process in reversed(started):
                process.stop()
            store.stop()
    summary = _summary(runs, args.studies)
    for line in summary["lines"]:
        print(line)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "s3.json").write_text(
        json.dumps({"size": args.size, "runs": runs, "summary": summary}, indent=1)
    )
    (args.out / "s3.md").write_text(_markdown(args, runs, summary))
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
        f"{result['study']:<5} {result['target']:<9} run {result['run']}: "
        f"{result['mb_per_second']:.1f} MB/s ({result['seconds']:.1f} s){rss}, "
        f"CPU-s/GB store {result['store_cpu_s_per_gb']:.2f} server "
        f"{result['server_cpu_s_per_gb']:.2f} client {result['client_cpu_s_per_gb']:.2f}, "
        f"machine busy {result['machine_busy']:.0%}"
    )


def _summary(runs: list[dict[str, Any]], studies: list[str]) -> dict[str, Any]:
    """Median MB/s per study and target, and ours / each other target."""
    summary: dict[str, Any] = {"studies": {}, "lines": []}
    for name in studies:
        medians = {
            target: statistics.median(
                r["mb_per_second"] for r in runs if r["study"] == name and r["target"] == target
            )
            for target in TARGETS[name]
        }
        ratios = {
            target: medians["ours"] / median
            for target, median in medians.items()
            if target != "ours"
        }
        ours = [r for r in runs if r["study"] == name and r["target"] == "ours"]
        peak = max(max(r["peak_rss_mib"], r["kernel_peak_rss_mib"]) for r in ours)
        summary["studies"][name] = {
            **medians,
            "ratios": ratios,
            # ours / boto3 upload_file: the figure issue 13 sets a target for on large.
            "ratio": ratios["boto3"],
            "ours_peak_rss_mib": peak,
        }
        others = ", ".join(
            f"{target} {medians[target]:.1f} MB/s (ours {ratios[target]:.0%})" for target in ratios
        )
        summary["lines"].append(
            f"{name}: ours {medians['ours']:.1f} MB/s, {others}; ours peak RSS {peak:.0f} MiB"
        )
    return summary


LABELS = {
    "ours": "twisted-stow, chunked POST",
    "boto3": "boto3 `upload_file` per instance",
    "boto3-1": "boto3 `upload_file`, max_concurrency=1",
    "multipart": "one multipart upload of the body",
    "orthanc": "Orthanc on local disk, chunked POST",
}


def _markdown(args: argparse.Namespace, runs: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# s3_bench: `--storage s3://` into SeaweedFS",
        "",
        (
            f"Run {when}, size `{args.size}`, {args.runs} run(s) per target (medians), "
            f"{os.cpu_count()} CPUs; load average at the end {os.getloadavg()[0]:.2f}."
        ),
        "",
        (
            "CPU-s/GB: medians of CPU seconds per GB of instance bytes, of the store (weed), "
            "the server (ours, or Orthanc on its row; 0 where the client talks to the store "
            "directly) and this benchmark process (the client for the boto3 and multipart "
            "rows); machine busy: the share of both CPUs' time not idle during the run, "
            "from /proc/stat (near 100% means the run was CPU-bound)."
        ),
        "",
        (
            "| study | target | MB/s median (runs) | ours / target | ours peak RSS MiB (runs) "
            "| CPU-s/GB store / server / client | machine busy |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for name, figures in summary["studies"].items():
        for target in TARGETS[name]:
            mine = [r for r in runs if r["study"] == name and r["target"] == target]
            each = ", ".join(f"{r['mb_per_second']:.0f}" for r in mine)
            ratio = "-" if target == "ours" else f"{figures['ratios'][target]:.0%}"
            rss = (
                ", ".join(f"{max(r['peak_rss_mib'], r['kernel_peak_rss_mib']):.0f}" for r in mine)
                if target == "ours"
                else "-"
            )
            cpu = " / ".join(
                f"{statistics.median(r[key] for r in mine):.2f}"
                for key in ("store_cpu_s_per_gb", "server_cpu_s_per_gb", "client_cpu_s_per_gb")
            )
            busy = statistics.median(r["machine_busy"] for r in mine)
            lines.append(
                f"| {name} | {LABELS[target]} | {figures[target]:.1f} ({each}) | {ratio} | {rss} "
                f"| {cpu} | {busy:.0%} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
