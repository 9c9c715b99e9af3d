"""Peak RSS of a real ``twistd -n stow`` while it receives one large STOW-RS request.

What it measures, per request size (``--sizes``) and run (``--runs``):

* the server process's RSS, sampled with psutil every 20 ms in a thread while
  the request is in flight: the baseline just before the first byte and the
  peak; also the kernel's own high-water mark (``VmHWM`` in
  /proc/PID/status, reset before each upload through /proc/PID/clear_refs),
  which no sampling interval can miss;
* elapsed time from connect to the last response byte, and throughput in
  MB/s (10^6 bytes per second) of request body;
* the server's CPU seconds (user + system) during the upload;
* the client-side check: status 200, the response lists every SOP Instance
  UID sent and no failure, the storage holds one file per part with the
  bytes sent (and the first one reads back with pydicom), and the staging
  directory is empty;
* the storage's size on disk, after which the stored data is deleted.

How: one server is started (``--fresh-server``: one per run) with
``--listen tcp:0:interface=127.0.0.1`` and a temporary ``--storage``; its log
is drained in a thread.  Each request is one ``multipart/related`` body of
exactly the requested size (to within a byte: DICOM files have even lengths),
generated on the fly and sent over a raw socket with Content-Length (or
``--chunked``) in 256 KiB writes, so the client never holds it.  Every part
is a valid PS3.10 Secondary Capture instance (``benchmarks/_dicom.py``) with
fresh UIDs whose pixel bytes are streamed: a 2 GiB request of 4 MiB parts
stores 512 real instances.  ``--part-size all`` sends one huge part instead.

Run from the repository root:

    python3 -m benchmarks.peak_rss --sizes 20M,2G --runs 3

The issue's target is a server peak RSS under 150 MiB for both sizes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchmarks import _client
from benchmarks._dicom import MAX_PART_BYTES, Part, framing_bytes, plan_request
from benchmarks._server_usage import (
    RssSampler,
    cpu_seconds,
    kernel_peak,
    reset_kernel_peak,
    tree,
)
from benchmarks._servers import Ours
from tests.helpers import iter_multipart, multipart_content_type
from twisted_stow.core.config import parse_size

REPO = Path(__file__).resolve().parent.parent

MIB = 1024 * 1024
TARGET_PEAK_MIB = 150
CHUNK_BYTES = 256 * 1024
DEFAULT_PART_SIZE = "4M"
DISK_HEADROOM_BYTES = 2 * 1024**3
STAGING_DIR_NAME = ".staging"
INDEX_DIR_NAME = ".sop-index"


# The client.


def request_body(parts: list[Part]) -> _client.Body:
    """The multipart body of ``parts``, generated as it is sent, in 256 KiB pieces."""
    pieces = iter_multipart((part.chunks() for part in parts), chunk_size=CHUNK_BYTES)
    length = framing_bytes(len(parts)) + sum(part.size for part in parts)
    return _client.Body(multipart_content_type(), length, pieces)


def response_problems(reply: _client.Reply) -> list[str]:
    """Why the answer is not "200, every part stored"; empty when it is."""
    problems = [reply.problem] if reply.problem else []
    if reply.status != 200 and not problems:  # not retried here: a 503 fails the run too
        problems.append(f"status {reply.status}")
    if reply.sent_bytes != reply.body_bytes:
        problems.append(f"answered after {reply.sent_bytes} of {reply.body_bytes} B")
    return problems


# The storage.


@dataclass
class Usage:
    """What a run left in storage."""

    files: int
    apparent_bytes: int
    allocated_bytes: int
    staging_leftovers: int


def storage_usage(root: Path, parts: list[Part]) -> Usage:
    """Count this run's stored files, their size and blocks, and staging leftovers."""
    files = apparent = allocated = 0
    for path in _stored_files(root, parts):
        stat = path.stat()
        files += 1
        apparent += stat.st_size
        allocated += stat.st_blocks * 512
    staging = root / STAGING_DIR_NAME
    leftovers = sum(1 for _ in staging.iterdir()) if staging.is_dir() else 0
    return Usage(files, apparent, allocated, leftovers)


def storage_problems(root: Path, parts: list[Part], usage: Usage) -> list[str]:
    """Why the stored files are not the parts sent; empty when they are."""
    problems = []
    if usage.files != len(parts):
        problems.append(f"{usage.files} files stored for {len(parts)} parts")
    if usage.apparent_bytes != sum(part.size for part in parts):
        problems.append(f"stored {usage.apparent_bytes} B, sent {sum(p.size for p in parts)} B")
    if usage.staging_leftovers:
        problems.append(f"{usage.staging_leftovers} files left in {STAGING_DIR_NAME}/")
    first = next(root.glob(f"*/*/{parts[0].sop_instance_uid}.dcm"), None)
    if first is None:
        return [*problems, "first part not found in storage"]
    from pydicom import dcmread

    ds = dcmread(first, defer_size=1024)  # seeks past Pixel Data, reads the trailer
    if (ds.SOPInstanceUID, ds.Rows, ds.Columns) != (
        parts[0].sop_instance_uid,
        parts[0].rows,
        parts[0].columns,
    ):
        problems.append("first stored part does not read back as sent")
    return problems


