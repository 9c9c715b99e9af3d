"""``twistd --logfile`` with ``--workers 2``: every worker's lines reach the file, once.

The workers' events travel to the main process (workers/logrelay.py), which
writes them where it writes its own: here a log file, in text and in JSON.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.integration.observe import wait_until
from tests.integration.streaming import raw_exchange, status_of
from tests.integration.test_workers import WORKERS, only
from tests.launcher import Twistd, twistd_command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(tmp_path: Path, *options: str) -> tuple[Twistd, Path, int]:
    logfile = tmp_path / "stow.log"
    port = free_port()
    twistd = Twistd(
        tmp_path / "store",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        *options,
        *WORKERS,
        runner=[twistd_command(), f"--logfile={logfile}"],
    )
    started = wait_until(
        lambda: logfile.exists() and "workers serving: pids" in logfile.read_text(), 60
    )
    if not started:
        twistd.stop()  # started by this test: never left running
        raise AssertionError(twistd.log_tail() + (logfile.read_text() if logfile.exists() else ""))
    return twistd, logfile, port


def serve_one_request_on_each(twistd: Twistd, port: int, pids: list[int]) -> None:
    for pid in pids:
        with only(twistd, pid):
            ping = f"GET /healthz?on={pid} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            assert status_of(raw_exchange(port, ping.encode())) == 200


def test_text_lines_of_every_worker_reach_the_logfile_once(tmp_path: Path) -> None:
    twistd, logfile, port = start(tmp_path)
    try:
        text = logfile.read_text()
        pids = [
            int(line.split("pids ")[1].split(", ")[i])
            for i in range(2)
            for line in [next(x for x in text.splitlines() if "workers serving: pids" in x)]
        ]
        serve_one_request_on_each(twistd, port, pids)
        assert wait_until(lambda: all(f"on={p}" in logfile.read_text() for p in pids), 10)
        lines = logfile.read_text().splitlines()
        for number, pid in enumerate(pids, start=1):
            serving = [x for x in lines if f"worker {number} (pid {pid}) serving" in x]
            assert len(serving) == 1, lines
            assert f"[worker {number} pid {pid} " in serving[0]
            (request,) = [x for x in lines if f"GET /healthz?on={pid} " in x]
            assert f"[worker {number} pid {pid} " in request
        # Nothing of the workers on standard output: the file has it all.
        assert "serving" not in twistd.log() and "healthz" not in twistd.log()
    finally:
        assert twistd.stop() == 0
    final = logfile.read_text()
    assert final.count("drained: stopping") == 2, final


def test_json_lines_of_every_worker_reach_the_logfile_once(tmp_path: Path) -> None:
    twistd, logfile, port = start(tmp_path, "--log-format", "json")
    try:

        def records() -> list[dict[str, object]]:
            return [json.loads(x) for x in logfile.read_text().splitlines() if x.strip()]

        (workers,) = [r for r in records() if r["event"] == "server.workers"]
        pids = [int(p) for p in str(workers["pids"]).split(", ")]
        serve_one_request_on_each(twistd, port, pids)
        assert wait_until(
            lambda: all(any(f"on={p}" in str(r["message"]) for r in records()) for p in pids), 10
        )
        got = records()
        for number, pid in enumerate(pids, start=1):
            ready = [r for r in got if r["event"] == "worker.ready" and r["pid"] == pid]
            assert len(ready) == 1 and ready[0]["worker"] == number, got
            requests = [r for r in got if f"GET /healthz?on={pid} " in str(r["message"])]
            assert len(requests) == 1 and requests[0]["worker"] == number
        assert all("worker" not in r for r in got if r["event"] == "server.workers")
    finally:
        assert twistd.stop() == 0
