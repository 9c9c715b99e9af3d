"""Issue 17 over real sockets: hostile bodies against a real ``twistd -n stow``.

Each test sends an attack (``tests/attacks.py``) with an honest CT upload in
parallel and checks that the attack is refused as documented, that the
server's peak RSS (``VmHWM`` of the twistd process, reset first) stays near
its baseline, and that the honest upload is answered while the attack is
still being worked on (ordering, not wall-clock thresholds: the costs are
measured by ``benchmarks/attack_cost.py``).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from tests.attacks import bomb_body, empty_parts_body, many_header_lines_body
from tests.dicom_files import CT, read
from tests.helpers import build_multipart
from tests.integration.conftest import Server
from tests.integration.streaming import json_body, raw_exchange, raw_post, status_of
from twisted_stow.core.config import DEFAULT_MAX_PARTS
from twisted_stow.core.multipart import MAX_HEADER_LINES

BOUNDARY = "bounded-work"
MIB = 1024 * 1024
# What the server may grow by during an attack.  Before issue 17 a single
# bomb part cost ~700 MiB and a million empty parts 1.4 GiB; a bounded
# server stays within a few MiB of its baseline.
RSS_GROWTH_BYTES = 64 * MIB


def _status_file(pid: int) -> Path:
    return Path(f"/proc/{pid}/status")


def server_tree(pid: int) -> list[int]:
    """The server's processes: ``pid`` and its workers (``--workers``), measured together."""
    return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]


def _status_kib(pid: int, field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _status_file(pid).read_text(), re.MULTILINE)
    assert match is not None
    return int(match.group(1)) * 1024


def peak_rss(pid: int) -> int:
    """The kernel's high-water marks of RSS (``VmHWM``) over the server's processes, in bytes.

    A sum of peaks: at least the peak of the sum, so a growth bound on it holds for the
    whole server whichever worker served."""
    return sum(_status_kib(p, "VmHWM") for p in server_tree(pid))


def reset_peak_rss(pid: int) -> None:
    """Set ``VmHWM`` back to the current RSS in each of the server's processes (Linux ≥ 4.0)."""
    for p in server_tree(pid):
        Path(f"/proc/{p}/clear_refs").write_text("5")


class Exchange(threading.Thread):
    """One raw request on its own socket, in a thread; notes when its answer ended."""

    def __init__(self, port: int, request: bytes, finished: list[str], name: str) -> None:
        super().__init__(daemon=True)
        self._port, self._request, self._finished, self.label = port, request, finished, name
        self.answer = b""

    def run(self) -> None:
        try:
            self.answer = raw_exchange(self._port, self._request, read_timeout=120.0)
        except (BrokenPipeError, ConnectionResetError):
            # Refused mid-body: the server answered and closed while we sent.
            self.answer = b""
        self._finished.append(self.label)


def attack_with_honest_upload(
    server: Server, attacks: list[bytes], *, honest_after: Callable[[], None] = lambda: None
) -> tuple[list[Exchange], Exchange, list[str], int]:
    """Send ``attacks`` in parallel, then one honest CT upload; return the exchanges,
    the order their answers ended in, and the server's RSS growth."""
    pid = server.handle.pid
    honest_request = raw_post(build_multipart([read(CT)], BOUNDARY), BOUNDARY)
    # Warm up (imports, threads), so that the baseline is the working size.
    assert status_of(raw_exchange(server.port, honest_request)) == 200
    baseline = _current_rss(pid)
    reset_peak_rss(pid)
    finished: list[str] = []
    hostile = [
        Exchange(server.port, raw_post(body, BOUNDARY), finished, f"attack {index}")
        for index, body in enumerate(attacks)
    ]
    for exchange in hostile:
        exchange.start()
    honest_after()
    honest = Exchange(server.port, honest_request, finished, "honest")
    honest.start()
    for exchange in [*hostile, honest]:
        exchange.join(timeout=180)
        assert not exchange.is_alive(), f"{exchange.label} was never answered"
    return hostile, honest, finished, peak_rss(pid) - baseline


