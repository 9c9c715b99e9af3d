"""What each hostile body of issue 17 costs a real ``twistd -n stow``, and an honest client.

For every attack (``tests/attacks.py`` builds the bodies), against a fresh
server on 127.0.0.1 (default options):

* the server's peak RSS during the attack (``VmHWM``, reset just before) and
  its CPU seconds;
* the reactor's longest stall: a probe thread sends ``OPTIONS /studies``
  every 10 ms on a fresh connection and keeps the slowest answer;
* how long an honest ``CT_small`` upload, sent 50 ms after the attack
  started, waits for its 200;
* how long the attack itself takes to be answered, and with which status.

Run from the repository root (about a minute)::

    python3 -m benchmarks.attack_cost [--only bomb-one-request,empty-parts]
"""

from __future__ import annotations

import argparse
import http.client
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks._server_usage import Periodic, cpu_seconds, kernel_peak, reset_kernel_peak
from tests.attacks import bomb_body, empty_parts_body, many_header_lines_body
from tests.dicom_files import CT, read
from tests.helpers import build_multipart, multipart_content_type
from tests.launcher import LOOPBACK_ANY_PORT, Twistd

BOUNDARY = "attack"
PROBE_INTERVAL_SECONDS = 0.010
HONEST_DELAY_SECONDS = 0.050
TIMEOUT_SECONDS = 600.0
MIB = 1024 * 1024


@dataclass
class Answer:
    status: int
    seconds: float


def post(
    port: int, body: bytes, path: str = "/studies", headers: dict[str, str] | None = None
) -> Answer:
    """Blocking: POST ``body`` (multipart, boundary ``BOUNDARY``) and read the whole answer."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_SECONDS)
    try:
        sent = {"Content-Type": multipart_content_type(BOUNDARY), "Connection": "close"}
        connection.request("POST", path, body=body, headers={**sent, **(headers or {})})
        response = connection.getresponse()
        response.read()
        return Answer(response.status, time.monotonic() - started)
    except (ConnectionError, http.client.HTTPException):
        return Answer(0, time.monotonic() - started)
    finally:
        connection.close()


class Probe(Periodic):
    """OPTIONS every 10 ms in a thread; the slowest answer is the reactor's worst stall."""

    def __init__(self, port: int) -> None:
        super().__init__(PROBE_INTERVAL_SECONDS)
        self._port = port
        self.worst = 0.0
        self.count = 0

    def tick(self) -> bool:
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=TIMEOUT_SECONDS)
        try:
            connection.request("OPTIONS", "/studies")
            connection.getresponse().read()
        except (ConnectionError, http.client.HTTPException):
            pass
        finally:
            connection.close()
        self.worst = max(self.worst, time.monotonic() - started)
        self.count += 1
        return True


def attacks() -> dict[str, Callable[[int], list[Answer]]]:
    def parallel(bodies: list[bytes]) -> Callable[[int], list[Answer]]:
        def run(port: int) -> list[Answer]:
            answers: list[Answer] = [Answer(0, 0.0)] * len(bodies)

            def one(index: int) -> None:
                answers[index] = post(port, bodies[index])

            threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return answers

        return run

    return {
        # Point 1: ten deflated item bombs in one request, and one each in ten.
        "bomb-one-request": parallel([bomb_body(10, BOUNDARY)]),
        "bomb-ten-requests": parallel([bomb_body(1, BOUNDARY, first_index=i) for i in range(10)]),
        # Point 2: 200 parts whose headers are 2,000 short lines (~16 KB, the cap) each.
        "header-lines": parallel([many_header_lines_body(200, 2_000, BOUNDARY)]),
        # Point 3: a million empty parts, 9 MB on the wire.
        "empty-parts": parallel([empty_parts_body(1_000_000, BOUNDARY)]),
    }


def measure(name: str, attack: Callable[[int], list[Answer]], honest: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="stow-attack-") as tmp:
        twistd = Twistd(Path(tmp) / "store", "--listen", LOOPBACK_ANY_PORT)
        try:
            (port,) = twistd.ports(1)
            post(port, build_multipart([read(CT)], BOUNDARY))  # warm up: imports, threads
            pid = twistd.pid
            reset_kernel_peak(pid)
            cpu_before = cpu_seconds(pid)
            result: list[Answer] = []
            with Probe(port) as probe:
                runner = threading.Thread(target=lambda: result.extend(attack(port)))
                runner.start()
                time.sleep(HONEST_DELAY_SECONDS)
                honest_answer = post(port, honest)
                runner.join()
            peak = kernel_peak(pid) or 0
            cpu = cpu_seconds(pid) - cpu_before
        finally:
            twistd.stop()
    statuses = sorted({a.status for a in result})
    print(
        f"{name:20} peak RSS {peak / MIB:7.1f} MiB  CPU {cpu:6.2f} s  "
        f"worst stall {probe.worst * 1000:8.1f} ms ({probe.count} probes)  "
        f"honest {honest_answer.status} in {honest_answer.seconds * 1000:8.1f} ms  "
        f"attack {statuses} in {max(a.seconds for a in result):6.2f} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated attack names")
    args = parser.parse_args()
    chosen = set(filter(None, args.only.split(",")))
    honest = build_multipart([read(CT)], BOUNDARY)
    for name, attack in attacks().items():
        if not chosen or name in chosen:
            measure(name, attack, honest)


if __name__ == "__main__":
    main()
