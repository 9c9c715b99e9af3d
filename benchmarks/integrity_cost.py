"""What the per-instance SHA-256 and gzip bodies cost: server CPU-s per GB and throughput.

POSTs the "large" study (20 x 50 MiB, ``_studies.FULL``) to ``twistd -n
stow`` on 127.0.0.1 several times, each run with new UIDs, and reports for
each run the server's CPU seconds (user + system, ``/proc``) per GB of
instance bytes and the client's MB/s.  With ``--gzip`` the same body is also
sent gzip-compressed (``Content-Encoding: gzip``, compressed once per run
before the clock starts) and the figures are per GB of decoded bytes.

    python3 -m benchmarks.integrity_cost                 # 3 runs, plain and gzip
    python3 -m benchmarks.integrity_cost --size tiny     # seconds
    python3 -m benchmarks.integrity_cost --study ct \
        --compare before=/path/to/old/checkout --compare after=.   # side by side

``--compare NAME=CHECKOUT`` (repeatable) starts one server per checkout
(``PYTHONPATH=CHECKOUT``, so its ``twisted_stow`` is imported) and POSTs the
study to each in turn, ``--runs`` rounds, so every code tree meets the same
load from the machine's other work; it reports medians of CPU-s/GB, CPU-ms
per instance, MB/s and how busy the machine was (/proc/stat) per tree (plain
bodies only).

Run it on the commit before issue 19 (``PYTHONPATH=<that checkout>``) for
the "before" figures; docs/DESIGN.md ("Integrity") quotes both.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _client, _studies
from benchmarks._server_usage import cpu_seconds
from benchmarks._servers import Ours
from benchmarks.floor_bench import machine_ticks

GB = 10**9
# Level 1: a client on a slow link compresses as fast as it can send.
GZIP_LEVEL = 1
TIMEOUT_SECONDS = 600


def body_bytes(instances: tuple[_studies.Instance, ...]) -> bytes:
    """The multipart body of ``instances`` as bytes (for compression)."""
    out = bytearray()
    for piece in _client.instances_body(instances).pieces:
        if isinstance(piece, bytes):
            out += piece
        else:
            with open(piece.path, "rb") as f:
                f.seek(piece.offset)
                out += f.read(piece.count)
    return bytes(out)


def post_gzip(port: int, compressed: Path, expected: int) -> tuple[int, float, str]:
    """POST the compressed body from a file; (status, seconds, problem)."""
    length = compressed.stat().st_size
    head = (
        f"POST /studies HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: {_client.CONTENT_TYPE}\r\nContent-Encoding: gzip\r\n"
        f"Accept: application/dicom+json\r\nContent-Length: {length}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_SECONDS) as sock:
        sock.sendall(head)
        with open(compressed, "rb") as f:
            sock.sendfile(f)
        response = http.client.HTTPResponse(sock)
        response.begin()
        answer = response.read()
    seconds = time.monotonic() - started
    problem = ""
    if response.status != 200:
        problem = f"status {response.status}: {answer[:200]!r}"
    else:
        stored = json.loads(answer)["00081199"]["Value"]
        if len(stored) != expected:
            problem = f"{len(stored)} of {expected} stored"
    return response.status, seconds, problem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-gzip", action="store_true", help="plain bodies only")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--study", default="large", help="a study of _studies.FULL")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=CHECKOUT",
        help="a code tree to measure side by side (repeatable)",
    )
    args = parser.parse_args(argv)
    spec = (_studies.FULL if args.size == "full" else _studies.TINY)[args.study]
    if args.compare:
        return compare(args, spec)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="integrity-cost-") as tmp:
        work = Path(tmp)
        study = _studies.generate(work / "studies", "large", spec)
        server = Ours(work / "server")
        results: dict[str, list[tuple[float, float]]] = {"plain": [], "gzip": []}
        try:
            warm = study.variant(999)
            _client.post_instances(server.port, "/studies", warm.instances, chunked=False)
            server.release_space()
            for run in range(args.runs):
                variant = study.variant(run)
                cpu = cpu_seconds(server.pid)
                reply = _client.post_instances(
                    server.port, "/studies", variant.instances, chunked=False
                )
                used = cpu_seconds(server.pid) - cpu
                if reply.problem:
                    print(f"plain run {run}: {reply.problem}", file=sys.stderr)
                    return 1
                results["plain"].append((used / (study.bytes / GB), study.bytes / reply.seconds))
                server.release_space()
                if args.no_gzip:
                    continue
                variant = study.variant(500 + run)
                compressed = work / "body.gz"
                compressed.write_bytes(
                    gzip.compress(body_bytes(variant.instances), compresslevel=GZIP_LEVEL)
                )
                cpu = cpu_seconds(server.pid)
                _, seconds, problem = post_gzip(server.port, compressed, len(variant.instances))
                used = cpu_seconds(server.pid) - cpu
                if problem:
                    print(f"gzip run {run}: {problem}", file=sys.stderr)
                    return 1
                ratio = study.bytes / compressed.stat().st_size
                results["gzip"].append((used / (study.bytes / GB), study.bytes / seconds))
                print(f"gzip run {run}: compression ratio {ratio:.2f}")
                os.unlink(compressed)
                server.release_space()
        finally:
            server.stop()
    for mode, values in results.items():
        if not values:
            continue
        cpu_per_gb = [v[0] for v in values]
        rate = [v[1] / 1e6 for v in values]
        print(
            f"{mode}: {statistics.median(cpu_per_gb):.2f} CPU-s/GB "
            f"(runs {', '.join(f'{c:.2f}' for c in cpu_per_gb)}), "
            f"{statistics.median(rate):.0f} MB/s (runs {', '.join(f'{r:.0f}' for r in rate)})"
        )
    return 0


def compare(args: argparse.Namespace, spec: list[tuple[int, int]]) -> int:
    """One server per ``--compare`` checkout, the study POSTed to each in turn."""
    trees = [tuple(item.split("=", 1)) for item in args.compare]
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="integrity-cost-") as tmp:
        work = Path(tmp)
        study = _studies.generate(work / "studies", args.study, spec)
        servers: dict[str, Ours] = {}
        figures: dict[str, list[tuple[float, float, float, float]]] = {
            name: [] for name, _ in trees
        }
        try:
            for name, checkout in trees:
                env = dict(os.environ, PYTHONPATH=str(Path(checkout).absolute()))
                servers[name] = Ours(work / f"server-{name}", env=env)
                warm = study.variant(900 + len(servers))
                _client.post_instances(
                    servers[name].port, "/studies", warm.instances, chunked=False
                )
                servers[name].release_space()
            for run in range(args.runs):
                for offset, (name, _) in enumerate(trees):
                    server = servers[name]
                    variant = study.variant(100 * run + offset)
                    cpu = cpu_seconds(server.pid)
                    ticks = machine_ticks()
                    reply = _client.post_instances(
                        server.port, "/studies", variant.instances, chunked=False
                    )
                    used = cpu_seconds(server.pid) - cpu
                    busy, total = machine_ticks()
                    if reply.problem:
                        print(f"{name} run {run}: {reply.problem}", file=sys.stderr)
                        return 1
                    figures[name].append(
                        (
                            used / (study.bytes / GB),
                            1000 * used / len(study.instances),
                            study.bytes / reply.seconds / 1e6,
                            (busy - ticks[0]) / max(1, total - ticks[1]),
                        )
                    )
                    print(f"{name} run {run}: {figures[name][-1]}", flush=True)
                    server.release_space()
        finally:
            for server in servers.values():
                server.stop()
    print(f"{args.study}: {len(study.instances)} instances, {study.bytes / 1e6:.0f} MB")
    for name, values in figures.items():
        cpu_gb, cpu_ms, rate, machine = (sorted(v[i] for v in values) for i in range(4))
        print(
            f"{name}: {statistics.median(cpu_gb):.2f} CPU-s/GB "
            f"({', '.join(f'{c:.2f}' for c in cpu_gb)}), "
            f"{statistics.median(cpu_ms):.2f} CPU-ms/instance, "
            f"{statistics.median(rate):.0f} MB/s ({', '.join(f'{r:.0f}' for r in rate)}), "
            f"machine {statistics.median(machine):.0%} busy"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
