#!/usr/bin/env python3
"""Throughput, memory and concurrency limits of twisted-stow, side by side
with Orthanc and with the machine's limits, in one run.

Run from the repository root (full size: about 13 minutes, 15 GiB of free
disk for temporary files, deleted at the end):

    python3 -m benchmarks.stow_bench                 # full size, 3 runs each
    python3 -m benchmarks.stow_bench --size tiny     # seconds (what CI runs)
    python3 -m benchmarks.stow_bench --only workers  # issue 12's table alone

What it does (benchmarks/README.md has the details):

1. writes the studies ("large" 20 x 50 MiB, "ct" 1000 x 512 KiB, "mixed",
   "huge" 82 x 50 MiB) as real DICOM files into a temp dir (``_studies.py``);
   every run sends them with new UIDs, and what a run stored is truncated
   before the next (``_servers.truncate_files`` says why);
2. starts our ``twistd -n stow``, Orthanc (+ DICOMweb, on 127.0.0.1 through
   the preloaded ``bind_loopback.c``) and a loopback discard sink;
3. throughput: one POST per study from the streaming client
   (``_client.py``), to each of them in turn, and the same bytes written to
   disk with an fsync per file; ``--runs`` times, interleaved;
4. concurrency: the ct study as 64 POSTs taken by 1, 4, 16 and 64 clients;
   then our server with ``--max-requests`` below the client count, with a
   probe (``_probe.py``) timing 503s from a process of its own;
5. memory: our server's peak RSS during the "huge" (> 4 GiB) POST;
6. workers (issue 12, point 7): on servers started for each run, ours at
   ``--workers 1`` and at the default beside Orthanc: 16 clients at once,
   each with its own CT series, then ct and large with one client; large
   with 4 clients beside the disk with 4 writers; the largest process's
   peak RSS beside the tree's (``--only workers`` runs this alone);
7. writes results.json, results.md and PNG plots to ``--out``.

Every run is checked: status 200, every SOP Instance UID sent listed as
stored and none failed; a run that is not is reported as an error.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path

import psutil

from benchmarks import _client, _report, _servers, _studies
from benchmarks._measurement import Measurement
from benchmarks._server_usage import RssSampler, cpu_seconds, kernel_peaks, reset_kernel_peak
from benchmarks._studies import Instance, Study
from twisted_stow.durable import fsync_directory

REPO = Path(__file__).resolve().parent.parent

MIB = 1024 * 1024
COPY_BYTES = 1024 * 1024
CONCURRENCY_REQUESTS = 64
DEFAULT_CLIENTS = (1, 4, 16, 64)
DEFAULT_MAX_REQUESTS = 4
# The workers scenario (issue 12): 16 clients at once, one series each, and
# the large study with 4 clients beside the disk with 4 writer threads.
WORKERS_CLIENTS = 16
LARGE_CLIENTS = 4
WARM_UP_PER_CLIENT = 4
SCENARIOS = ("throughput", "concurrency", "limit", "memory", "workers")
SETTLE_SECONDS = 0.3
# Free space left for everyone else while a full run holds its data.
DISK_HEADROOM_BYTES = 5 * 1024**3


# Targets: something that takes a list of requests and N clients.


class Target:
    name = "?"
    label = "?"
    process: _servers.Started | None = None

    def run(self, requests: Sequence[Sequence[Instance]], clients: int) -> _client.Batch:
        raise NotImplementedError

    def release_space(self) -> None:
        pass


class HttpTarget(Target):
    def __init__(self, name: str, label: str, server: _servers.Started, chunked: bool) -> None:
        self.name, self.label, self.process, self.chunked = name, label, server, chunked

    def run(self, requests: Sequence[Sequence[Instance]], clients: int) -> _client.Batch:
        assert self.process is not None
        check = not isinstance(self.process, _servers.Sink)
        return _client.run_clients(
            self.process.port,
            self.process.path,
            requests,
            clients,
            chunked=self.chunked,
            check=check,
        )

    def release_space(self) -> None:
        assert self.process is not None
        self.process.release_space()


class DiskTarget(Target):
    """The same bytes written as files (1 MiB writes, fsync per file), one
    thread per client: what the disk gives a server that stores durably."""

    name = "disk"
    label = "disk write + fsync"

    def __init__(self, directory: Path) -> None:
        self.root = directory
        self.runs = 0

    def release_space(self) -> None:
        _servers.truncate_files(self.root.glob("*/*"))

    def run(self, requests: Sequence[Sequence[Instance]], clients: int) -> _client.Batch:
        # A new directory per run, files truncated afterwards, like the servers'.
        self.runs += 1
        self.directory = self.root / str(self.runs)
        self.directory.mkdir(parents=True)
        queue = list(requests)
        lock = threading.Lock()
        batch = _client.Batch(clients)

        def writer(index: int) -> None:
            buffer = bytearray(COPY_BYTES)
            while True:
                with lock:
                    if not queue:
                        return
                    request = queue.pop()
                started = time.monotonic()
                for instance in request:
                    copy = self.directory / f"{index}-{instance.path.name}"
                    _copy_durably(instance, copy, buffer)
                fsync_directory(self.directory)
                seconds = time.monotonic() - started
                reply = _client.Reply(
                    200, len(request), _client.body_length(request), 0, seconds, seconds
                )
                with lock:
                    batch.replies.append(reply)

        started = time.monotonic()
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        batch.seconds = time.monotonic() - started
        return batch


def _copy_durably(instance: Instance, destination: Path, buffer: bytearray) -> None:
    view = memoryview(buffer)
    with open(instance.path, "rb", buffering=0) as source:
        fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while count := source.readinto(buffer):
                written = 0
                while written < count:
                    written += os.write(fd, view[written:count])
            os.fsync(fd)
        finally:
            os.close(fd)


# One measurement.


_tags = itertools.count(1)
TARGETS: list[Target] = []  # all of them, for release_space()


def fresh(study: Study, requests: int) -> list[tuple[Instance, ...]]:
    """``study`` with UIDs no run has sent yet, as ``requests`` POST bodies.

    Stored files are truncated, not deleted, between runs (see
    ``_servers.truncate_files``), so the same UIDs cannot be sent twice.
    """
    return fresh_study(study).split(requests)


def fresh_study(study: Study) -> Study:
    return study.variant(next(_tags))


def measure(
    scenario: str,
    study: Study,
    target: Target,
    requests: int,
    clients: int,
    run: int,
) -> Measurement:
    """POST ``study`` (new UIDs) as ``requests`` bodies with ``clients`` clients."""
    bodies = fresh(study, requests)
    for every in TARGETS:  # the last run's bytes: out of the page cache and disk
        every.release_space()
    time.sleep(SETTLE_SECONDS)  # let the previous run's teardown settle
    pid = target.process.pid if isinstance(target, HttpTarget) and target.process else None
    measured_process = pid is not None and not isinstance(target.process, _servers.Sink)
    probe = start_probe(target) if scenario == "limit" else None
    has_hwm = reset_kernel_peak(pid) if measured_process and pid else False
    cpu_before = cpu_seconds(pid) if measured_process and pid else 0.0
    peak = process_peak = processes = None
    cpu: float | None = None
    if measured_process and pid:
        with RssSampler(pid) as sampler:
            batch = target.run(bodies, clients)
        peak, process_peak = sampler.peak, sampler.process_peak
        processes = len(sampler.processes)
        cpu = cpu_seconds(pid) - cpu_before
    else:
        batch = target.run(bodies, clients)
    hwms = kernel_peaks(pid) if has_hwm and pid else None
    probed = stop_probe(probe) if probe is not None else []
    ok = [r for r in batch.replies if r.status == 200 and r.problem is None]
    answers: dict[str, int] = {}
    for reply in batch.replies:
        answers[str(reply.status)] = answers.get(str(reply.status), 0) + 1
    problems = sorted({r.problem for r in batch.replies if r.problem})
    if len(ok) != len(bodies):
        problems.append(f"{len(ok)} of {len(bodies)} requests stored")
    result = Measurement(
        scenario=scenario,
        study=study.name,
        target=target.name,
        clients=clients,
        run=run,
        seconds=batch.seconds,
        body_bytes=sum(r.body_bytes for r in ok),
        instances=sum(r.instances for r in ok),
        answers=answers,
        latencies=[r.seconds for r in ok],
        refusal_latencies=[r.status_seconds for r in batch.replies if r.status == 503],
        probe_refusal_latencies=[p["ms"] / 1000 for p in probed if p["status"] == 503],
        probe_admitted=sum(1 for p in probed if p["status"] == 100),
        peak_rss=peak,
        kernel_peak_rss=sum(hwms) if hwms else None,
        peak_process_rss=process_peak,
        kernel_peak_process_rss=max(hwms) if hwms else None,
        processes=processes,
        cpu_seconds=cpu,
        problems=problems,
        load_average=os.getloadavg(),
    )
    print("   ", _report.one_line(result), flush=True)
    return result


PROBE_INTERVAL_SECONDS = 0.05


def start_probe(target: Target) -> subprocess.Popen[str]:
    """``_probe.py`` against ``target``'s server, in its own process."""
    assert target.process is not None
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks._probe",
            str(target.process.port),
            target.process.path,
            str(PROBE_INTERVAL_SECONDS),
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def stop_probe(probe: subprocess.Popen[str]) -> list[dict[str, float]]:
    out, _ = probe.communicate(input="", timeout=30)  # stdin closes: it stops
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# The scenarios.


