"""Load: 200 concurrent connections against one real twistd.

Uploads that fill the limits exactly, uploads over them, and idle or
trickling connections, all at once, twice.  Limits hold (exactly the
admitted uploads are stored, the others get 503 at once), every client gets
an answer (a status, or for a silent one the close of the idle timeout),
the server's memory stays flat from one round to the next, and its open file
descriptors return to their starting count.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.dicom_files import CT
from tests.integration.conftest import Twistd
from tests.integration.crafted import instance, stored_location
from tests.integration.observe import staging_files
from tests.integration.streaming import raw_exchange, sop_instance_uids, status_of, upload_request

BOUNDARY = "load-boundary"
MAX_REQUESTS = 40
PER_PEER = 10
HOLDER_PEERS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]  # 4 x 10 = 40
OVER_TOTAL = 90  # from other addresses: over --max-requests
OVER_PEER = 10  # from a holder's address: over --max-requests-per-peer
SILENT = 30  # connect and send nothing
TRICKLING = 30  # start the headers and stop
IDLE_SECONDS = 2.0
# Shorter than the idle timeout: a trickle is the header deadline's (408),
# silence the idle timeout's (close).
HEADER_SECONDS = 1.0
assert MAX_REQUESTS + OVER_TOTAL + OVER_PEER + SILENT + TRICKLING == 200


def read_all(sock: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return received


class Round:
    """One round of 200 connections; each thread records its client's answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.holding = 0
        self.answers: dict[str, list[bytes]] = {}
        self.seconds: dict[str, list[float]] = {}
        self.stored: list[bytes] = []

    def record(self, kind: str, answer: bytes, seconds: float) -> None:
        with self.lock:
            self.answers.setdefault(kind, []).append(answer)
            self.seconds.setdefault(kind, []).append(seconds)

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        return socket.create_connection(
            ("127.0.0.1", self.port), timeout=30, source_address=(source, 0)
        )

    def holder(self, source: str) -> None:
        data = instance(CT)
        request = upload_request([data], BOUNDARY)
        head, _, body = request.partition(b"\r\n\r\n")
        with self.connect(source) as sock:
            # 100 Continue comes only once the server has admitted the upload
            # (a refusal replaces it): the slot is certainly taken.
            sock.sendall(head + b"\r\nExpect: 100-continue\r\n\r\n")
            interim = b""
            while not interim.endswith(b"\r\n\r\n"):
                interim += sock.recv(1)
            assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
            sent = len(body) // 2
            sock.sendall(body[:sent])
            with self.lock:
                self.holding += 1
                self.stored.append(data)
            # The wait lasts until all 40 hold and the 100 over the caps are
            # refused: seconds on a loaded machine, longer than --idle-timeout,
            # which rightly cuts off a client silent that long (no answer at
            # all). So a holder keeps sending, a byte at a time.
            deadline = time.monotonic() + 30
            while not self.release.wait(IDLE_SECONDS / 4) and time.monotonic() < deadline:
                sock.sendall(body[sent : sent + 1])
                sent += 1
            start = time.monotonic()
            sock.sendall(body[sent:])
            self.record("holder", read_all(sock), time.monotonic() - start)

    def over(self, source: str, kind: str) -> None:
        request = upload_request([instance(CT)], BOUNDARY)
        with self.connect(source) as sock:
            start = time.monotonic()
            try:
                sock.sendall(request)
            except OSError:
                pass  # refused before the body: the answer is already there
            self.record(kind, read_all(sock), time.monotonic() - start)

    def silent(self) -> None:
        with self.connect() as sock:
            start = time.monotonic()
            self.record("silent", read_all(sock), time.monotonic() - start)

    def trickling(self) -> None:
        with self.connect() as sock:
            start = time.monotonic()
            sock.sendall(b"POST /studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
            self.record("trickling", read_all(sock), time.monotonic() - start)

    def run(self) -> None:
        threads: list[threading.Thread] = []

        def spawn(target: Callable[..., None], *args: str) -> None:
            thread = threading.Thread(target=target, args=args, daemon=True)
            thread.start()
            threads.append(thread)

        for source in HOLDER_PEERS:
            for _ in range(PER_PEER):
                spawn(self.holder, source)
        for _ in range(SILENT):
            spawn(self.silent)
        for _ in range(TRICKLING):
            spawn(self.trickling)
        deadline = time.monotonic() + 30
        while self.holding < MAX_REQUESTS and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.holding == MAX_REQUESTS  # every slot is taken
        for n in range(OVER_TOTAL):
            spawn(self.over, f"127.0.1.{n + 1}", "over-total")
        for n in range(OVER_PEER):
            spawn(self.over, HOLDER_PEERS[n % len(HOLDER_PEERS)], "over-peer")
        for thread in threads[-(OVER_TOTAL + OVER_PEER) :]:
            thread.join(30)
        self.release.set()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads)


