#!/usr/bin/env python3
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

    python3 benchmarks/peak_rss.py --sizes 20M,2G --runs 3

The issue's target is a server peak RSS under 150 MiB for both sizes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._dicom import MAX_PART_BYTES, Part, framing_bytes, plan_request  # noqa: E402
from tests.helpers import iter_multipart, multipart_content_type  # noqa: E402
from twisted_stow.core.config import parse_size  # noqa: E402

MIB = 1024 * 1024
TARGET_PEAK_MIB = 150
SAMPLE_INTERVAL_SECONDS = 0.020
START_TIMEOUT_SECONDS = 30.0
RESPONSE_TIMEOUT_SECONDS = 600.0
CHUNK_BYTES = 256 * 1024
DEFAULT_PART_SIZE = "4M"
DISK_HEADROOM_BYTES = 2 * 1024**3
STAGING_DIR_NAME = ".staging"
INDEX_DIR_NAME = ".sop-index"
_STARTED = re.compile(rb"StowSite starting on (\d+)")
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"


# The server.


@dataclass
class Server:
    """A ``twistd -n stow`` process we started, and the tail of its log."""

    process: subprocess.Popen[bytes]
    port: int
    storage: Path
    log: deque[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid


def _twistd() -> str:
    beside = Path(sys.executable).with_name("twistd")
    return str(beside) if beside.exists() else "twistd"


def start_server(storage: Path) -> Server:
    """Start twistd on 127.0.0.1, port 0, and wait for its port in the log."""
    command = [
        _twistd(),
        "-n",
        "--pidfile=",
        "stow",
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--storage",
        str(storage),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=storage.parent
    )
    log: deque[bytes] = deque(maxlen=200)
    port: list[int] = []
    started = threading.Event()
    threading.Thread(target=_drain, args=(process, log, port, started), daemon=True).start()
    if not started.wait(START_TIMEOUT_SECONDS) or not port:
        stop_server(process)
        raise RuntimeError("twistd did not start:\n" + b"".join(log).decode(errors="replace"))
    return Server(process, port[0], storage, log)


def _drain(
    process: subprocess.Popen[bytes], log: deque[bytes], port: list[int], started: threading.Event
) -> None:
    """Read the server's log to its end so a full pipe never blocks it."""
    assert process.stdout is not None
    for line in process.stdout:
        log.append(line)
        match = _STARTED.search(line)
        if match and not started.is_set():
            port.append(int(match.group(1)))
            started.set()
    started.set()  # exited before starting: wake the waiter


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process we started (by PID) and wait for it."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# Memory of the server.


class RssSampler:
    """Samples a process's RSS every 20 ms in a thread; keeps the peak and the series."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL_SECONDS) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.samples: list[tuple[float, int]] = []

    def __enter__(self) -> RssSampler:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                rss = self._process.memory_info().rss
            except psutil.NoSuchProcess:
                return
            self.samples.append((time.monotonic() - self._start, rss))
            if self._stop.wait(self._interval):
                return

    @property
    def peak(self) -> int:
        return max(rss for _, rss in self.samples)


def reset_kernel_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where unsupported."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def kernel_peak(pid: int) -> int | None:
    """VmHWM of ``pid`` in bytes, or None off Linux."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# The client.


@dataclass
class Exchange:
    """What the client saw: response status and body, and when."""

    status: int
    body: bytes
    sent_bytes: int
    send_seconds: float
    total_seconds: float
    send_error: str | None


def request_head(port: int, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        "POST /studies HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Content-Type: {multipart_content_type()}\r\n"
        "Accept: application/dicom+json\r\n"
        f"{framing}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")


def body_chunks(parts: list[Part]) -> Iterator[bytes]:
    """The multipart body, generated as it is sent, in 256 KiB chunks."""
    return iter_multipart((part.chunks() for part in parts), chunk_size=CHUNK_BYTES)


def http_chunks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """``chunks`` in chunked transfer coding, one HTTP chunk each."""
    for chunk in chunks:
        yield b"%x\r\n" % len(chunk)
        yield chunk
        yield b"\r\n"
    yield b"0\r\n\r\n"


def send_request(port: int, parts: list[Part], body_length: int, chunked: bool) -> Exchange:
    """POST the body over a raw socket and read the whole response."""
    started = time.monotonic()
    sent = 0
    error = None
    with socket.create_connection(("127.0.0.1", port), timeout=RESPONSE_TIMEOUT_SECONDS) as sock:
        sock.sendall(request_head(port, None if chunked else body_length))
        pieces = http_chunks(body_chunks(parts)) if chunked else body_chunks(parts)
        try:
            for piece in pieces:
                sock.sendall(piece)
                sent += len(piece)
        except OSError as exc:  # the server answered early and closed
            error = f"{type(exc).__name__}: {exc}"
        send_seconds = time.monotonic() - started
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
    return Exchange(response.status, body, sent, send_seconds, time.monotonic() - started, error)


def response_problems(exchange: Exchange, parts: list[Part]) -> list[str]:
    """Why the response is not "200, every part stored"; empty when it is."""
    problems = []
    if exchange.send_error:
        problems.append(f"send failed after {exchange.sent_bytes} B: {exchange.send_error}")
    if exchange.status != 200:
        problems.append(f"status {exchange.status}: {exchange.body[:300]!r}")
    try:
        model = json.loads(exchange.body)
    except ValueError:
        return [*problems, "response is not JSON"]
    failed = model.get(_FAILED_SOP_SEQUENCE, {}).get("Value", [])
    if failed:
        problems.append(f"{len(failed)} parts in FailedSOPSequence: {failed[0]}")
    listed = {
        uid
        for item in model.get(_REFERENCED_SOP_SEQUENCE, {}).get("Value", [])
        for uid in item.get(_REFERENCED_SOP_INSTANCE_UID, {}).get("Value", [])
    }
    missing = {part.sop_instance_uid for part in parts} - listed
    if missing:
        problems.append(f"{len(missing)} of {len(parts)} parts not in ReferencedSOPSequence")
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
    server: Server, label: str, size: int, part_size: int | None, chunked: bool
) -> RunResult:
    """Send one request of ``size`` bytes and measure the server meanwhile."""
    ensure_disk(server.storage, size)
    parts = plan_request(size, part_count(size, part_size))
    body_bytes = framing_bytes(len(parts)) + sum(part.size for part in parts)
    time.sleep(0.5)  # let the server settle after the previous run
    baseline = psutil.Process(server.pid).memory_info().rss
    has_kernel_peak = reset_kernel_peak(server.pid)
    cpu_before = cpu_seconds(server.pid)
    with RssSampler(server.pid) as sampler:
        exchange = send_request(server.port, parts, body_bytes, chunked)
    cpu = cpu_seconds(server.pid) - cpu_before
    peak_hwm = kernel_peak(server.pid) if has_kernel_peak else None
    usage = storage_usage(server.storage, parts)
    problems = response_problems(exchange, parts)
    if exchange.status == 200:
        problems += storage_problems(server.storage, parts, usage)
    clear_storage(server.storage, parts)
    return RunResult(
        label,
        len(parts),
        body_bytes,
        baseline,
        sampler.peak,
        peak_hwm,
        exchange.total_seconds,
        exchange.send_seconds,
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
    storage = workdir / "store"
    storage.mkdir()
    server = None if args.fresh_server else start_server(storage)
    results: dict[str, list[RunResult]] = {}
    try:
        for label, size in args.sizes:
            print(f"{label}:", flush=True)
            for index in range(1, args.runs + 1):
                current = server or start_server(storage)
                try:
                    result = run_once(current, label, size, args.part_size, args.chunked)
                finally:
                    if server is None:
                        stop_server(current.process)
                print_run(index, result)
                results.setdefault(label, []).append(result)
    except BaseException:
        if server is not None:
            print(b"".join(server.log).decode(errors="replace")[-4000:], file=sys.stderr)
        raise
    finally:
        if server is not None:
            stop_server(server.process)
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