def clear_storage(root: Path, parts: list[Part]) -> None:
    """Delete what this run stored: its study directory and, when the server
    keeps one, the entries of its SOP Instance UIDs in the duplicate index
    (``.sop-index/<SOPInstanceUID>``), as if they had never been stored."""
    study_dirs = {path.parent.parent for path in _stored_files(root, parts)}
    for directory in study_dirs:
        shutil.rmtree(directory)
    index = root / INDEX_DIR_NAME
    for part in parts:
        (index / part.sop_instance_uid).unlink(missing_ok=True)


def _stored_files(root: Path, parts: list[Part]) -> list[Path]:
    """The stored files of ``parts`` (<root>/<study>/<series>/<sop>.dcm)."""
    wanted = {f"{part.sop_instance_uid}.dcm" for part in parts}
    return [
        path
        for path in root.glob("*/*/*.dcm")
        if path.name in wanted and not path.relative_to(root).parts[0].startswith(".")
    ]


def ensure_disk(root: Path, body_bytes: int) -> None:
    free = shutil.disk_usage(root).free
    if free < body_bytes + DISK_HEADROOM_BYTES:
        raise SystemExit(
            f"only {free / 1024**3:.1f} GiB free under {root}; need"
            f" {(body_bytes + DISK_HEADROOM_BYTES) / 1024**3:.1f} GiB"
        )


# One run.


@dataclass
class RunResult:
    size_label: str
    part_count: int
    body_bytes: int
    baseline_rss: int
    peak_rss: int
    kernel_peak_rss: int | None
    seconds: float
    send_seconds: float
    server_cpu_seconds: float
    usage: Usage
    problems: list[str]
    samples: list[tuple[float, int]]

    @property
    def mb_per_second(self) -> float:
        return self.body_bytes / self.seconds / 1e6

    @property
    def ok(self) -> bool:
        return not self.problems


def part_count(size: int, part_size: int | None) -> int:
    if part_size is None:
        return 1
    return max(1, round(size / part_size))


def run_once(
    server: Ours, label: str, size: int, part_size: int | None, chunked: bool
) -> RunResult:
    """Send one request of ``size`` bytes and measure the server meanwhile."""
    ensure_disk(server.storage, size)
    parts = plan_request(size, part_count(size, part_size))
    body = request_body(parts)
    time.sleep(0.5)  # let the server settle after the previous run
    # The whole server: its main process and every worker.
    baseline = sum(p.memory_info().rss for p in tree(server.pid))
    has_kernel_peak = reset_kernel_peak(server.pid)
    cpu_before = cpu_seconds(server.pid)
    with RssSampler(server.pid) as sampler:
        reply = _client.post(
            server.port,
            server.path,
            body,
            chunked=chunked,
            uids=[part.sop_instance_uid for part in parts],
            chunk_bytes=CHUNK_BYTES,
        )
    cpu = cpu_seconds(server.pid) - cpu_before
    peak_hwm = kernel_peak(server.pid) if has_kernel_peak else None
    usage = storage_usage(server.storage, parts)
    problems = response_problems(reply)
    if reply.status == 200:
        problems += storage_problems(server.storage, parts, usage)
    clear_storage(server.storage, parts)
    return RunResult(
        label,
        len(parts),
        body.length,
        baseline,
        sampler.peak,
        peak_hwm,
        reply.seconds,
        reply.send_seconds,
        cpu,
        usage,
        problems,
        sampler.samples,
    )


# Reporting.


def mib(n: float) -> str:
    return f"{n / MIB:.1f}"


def print_run(index: int, result: RunResult) -> None:
    hwm = mib(result.kernel_peak_rss) if result.kernel_peak_rss is not None else "n/a"
    print(
        f"  run {index}: {result.body_bytes} B in {result.part_count} parts;"
        f" baseline {mib(result.baseline_rss)} MiB, peak {mib(result.peak_rss)} MiB"
        f" (VmHWM {hwm} MiB); {result.seconds:.2f} s ({result.send_seconds:.2f} s sending),"
        f" {result.mb_per_second:.0f} MB/s, server CPU {result.server_cpu_seconds:.1f} s;"
        f" stored {result.usage.files} files, {mib(result.usage.allocated_bytes)} MiB on disk;"
        f" check {'OK' if result.ok else 'FAILED: ' + '; '.join(result.problems)}",
        flush=True,
    )


