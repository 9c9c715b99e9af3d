"""Backpressure: what a real ``twistd -n stow`` buffers while a slow disk stores 1 GiB.

The server runs in a child process whose ``os.writev`` (used only by the
staging writer) is throttled to ``--disk-rate`` MB/s.  A client sends one
``multipart/related`` request of ``--size`` as fast as loopback allows.
Every 20 ms the script samples the server's RSS, the bytes the client has
handed to its socket, and the bytes that have reached the staging file: the
difference is what sits between client and disk (the kernel's socket buffers
on both sides plus what the server holds), and with backpressure it stays a
few MiB however large the body is.

    python3 -m benchmarks.backpressure                  # 1 GiB at a 100 MB/s disk
    python3 -m benchmarks.backpressure --size 256M --disk-rate 50

Not part of the test run; tests/memory/test_slow_disk_gib.py and
tests/integration/test_backpressure.py assert the bound.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks import _client
from benchmarks._dicom import framing_bytes
from benchmarks._servers import Ours
from tests.helpers import iter_multipart, multipart_content_type
from twisted_stow.core.config import parse_size

MIB = 1024 * 1024
SAMPLE_SECONDS = 0.02
# Generated in 256 KiB pieces, what one read of the server takes.
CHUNK_BYTES = 256 * 1024
DISK_RATE_ENV = "STOW_BENCH_DISK_MB_PER_S"

# Run in front of twistd's arguments: throttle os.writev to a disk rate, then
# run twistd as usual (tests.launcher.Twistd's ``runner``).
_THROTTLED_TWISTD = f"""
import os, sys, time
rate = float(os.environ["{DISK_RATE_ENV}"]) * 1e6
real_writev = os.writev
def slow_writev(fd, buffers):
    written = real_writev(fd, buffers)
    time.sleep(written / rate)
    return written
os.writev = slow_writev
sys.argv = ["twistd"] + sys.argv[1:]
from twisted.scripts.twistd import run
run()
"""


def start_server(workdir: Path, disk_rate: float) -> Ours:
    env = {**os.environ, DISK_RATE_ENV: str(disk_rate)}
    # --workers 1: the throttled os.writev exists in this one interpreter only;
    # a worker process would be a fresh one, writing at the disk's own speed.
    return Ours(
        workdir,
        ["--workers", "1"],
        env=env,
        runner=[sys.executable, "-c", _THROTTLED_TWISTD],
    )


def staged_bytes(storage: Path) -> int:
    total = 0
    for entry in (storage / ".staging").iterdir():
        try:
            total += entry.stat().st_size
        except FileNotFoundError:
            pass
    return total


def run(size: int, disk_rate: float, workdir: Path) -> dict[str, float]:
    server = start_server(workdir, disk_rate)
    storage = server.storage
    process = psutil.Process(server.pid)
    try:
        time.sleep(0.5)
        baseline_rss = process.memory_info().rss
        pieces = iter_multipart([size], chunk_size=CHUNK_BYTES)
        body = _client.Body(multipart_content_type(), framing_bytes(1) + size, pieces)
        sent = 0
        done = threading.Event()
        samples: list[tuple[float, int, int, int]] = []  # time, sent, staged, rss

        def progress(count: int) -> None:
            nonlocal sent
            sent = count

        def sample() -> None:
            while not done.is_set():
                try:
                    samples.append(
                        (time.monotonic(), sent, staged_bytes(storage), process.memory_info().rss)
                    )
                except psutil.Error:
                    return
                time.sleep(SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # The part is not DICOM: the answer is a 409, the flow of bytes the same.
        reply = _client.post(
            server.port,
            server.path,
            body,
            chunked=False,
            check=False,
            chunk_bytes=CHUNK_BYTES,
            on_progress=progress,
        )
        done.set()
        sampler.join()
        # Between client and disk, sampled while the body was still being sent.
        in_between = [s - staged for _, s, staged, _ in samples if s < body.length]
        return {
            "status": reply.status,
            "seconds": reply.seconds,
            "mb_per_s": body.length / reply.seconds / 1e6,
            "max_between_mib": max(in_between) / MIB,
            "baseline_rss_mib": baseline_rss / MIB,
            "peak_rss_mib": max(rss for *_, rss in samples) / MIB,
            "samples": len(samples),
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1G", help="payload of the one part (default 1G)")
    parser.add_argument(
        "--disk-rate", type=float, default=100.0, help="staging write rate in MB/s (default 100)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where the storage goes")
    args = parser.parse_args()
    size = parse_size(args.size)
    workdir = Path(tempfile.mkdtemp(prefix="stow-backpressure-", dir=args.workdir))
    try:
        if shutil.disk_usage(workdir).free < size + 2 * 1024**3:
            raise SystemExit(f"not enough free space under {workdir}")
        result = run(size, args.disk_rate, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        "| body | disk rate | status | elapsed | throughput | max client→disk gap "
        "| server RSS baseline → peak |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.size} | {args.disk_rate:g} MB/s | {result['status']:.0f} "
        f"| {result['seconds']:.1f} s | {result['mb_per_s']:.1f} MB/s "
        f"| {result['max_between_mib']:.1f} MiB "
        f"| {result['baseline_rss_mib']:.0f} → {result['peak_rss_mib']:.0f} MiB |"
    )


if __name__ == "__main__":
    main()
