"""``--workers 2`` supervision: the restart back-off, and answers while no worker is up.

Every server here is started by the test and stopped by its pid; the workers
are killed by their pids.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import time
from pathlib import Path

from tests.integration.observe import wait_until
from tests.integration.streaming import raw_exchange, status_of
from tests.integration.test_workers import WORKERS, head, only, serving, workers_of
from tests.launcher import LOOPBACK_ANY_PORT, Twistd
from twisted_stow.workers import metricsdir

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
READYZ = b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
DELAYED = re.compile(
    r"ended \(killed by SIGKILL\); (\d+) in a row died young: starting another in ([\d.]+) s"
)


def test_a_worker_killed_again_and_again_is_restarted_ever_later(tmp_path: Path) -> None:
    """SIGKILL of one slot's worker five times, each soon after it serves: the first
    replacement starts at once, the next ones after delays that grow (and are waited);
    the other worker answers all along."""
    twistd = Twistd(tmp_path / "store", "--listen", LOOPBACK_ANY_PORT, *WORKERS)
    try:
        (port,) = twistd.ports(1)
        victim, survivor = workers_of(twistd)
        killed: set[int] = set()
        gaps = []
        for _ in range(5):
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            killed.add(victim)
            # Only the survivor serves the port meanwhile (the main process answers
            # only while no worker is up).
            assert status_of(raw_exchange(port, HEALTHZ)) == 200

            def replacement() -> set[int]:
                return set(serving(twistd)) - killed - {survivor}

            assert wait_until(lambda: len(replacement()) == 1, 60), twistd.log_tail()
            gaps.append(time.monotonic() - killed_at)
            (victim,) = replacement()
        log = twistd.log()
        assert log.count("killed by SIGKILL") == 5, log
        # The first of the young deaths is taken for an isolated one: no delay. (The
        # first victim may have served 10 s while the other worker started, on a
        # loaded machine: its death then clears the count, one more is at once.)
        immediate = log.count("ended (killed by SIGKILL); starting another")
        delayed = [(int(n), float(s)) for n, s in DELAYED.findall(log)]
        assert immediate in (1, 2) and immediate + len(delayed) == 5, log
        assert [n for n, _ in delayed] == list(range(2, 2 + len(delayed))), log
        delays = [s for _, s in delayed]
        assert all(a < b for a, b in itertools.pairwise(delays)), delays
        assert log.count("starting another after") == len(delayed)
        # Each delayed replacement really waited its delay.
        for gap, delay in zip(gaps[-len(delays) :], delays, strict=True):
            assert gap >= delay, (gaps, delays)
        assert survivor in serving(twistd)
    finally:
        assert twistd.stop() == 0


def test_while_no_worker_is_up_the_main_process_answers_503(tmp_path: Path) -> None:
    """SIGKILL of both workers: until a replacement serves, /readyz (and every other
    path) is answered 503 + Retry-After by the main process, not left in the backlog;
    then the workers answer 200 again."""
    twistd = Twistd(tmp_path / "store", "--listen", LOOPBACK_ANY_PORT, *WORKERS)
    try:
        (port,) = twistd.ports(1)
        for pid in workers_of(twistd):
            os.kill(pid, signal.SIGKILL)
        answers: list[bytes] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answers.append(raw_exchange(port, READYZ))
            if status_of(answers[-1]) == 200 and any(status_of(a) == 503 for a in answers):
                break
            time.sleep(0.02)
        statuses = [status_of(a) for a in answers]
        assert 503 in statuses and statuses[-1] == 200, (statuses, twistd.log_tail())
        refused = next(a for a in answers if status_of(a) == 503)
        assert b"\r\nRetry-After: " in refused and b"no worker process is serving" in refused
        assert "no worker is serving: answering 503" in twistd.log()
        assert len(workers_of(twistd)) == 2
    finally:
        assert twistd.stop() == 0


def test_the_metrics_directory_of_a_sigkilled_server_is_swept_at_the_next_start(
    tmp_path: Path,
) -> None:
    """SIGKILL of the main process leaves its ``stow-metrics-*`` directory; the next
    server removes it at start-up (its owner is gone), keeps one a live server uses,
    and serves its own metrics."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**os.environ, "TMPDIR": str(temporary)}
    options = ("--listen", LOOPBACK_ANY_PORT, "--metrics-listen", LOOPBACK_ANY_PORT, *WORKERS)
    killed = Twistd(tmp_path / "killed", *options, env=env)
    try:
        killed.ports(1)
        workers_of(killed)
        (left,) = temporary.iterdir()
        assert left.name.startswith(f"stow-metrics-{metricsdir.boot_id()}-{killed.pid}-")
    finally:
        os.kill(killed.pid, signal.SIGKILL)
    assert killed.process.wait(timeout=30) == -signal.SIGKILL
    assert left.is_dir()
    live = Twistd(tmp_path / "live", *options, env=env)
    try:
        live.ports(1)
        workers_of(live)
        assert wait_until(lambda: not left.exists(), 10), live.log_tail()
        assert f"removed {left}, the metrics directory of a server that is gone" in live.log()
        (own,) = temporary.iterdir()
        assert own.name.startswith(f"stow-metrics-{metricsdir.boot_id()}-{live.pid}-")
        # A third server started now must not take the live one's directory.
        third = Twistd(tmp_path / "third", *options, env=env)
        try:
            third.ports(1)
            assert own.is_dir() and len(list(temporary.iterdir())) == 2
        finally:
            assert third.stop() == 0
        match = re.search(r"MetricsSite starting on (\d+)", live.log())
        assert match is not None
        port = live.ports(1)[0]
        assert status_of(raw_exchange(port, HEALTHZ)) == 200
        scrape = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        text = raw_exchange(int(match.group(1)), scrape).decode()
        assert 'stow_requests_total{family="ops",status="200"}' in text, text
    finally:
        assert live.stop() == 0
    assert list(temporary.iterdir()) == []


def test_a_workers_arguments_are_not_in_its_environment(tmp_path: Path) -> None:
    """The spec (arguments, run token) reaches a worker over its control socketpair:
    not in /proc/PID/environ, not on its command line; the argument still applies."""
    twistd = Twistd(
        tmp_path / "store",
        "--listen",
        LOOPBACK_ANY_PORT,
        "--max-body-size",
        "1234567",
        *WORKERS,
    )
    try:
        (port,) = twistd.ports(1)
        for pid in workers_of(twistd):
            with only(twistd, pid):
                too_big = raw_exchange(port, head(1234568))
            assert status_of(too_big) == 413, too_big
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            for secretish in (b"1234567", b"STOW_WORKER", b"token"):
                assert secretish not in environ and secretish not in cmdline
            assert cmdline.split(b"\0")[1:3] == [b"-m", b"twisted_stow.workers.child"]
            assert b"PROMETHEUS_MULTIPROC_DIR=" in environ
    finally:
        assert twistd.stop() == 0