def open_fds(server: Twistd) -> int:
    """Descriptors open in the server's processes (the main process and its workers)."""
    return server.tree_fds()


def settled_fds(process: Twistd) -> int:
    """The fd count once it has held still for half a second: the warm-up
    connection's close may not have reached the server yet when its client
    has read the answer (seen on a loaded machine: 11, then 10)."""
    count, since = open_fds(process), time.monotonic()
    deadline = since + 10
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = open_fds(process)
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= 0.5:
            break
    return count


def test_two_hundred_connections(tmp_path: Path) -> None:
    root = tmp_path / "store"
    server = Twistd(
        root,
        "--listen",
        "tcp:0:interface=127.0.0.1",
        f"--max-requests={MAX_REQUESTS}",
        f"--max-requests-per-peer={PER_PEER}",
        f"--idle-timeout={IDLE_SECONDS}",
        f"--header-timeout={HEADER_SECONDS}",
    )
    try:
        (port,) = server.ports(1)
        # The whole server: the main process and its workers.
        process = server
        # Warm up (imports, thread pools, first allocations) before the baseline.
        warm = instance(CT)
        answer = raw_exchange(port, upload_request([warm], BOUNDARY))
        assert status_of(answer) == 200
        fds_at_start = settled_fds(process)
        rss_after: list[int] = []
        for _ in range(2):
            round_ = Round(port)
            round_.run()
            check_round(round_, root)
            # Lingering closes end within 2 s of their refusal.
            deadline = time.monotonic() + 10
            while open_fds(process) != fds_at_start and time.monotonic() < deadline:
                time.sleep(0.05)
            assert open_fds(process) == fds_at_start
            rss_after.append(server.tree_rss())
        # Memory stays flat: the second round of 200 connections costs
        # (nearly) nothing more than the first.
        assert rss_after[1] - rss_after[0] < 8 * 1024 * 1024, rss_after
        assert staging_files(root) == []
    finally:
        server.stop()


def check_round(round_: Round, root: Path) -> None:
    answers = round_.answers
    # Every admitted upload was stored, none slowed down by the refusals.
    assert len(answers["holder"]) == MAX_REQUESTS
    for answer in answers["holder"]:
        assert status_of(answer) == 200, answer[:300]
        assert len(sop_instance_uids(json.loads(answer.partition(b"\r\n\r\n")[2]))) == 1
    for data in round_.stored:
        assert stored_location(root, data).read_bytes() == data
    # Over a limit: 503 + Retry-After, at once (from the headers).
    for kind, phrase in (("over-total", b"its limit"), ("over-peer", b"limit per client")):
        assert len(answers[kind]) == (OVER_TOTAL if kind == "over-total" else OVER_PEER)
        for answer, seconds in zip(answers[kind], round_.seconds[kind], strict=True):
            assert status_of(answer) == 503, answer[:300]
            assert b"\r\nRetry-After: 5\r\n" in answer
            assert phrase in answer
            assert seconds < IDLE_SECONDS
    # Silent clients: closed by the idle timeout (no request, so no status).
    assert len(answers["silent"]) == SILENT
    for answer, seconds in zip(answers["silent"], round_.seconds["silent"], strict=True):
        assert answer == b""
        assert IDLE_SECONDS * 0.9 < seconds < IDLE_SECONDS + 5
    # Trickling headers: 408 at the header deadline.
    assert len(answers["trickling"]) == TRICKLING
    for answer in answers["trickling"]:
        assert status_of(answer) == 408, answer[:300]