def warm_up(study: Study, targets: list[Target]) -> None:
    """One unrecorded POST per target: a server's first request pays for
    imports, thread start-up and first allocations (measured: the first
    large POST ran at half the speed of the next ones).  The large study
    also makes the page cache pages that later runs recycle."""
    print(f"warm-up: one POST of {study.name} per target", flush=True)
    for target in targets:
        batch = target.run(fresh(study, 1), 1)
        problems = [r.problem or f"status {r.status}" for r in batch.replies if r.status != 200]
        if problems:
            raise RuntimeError(f"warm-up against {target.label} failed: {problems}")


def throughput(
    studies: dict[str, Study], targets: list[Target], runs: int, results: list[Measurement]
) -> None:
    for name in ("large", "ct", "mixed"):
        study = studies[name]
        print(f"throughput, {name}: {len(study.instances)} instances, {study.bytes / MIB:.0f} MiB")
        for run in range(1, runs + 1):
            for target in targets:
                results.append(measure("throughput", study, target, 1, 1, run))


def concurrency(
    study: Study,
    targets: list[Target],
    clients: Sequence[int],
    runs: int,
    results: list[Measurement],
) -> None:
    requests = min(CONCURRENCY_REQUESTS, len(study.instances))
    each = study.bytes / requests / MIB
    print(f"concurrency: {study.name} as {requests} POSTs of ~{each:.1f} MiB")
    for count in clients:
        print(f"  {count} clients")
        for run in range(1, runs + 1):
            for target in targets:
                results.append(measure("concurrency", study, target, requests, count, run))