def _current_rss(pid: int) -> int:
    """RSS of the server's processes together, in bytes."""
    return sum(_status_kib(p, "VmRSS") for p in server_tree(pid))


def _other_failure_reasons(answer: bytes) -> list[int]:
    """FailureReasons of OtherFailuresSequence: the parts that could not be read."""
    items = json_body(answer).get("0008119A", {}).get("Value", [])
    return [int(item["00081197"]["Value"][0]) for item in items]


def test_item_bombs_are_refused_while_an_honest_upload_goes_through(
    twistd_server: Server,
) -> None:
    """Ten deflated item bombs in one request plus one in each of four others: every
    bomb 0xC000, RSS flat, the honest CT sent after them answered first."""
    attacks = [bomb_body(10, BOUNDARY)] + [
        bomb_body(1, BOUNDARY, first_index=10 + i) for i in range(4)
    ]
    assert sum(len(body) for body in attacks) < 256 * 1024  # small on the wire

    def after_the_bombs_are_sent() -> None:
        time.sleep(0.05)  # let the server start walking them

    hostile, honest, finished, growth = attack_with_honest_upload(
        twistd_server, attacks, honest_after=after_the_bombs_are_sent
    )
    assert status_of(honest.answer) == 200
    # The ten-bomb request is walked in slices shared with everyone else:
    # the honest upload, sent after it, is answered before it ends.
    assert finished.index("honest") < finished.index("attack 0")
    for exchange, parts in zip(hostile, [10, 1, 1, 1, 1], strict=True):
        assert status_of(exchange.answer) == 409
        # 0xC000 without UIDs (the element limit's reason: tests/unit).
        assert _other_failure_reasons(exchange.answer) == [0xC000] * parts
    assert growth < RSS_GROWTH_BYTES


def test_a_million_empty_parts_stop_at_max_parts(twistd_server: Server) -> None:
    """200,000 empty parts (1.8 MB): 413 once past --max-parts, RSS flat, honest CT stored."""
    hostile, honest, _, growth = attack_with_honest_upload(
        twistd_server, [empty_parts_body(200_000, BOUNDARY)]
    )
    assert status_of(honest.answer) == 200
    (attack,) = hostile
    if attack.answer:  # the 413 may arrive as a reset while the client still sends
        assert status_of(attack.answer) == 413
        assert f"limit of {DEFAULT_MAX_PARTS} parts" in json_body(attack.answer)["detail"]
    assert growth < RSS_GROWTH_BYTES


def test_part_headers_of_many_lines_are_refused_at_once(twistd_server: Server) -> None:
    """200 parts of 2,000 header lines each (3.2 MB): 400 at the first one, honest CT stored."""
    hostile, honest, _, growth = attack_with_honest_upload(
        twistd_server, [many_header_lines_body(200, 2_000, BOUNDARY)]
    )
    assert status_of(honest.answer) == 200
    (attack,) = hostile
    if attack.answer:
        assert status_of(attack.answer) == 400
        assert f"more than {MAX_HEADER_LINES} lines" in json_body(attack.answer)["detail"]
    assert growth < RSS_GROWTH_BYTES


def test_the_first_max_parts_instances_are_kept(twistd_server: Server) -> None:
    """A body one part over --max-parts: 413, and the honest instance before it is stored."""
    honest = read(CT)
    body = build_multipart([honest], BOUNDARY)[: -len(f"--{BOUNDARY}--\r\n")]
    body += empty_parts_body(DEFAULT_MAX_PARTS, BOUNDARY)[2:]
    with socket.create_connection(("127.0.0.1", twistd_server.port), timeout=30) as sock:
        sock.sendall(raw_post(body, BOUNDARY))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert status_of(answer) == 413
    assert any(path.read_bytes() == honest for path in twistd_server.storage.rglob("*.dcm"))