def median_range(values: list[float], fmt: str = "{:.1f}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    middle = fmt.format(statistics.median(values))
    return f"{middle} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def markdown_table(results: dict[str, list[RunResult]], mode: str) -> str:
    rows = [
        (
            "| size | parts | framing | runs | server peak RSS MiB | VmHWM MiB | baseline RSS MiB"
            f" | MB/s | elapsed s | server CPU s | check (< {TARGET_PEAK_MIB} MiB) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, runs in results.items():
        hwms = [r.kernel_peak_rss / MIB for r in runs if r.kernel_peak_rss is not None]
        worst = max(max(r.peak_rss for r in runs), max(hwms, default=0) * MIB)
        verdict = "all 200, all stored" if all(r.ok for r in runs) else "FAILED"
        verdict += ", under target" if worst < TARGET_PEAK_MIB * MIB else ", OVER target"
        rows.append(
            f"| {label} | {runs[0].part_count} | {mode} | {len(runs)}"
            f" | {median_range([r.peak_rss / MIB for r in runs])}"
            f" | {median_range(hwms) if hwms else 'n/a'}"
            f" | {median_range([r.baseline_rss / MIB for r in runs])}"
            f" | {median_range([r.mb_per_second for r in runs], '{:.0f}')}"
            f" | {median_range([r.seconds for r in runs], '{:.2f}')}"
            f" | {median_range([r.server_cpu_seconds for r in runs])}"
            f" | {verdict} |"
        )
    return "\n".join(rows)


def write_trace(path: Path, results: dict[str, list[RunResult]]) -> None:
    """The RSS time series of every run, as CSV."""
    with path.open("w") as out:
        out.write("size,run,seconds,rss_bytes\n")
        for label, runs in results.items():
            for index, result in enumerate(runs, 1):
                for seconds, rss in result.samples:
                    out.write(f"{label},{index},{seconds:.3f},{rss}\n")


# Command line.


def parse_part_size(text: str) -> int | None:
    if text.lower() in ("all", "one", "whole"):
        return None
    size = parse_size(text)
    if not 4096 <= size <= MAX_PART_BYTES:
        raise argparse.ArgumentTypeError(f"part size must be 4K..{MAX_PART_BYTES} bytes")
    return size


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        default="20M,2G",
        help="comma-separated request body sizes (binary units), default 20M,2G",
    )
    parser.add_argument("--runs", type=int, default=1, help="runs per size (default 1)")
    parser.add_argument(
        "--part-size",
        type=parse_part_size,
        default=DEFAULT_PART_SIZE,
        help=f"size of each DICOM part, or 'all' for one part per request"
        f" (default {DEFAULT_PART_SIZE})",
    )
    parser.add_argument(
        "--chunked",
        action="store_true",
        help="send Transfer-Encoding: chunked instead of Content-Length",
    )
    parser.add_argument(
        "--fresh-server",
        action="store_true",
        help="start a new server for every run (default: one for all runs)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the temporary storage goes (default: the system temp dir)",
    )
    parser.add_argument(
        "--trace",
        type=Path,
        default=None,
        help="write every run's RSS time series to this CSV file",
    )
    args = parser.parse_args(argv)
    args.sizes = [(label.strip(), parse_size(label)) for label in args.sizes.split(",")]
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, list[RunResult]]:
    server = None if args.fresh_server else Ours(workdir)
    results: dict[str, list[RunResult]] = {}
    try:
        for label, size in args.sizes:
            print(f"{label}:", flush=True)
            for index in range(1, args.runs + 1):
                current = server or Ours(workdir)
                try:
                    result = run_once(current, label, size, args.part_size, args.chunked)
                finally:
                    if server is None:
                        current.stop()
                print_run(index, result)
                results.setdefault(label, []).append(result)
    except BaseException:
        if server is not None:
            print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.stop()
    return results


def describe_environment() -> str:
    """Which server code and machine the numbers are for (read-only git)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*words: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO), *words], capture_output=True, text=True, env=env
        )
        return done.stdout.strip() if done.returncode == 0 else "?"

    dirty = git("diff", "--name-only", "HEAD", "--", "twisted_stow", "plugins")
    commit = git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")
    import twisted

    return (
        f"server code {commit}; Python {sys.version.split()[0]}, Twisted {twisted.__version__},"
        f" {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 1024**3:.0f} GiB RAM"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(describe_environment(), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="stow-peak-rss-", dir=args.workdir))
    try:
        results = measure(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.trace:
        write_trace(args.trace, results)
    mode = "chunked" if args.chunked else "Content-Length"
    print()
    print(markdown_table(results, mode))
    return 0 if all(r.ok for runs in results.values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