def limit(
    study: Study,
    target: Target,
    clients: Sequence[int],
    runs: int,
    results: list[Measurement],
) -> None:
    requests = min(CONCURRENCY_REQUESTS, len(study.instances))
    for count in clients:
        print(f"  {count} clients against {target.label}")
        for run in range(1, runs + 1):
            results.append(measure("limit", study, target, requests, count, run))


def workers(
    studies: dict[str, Study],
    runs: int,
    workdir: Path,
    start: Callable[[Callable[[], _servers.Started]], _servers.Started],
    orthanc: Callable[[Path], _servers.Started] | None,
    disk: DiskTarget,
    results: list[Measurement],
) -> None:
    """Issue 12, point 7: ours at ``--workers 1`` and at the default beside
    Orthanc, each run on servers started for it.

    A server that took the runs before carries their heap and page-cache
    history (RSS is not given back), so every run starts all three afresh,
    warms them up uncounted, measures them in an order that rotates run by
    run, and stops them.  The disk baseline with as many writer threads as
    clients is measured in the same run as the 4-client large POSTs.
    """
    ct16 = studies["ct16"]
    series = WORKERS_CLIENTS  # _studies makes ct16 of as many equal series
    print(
        f"workers: {series} clients each with its own series of"
        f" {len(ct16.instances) // series} x {ct16.instances[0].size // 1024} KiB;"
        f" ct and large with one client; large with {LARGE_CLIENTS} clients and the disk"
    )
    # As before the other scenarios: the page-cache pages later runs recycle.
    warm_up(studies["large"], [disk])
    for run in range(1, runs + 1):
        here = workdir / f"workers-{run}"
        ours_1 = start(partial(_servers.Ours, here / "ours-w1", ["--workers", "1"]))
        ours = start(partial(_servers.Ours, here / "ours"))
        targets = [
            HttpTarget("ours-w1", "twisted-stow --workers 1 (chunked)", ours_1, True),
            HttpTarget("ours", "twisted-stow, default workers (chunked)", ours, True),
        ]
        if orthanc is not None:
            peer = start(partial(orthanc, here / "orthanc"))
            targets.append(HttpTarget("orthanc", "Orthanc (chunked)", peer, True))
        TARGETS.extend(targets)
        try:
            for target in targets:
                warm_up_workers(studies, target)
            turn = (run - 1) % len(targets)
            order = targets[turn:] + targets[:turn]
            print(f"  run {run}: {', '.join(t.name for t in order)}", flush=True)
            for target in order:
                results.append(measure("workers", ct16, target, series, series, run))
            for name in ("ct", "large"):
                for target in order:
                    results.append(measure("workers", studies[name], target, 1, 1, run))
            pair: list[Target] = [targets[1], disk]
            for each in pair if run % 2 else pair[::-1]:
                results.append(
                    measure("workers", studies["large"], each, LARGE_CLIENTS, LARGE_CLIENTS, run)
                )
        finally:
            for target in targets:
                TARGETS.remove(target)
                assert target.process is not None
                target.process.stop()
                target.release_space()


