"""Where our server spends its CPU while it stores a study: py-spy on a real twistd.

    python3 -m benchmarks.profile_server                  # large and ct, chunked
    python3 -m benchmarks.profile_server --study ct --content-length

It writes the study (``_studies.py``), starts ``twistd -n stow`` on
127.0.0.1 (``--workers 1``: the process that does the work), attaches
``py-spy record`` (raw collapsed stacks, every thread, idle frames
excluded) and POSTs the study ``--posts`` times with the
streaming client.  Then it prints, per thread kind (reactor / storage
workers), the share of samples and the functions with the most samples:
"self" (the frame itself was on CPU) and "total" (anywhere on the stack).
``--raw FILE`` keeps py-spy's collapsed stacks (flamegraph.pl can draw them).
py-spy needs ptrace rights on the server (root or CAP_SYS_PTRACE).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _client, _servers, _studies

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    return found


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match.group("file")
    for marker in ("twisted_stow/", "site-packages/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{match.group('func')} ({file})"


def _thread_kind(frames: list[str]) -> str:
    text = ";".join(frames)
    if "threadpool" in text or "_worker" in text:
        return "storage worker threads"
    if "run (twisted/application/app.py" in text or "mainLoop" in text or "doIteration" in text:
        return "reactor thread"
    return "other"


def summarise(raw: str, top: int) -> str:
    by_kind: collections.Counter[str] = collections.Counter()
    self_time: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total_time: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames and frames[0].startswith(("thread (", "process ")):
            frames = frames[1:]
        kind = _thread_kind(frames)
        names = [_frame_name(f) for f in frames]
        total += count
        by_kind[kind] += count
        if names:
            self_time[kind][names[-1]] += count
        for name in set(names):
            total_time[kind][name] += count
    out = [f"{total} samples"]
    for kind, count in by_kind.most_common():
        out.append(f"\n== {kind}: {count} samples ({count / total:.0%}) ==")
        out.append("  self:")
        for name, n in self_time[kind].most_common(top):
            out.append(f"    {n / total:6.1%}  {name}")
        out.append("  total (on the stack):")
        for name, n in total_time[kind].most_common(top + 10):
            out.append(f"    {n / total:6.1%}  {name}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="large,ct", help="studies from _studies.FULL")
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--posts", type=int, default=2, help="POSTs per study (default 2)")
    parser.add_argument("--content-length", action="store_true", help="not chunked")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--raw", type=Path, default=None, help="keep the collapsed stacks here")
    parser.add_argument(
        "--gil",
        action="store_true",
        help="only samples of the thread holding the GIL: where the Python CPU goes",
    )
    args = parser.parse_args(argv)
    spec = _studies.FULL if args.size == "full" else _studies.TINY
    workdir = Path(tempfile.mkdtemp(prefix="stow-profile-"))
    server = None
    try:
        studies = [_studies.generate(workdir / "data", n, spec[n]) for n in args.study.split(",")]
        # One process: py-spy follows the process it attaches to, and with
        # worker processes (the default) the main process only relays logs.
        server = _servers.Ours(workdir / "ours", ["--workers", "1"])
        raw = workdir / "stacks.txt"
        spy = subprocess.Popen(
            [
                *(_py_spy(), "record", "--pid", str(server.pid), "--rate", str(args.rate)),
                *("--format", "raw", "--threads", "--nonblocking", "--output", str(raw)),
                *(("--gil",) if args.gil else ()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # py-spy attaches
        tags = iter(range(1, 1000))
        for study in studies:
            for _ in range(args.posts):
                server.release_space()  # as stow_bench.py does between runs
                reply = _client.post_instances(
                    server.port,
                    server.path,
                    study.variant(next(tags)).instances,
                    chunked=not args.content_length,
                )
                rate = reply.body_bytes / reply.seconds / 1e6
                print(
                    f"{study.name}: {reply.status} {rate:.0f} MB/s"
                    f" {reply.instances / reply.seconds:.0f} instances/s {reply.problem or ''}",
                    flush=True,
                )
        spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
        _, err = spy.communicate(timeout=60)
        if not raw.exists():
            raise SystemExit(f"py-spy wrote nothing: {err.decode(errors='replace')}")
        text = raw.read_text()
        if args.raw:
            args.raw.write_text(text)
        print(summarise(text, args.top))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
