#!/usr/bin/env python3
"""Backpressure: what a real ``twistd -n stow`` buffers while a slow disk stores 1 GiB.

The server runs in a child process whose ``os.writev`` (used only by the
staging writer) is throttled to ``--disk-rate`` MB/s.  A client sends one
``multipart/related`` request of ``--size`` as fast as loopback allows.
Every 20 ms the script samples the server's RSS, the bytes the client has
handed to its socket, and the bytes that have reached the staging file: the
difference is what sits between client and disk (the kernel's socket buffers
on both sides plus what the server holds), and with backpressure it stays a
few MiB however large the body is.

    python3 benchmarks/backpressure.py                  # 1 GiB at a 100 MB/s disk
    python3 benchmarks/backpressure.py --size 256M --disk-rate 50

Not part of the test run; tests/memory/test_slow_disk_gib.py and
tests/integration/test_backpressure.py assert the bound.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import iter_multipart, multipart_content_type  # noqa: E402
from twisted_stow.core.config import parse_size  # noqa: E402

BOUNDARY = "backpressure-benchmark"
MIB = 1024 * 1024
SAMPLE_SECONDS = 0.02
_STARTED = re.compile(rb"StowSite starting on (\d+)")

# The child: throttle os.writev to a disk rate, then run twistd as usual.
_SERVER = """
import os, sys, time
rate = float(sys.argv[1]) * 1e6
real_writev = os.writev
def slow_writev(fd, buffers):
    written = real_writev(fd, buffers)
    time.sleep(written / rate)
    return written
os.writev = slow_writev
sys.argv = ["twistd"] + sys.argv[2:]
from twisted.scripts.twistd import run
run()
"""


def start_server(storage: Path, disk_rate: float) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SERVER,
            str(disk_rate),
            "-n",
            "--pidfile=",
            "stow",
            "--storage",
            str(storage),
            "--listen",
            "tcp:0:interface=127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=storage.parent,
    )
    assert process.stdout is not None
    for line in process.stdout:
        match = _STARTED.search(line)
        if match:
            port = int(match.group(1))
            # Keep draining the log so the server never blocks on it.
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # type: ignore[union-attr]
            return process, port
    raise SystemExit("twistd did not start")


def staged_bytes(storage: Path) -> int:
    total = 0
    for entry in (storage / ".staging").iterdir():
        try:
            total += entry.stat().st_size
        except FileNotFoundError:
            pass
    return total


def run(size: int, disk_rate: float, workdir: Path) -> dict[str, float]:
    storage = workdir / "store"
    process, port = start_server(storage, disk_rate)
    server = psutil.Process(process.pid)
    try:
        time.sleep(0.5)
        baseline_rss = server.memory_info().rss
        chunks = iter_multipart([size], BOUNDARY, chunk_size=256 * 1024)
        body_length = sum(len(c) for c in iter_multipart([size], BOUNDARY, chunk_size=MIB))
        sent = 0
        done = threading.Event()
        samples: list[tuple[float, int, int, int]] = []  # time, sent, staged, rss

        def sample() -> None:
            while not done.is_set():
                try:
                    samples.append(
                        (time.monotonic(), sent, staged_bytes(storage), server.memory_info().rss)
                    )
                except psutil.Error:
                    return
                time.sleep(SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample, daemon=True)
        start = time.monotonic()
        sampler.start()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /studies HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                + f"Content-Type: {multipart_content_type(BOUNDARY)}\r\n".encode()
                + f"Content-Length: {body_length}\r\n\r\n".encode()
            )
            for chunk in chunks:
                sock.sendall(chunk)
                sent += len(chunk)
            answer = b""
            while data := sock.recv(65536):
                answer += data
        elapsed = time.monotonic() - start
        done.set()
        sampler.join()
        status = int(answer.split(b" ", 2)[1])
        # Between client and disk, sampled while the body was still being sent.
        in_between = [s - staged for _, s, staged, _ in samples if s < body_length]
        return {
            "status": status,
            "seconds": elapsed,
            "mb_per_s": body_length / elapsed / 1e6,
            "max_between_mib": max(in_between) / MIB,
            "baseline_rss_mib": baseline_rss / MIB,
            "peak_rss_mib": max(rss for *_, rss in samples) / MIB,
            "samples": len(samples),
        }
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


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