def warm_up_workers(studies: dict[str, Study], target: HttpTarget) -> None:
    """Uncounted: a few instances of every series at once (so that every
    worker process gets connections), then one large instance."""
    ct16 = fresh(studies["ct16"], WORKERS_CLIENTS)
    small = [request[:WARM_UP_PER_CLIENT] for request in ct16]
    large = fresh(studies["large"], len(studies["large"].instances))[:1]
    for requests, clients in ((small, WORKERS_CLIENTS), (large, 1)):
        batch = target.run(requests, clients)
        problems = [r.problem or f"status {r.status}" for r in batch.replies if r.status != 200]
        if problems:
            raise RuntimeError(f"warm-up against {target.label} failed: {problems}")


# Command line.


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size",
        choices=("full", "medium", "tiny"),
        default="full",
        help="study sizes (_studies.py): full, a quarter of it, or CI's tiny",
    )
    parser.add_argument("--runs", type=int, default=None, help="runs per point (tiny 1, else 3)")
    parser.add_argument(
        "--clients",
        default=",".join(map(str, DEFAULT_CLIENTS)),
        help="concurrency levels (default 1,4,16,64)",
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=DEFAULT_MAX_REQUESTS,
        help=f"our server's --max-requests for the limit runs (default {DEFAULT_MAX_REQUESTS})",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results", help="where results go"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="temp dir parent")
    parser.add_argument(
        "--no-orthanc", action="store_true", help="skip Orthanc (when it is not installed)"
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios to run, of {','.join(SCENARIOS)} (default: all)",
    )
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.size == "tiny" else 3)
    if args.size == "tiny":
        global SETTLE_SECONDS
        SETTLE_SECONDS = 0.0
    args.clients = [int(c) for c in args.clients.split(",")]
    args.only = set(args.only.split(","))
    unknown = args.only - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; of {', '.join(SCENARIOS)}")
    return args


def studies_needed(only: set[str]) -> set[str]:
    """The studies the chosen scenarios send (warm-ups included)."""
    needed = set()
    if only & {"throughput", "concurrency", "limit"}:
        needed |= {"large", "ct", "mixed"}
    if "memory" in only:
        needed.add("huge")
    if "workers" in only:
        needed |= {"ct16", "ct", "large"}
    return needed


def environment(args: argparse.Namespace) -> dict[str, object]:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def command(*words: str) -> str:
        try:
            done = subprocess.run(words, capture_output=True, text=True, env=env, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return done.stdout.strip() if done.returncode == 0 else "?"

    dirty = command("git", "-C", str(REPO), "diff", "--name-only", "HEAD", "--", "twisted_stow")
    import twisted

    return {
        "commit": command("git", "-C", str(REPO), "rev-parse", "--short", "HEAD")
        + (" + uncommitted changes" if dirty else ""),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "orthanc": command("dpkg-query", "-W", "-f=${Version}", "orthanc"),
        "orthanc_dicomweb": command("dpkg-query", "-W", "-f=${Version}", "orthanc-dicomweb"),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3),
        "size": args.size,
        "runs": args.runs,
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "load_average_start": os.getloadavg(),
    }


def disk_needed(spec: dict[str, list[tuple[int, int]]], full: bool) -> int:
    """Bytes this run needs at most: the studies, one run's stored copy of
    the largest (runs are truncated before the next starts), headroom."""
    size = [sum(count * each for count, each in series) for series in spec.values()]
    return sum(size) + max(size) + (DISK_HEADROOM_BYTES if full else 0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = environment(args)
    print(json.dumps(info), flush=True)
    spec = {"full": _studies.FULL, "medium": _studies.MEDIUM, "tiny": _studies.TINY}[args.size]
    spec = {k: v for k, v in spec.items() if k in studies_needed(args.only)}
    needed = disk_needed(spec, args.size != "tiny")
    workdir = Path(tempfile.mkdtemp(prefix="stow-bench-", dir=args.workdir))
    info["workdir"] = str(workdir.parent)
    free = shutil.disk_usage(workdir).free
    if free < needed:
        shutil.rmtree(workdir)
        raise SystemExit(
            f"only {free / 1024**3:.1f} GiB free under {workdir.parent}; this run needs"
            f" {needed / 1024**3:.1f} GiB"
        )
    started = time.monotonic()
    results: list[Measurement] = []
    processes: list[_servers.Started] = []
    try:
        generating = time.monotonic()
        studies = {name: _studies.generate(workdir / "data", name, s) for name, s in spec.items()}
        # The new files' writeback must not compete with the first runs.
        os.sync()
        print(f"studies written and synced in {time.monotonic() - generating:.1f} s", flush=True)

        def start(factory: Callable[[], _servers.Started]) -> _servers.Started:
            process = factory()
            processes.append(process)
            return process

        shim = None if args.no_orthanc else _servers.compile_shim(workdir)

        def orthanc_in(directory: Path) -> _servers.Started:
            assert shim is not None
            peer = _servers.Orthanc(directory, shim)
            info.setdefault("orthanc_listening", _servers.check_loopback_only(peer.pid))
            return peer

        disk = DiskTarget(workdir / "disk")
        TARGETS.append(disk)
        if args.only & {"throughput", "concurrency", "limit"}:
            ours = start(lambda: _servers.Ours(workdir / "ours"))
            sink = start(_servers.Sink)
            targets: list[Target] = [HttpTarget("ours", "twisted-stow (chunked)", ours, True)]
            if shim is not None:
                orthanc = start(lambda: orthanc_in(workdir / "orthanc"))
                targets.append(HttpTarget("orthanc", "Orthanc (chunked)", orthanc, True))
            targets.append(HttpTarget("sink", "loopback discard sink (chunked)", sink, True))
            targets.append(disk)
            ours_length = HttpTarget("ours-length", "twisted-stow (Content-Length)", ours, False)
            TARGETS.extend(t for t in targets if t is not disk)
            warm_up(studies["large"], targets)

        if "throughput" in args.only:
            throughput(studies, [*targets[:1], ours_length, *targets[1:]], args.runs, results)
        if "concurrency" in args.only:
            concurrency(studies["ct"], targets, args.clients, args.runs, results)
        if "limit" in args.only:
            limited = start(
                lambda: _servers.Ours(
                    workdir / "ours-limited", ["--max-requests", str(args.max_requests)]
                )
            )
            target = HttpTarget(
                "ours-limited",
                f"twisted-stow --max-requests {args.max_requests} (chunked)",
                limited,
                True,
            )
            TARGETS.append(target)
            warm_up(studies["mixed"], [target])
            over = [c for c in args.clients if c > args.max_requests]
            print(f"limit: --max-requests {args.max_requests}")
            limit(studies["ct"], target, over, args.runs, results)
        if "memory" in args.only:
            huge = studies["huge"]
            size = f"{huge.bytes / MIB:.0f} MiB ({len(huge.instances)} instances)"
            print(f"memory: one POST of {size}")
            # A server of its own: the concurrency runs leave a bigger heap
            # behind (RSS is not given back), which is not this upload's.
            fresh_server = start(lambda: _servers.Ours(workdir / "ours-memory"))
            for chunked in (True, False):
                name = "ours" if chunked else "ours-length"
                target = HttpTarget(name, name, fresh_server, chunked)
                TARGETS.append(target)
                results.append(measure("memory", huge, target, 1, 1, 1))
        if "workers" in args.only:
            # The servers above are done: their memory and idle threads must
            # not be there while the fresh ones are measured.
            for process in processes:
                process.stop()
            TARGETS[:] = [disk]
            orthanc_factory = None if shim is None else orthanc_in
            workers(studies, args.runs, workdir, start, orthanc_factory, disk, results)
    except BaseException:
        for process in processes:
            print(f"--- {process.name} log tail ---\n{process.log_tail()}", file=sys.stderr)
        raise
    finally:
        for process in processes:
            process.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    info["seconds"] = round(time.monotonic() - started, 1)
    info["load_average_end"] = os.getloadavg()
    info["max_requests"] = args.max_requests
    args.out.mkdir(parents=True, exist_ok=True)
    summary = _report.summarise(results, args.max_requests)
    _report.write_json(
        args.out / "results.json",
        {"environment": info, "summary": summary, "runs": [asdict(r) for r in results]},
    )
    markdown = _report.markdown(info, summary)
    (args.out / "results.md").write_text(markdown)
    _report.plots(summary, args.out)
    print()
    print(markdown)
    failed = [r for r in results if r.problems]
    for result in failed:
        print(f"ERROR: {result.scenario} {result.study} {result.target}: {result.problems}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
