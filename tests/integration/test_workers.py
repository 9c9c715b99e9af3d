"""``twistd -n stow --workers 2``: one port, two worker processes, one main process.

Which worker accepts a connection is the kernel's choice; to put a
connection on a given worker, a test stops the other workers (SIGSTOP: they
cannot accept) until the chosen one has answered ``100 Continue``, then
lets them go on (``on_worker``).  Every server here is started by the test
and stopped by its pid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psutil
from pydicom.uid import generate_uid

from tests.dicom_files import CT, MR
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.crafted import instance, stored_location
from tests.integration.observe import staging_files, stored_files, wait_until
from tests.integration.streaming import raw_exchange, status_of, upload_request
from tests.launcher import LOOPBACK_ANY_PORT, Twistd

BOUNDARY = "workers-test-boundary-0123456789"
WORKERS = ("--workers", "2")
# The failure reason of a conflicting duplicate, as the DICOM JSON answer writes it.
CONFLICTING_DUPLICATE = 0x0111
READY = re.compile(rb"worker (\d+) \(pid (\d+)\) serving")


def workers_of(twistd: Twistd, count: int = 2) -> list[int]:
    """The pids of the ``count`` workers serving now (each logged that it serves)."""
    assert wait_until(lambda: len(serving(twistd)) >= count, 60), twistd.log_tail()
    return serving(twistd)[-count:]


def serving(twistd: Twistd) -> list[int]:
    """Pids of the workers that logged "serving" and are still children of the server."""
    children = set(twistd.children_pids())
    pids = [int(m.group(2)) for m in READY.finditer(twistd.log().encode())]
    return [pid for pid in pids if pid in children]


def head(length: int, path: str = "/studies") -> bytes:
    """Request headers of a multipart POST that waits for ``100 Continue``."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: {multipart_content_type(BOUNDARY)}\r\n"
        f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()


@contextmanager
def only(twistd: Twistd, pid: int) -> Iterator[None]:
    """Every other worker stopped (SIGSTOP) meanwhile: only ``pid`` can accept."""
    others = [p for p in twistd.children_pids() if p != pid]
    for other in others:
        os.kill(other, signal.SIGSTOP)
    try:
        yield
    finally:
        for other in others:
            os.kill(other, signal.SIGCONT)


def on_worker(twistd: Twistd, port: int, pid: int, length: int) -> socket.socket:
    """A connection that worker ``pid`` accepted: its upload admitted (100 Continue)."""
    with only(twistd, pid):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(head(length))
        continued = sock.recv(4096)
        assert continued.startswith(b"HTTP/1.1 100"), continued
    return sock


def read_all(sock: socket.socket) -> bytes:
    received = b""
    with sock:
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not data:
                return received
            received += data


def failure_reasons(raw: bytes) -> list[int]:
    body = json.loads(raw.partition(b"\r\n\r\n")[2])
    failed = body.get("00081198", {}).get("Value", [])
    return [item["00081197"]["Value"][0] for item in failed]


def test_port_0_with_two_workers_is_one_port_served_by_both(tmp_path: Path) -> None:
    """Port 0 is bound once by the main process: one "starting on" line, and each worker
    answers on that port (its pid in the log line of the request it served)."""
    twistd = Twistd(tmp_path / "store", "--listen", LOOPBACK_ANY_PORT, *WORKERS)
    try:
        (port,) = twistd.ports(1)
        pids = workers_of(twistd)
        assert len(set(pids)) == 2 and os.getpid() not in pids
        for pid in pids:
            with only(twistd, pid):
                ping = f"GET /healthz?asked={pid} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                assert status_of(raw_exchange(port, ping.encode())) == 200
        assert wait_until(lambda: all(f"asked={pid}" in twistd.log() for pid in pids))
        for pid in pids:
            (line,) = [x for x in twistd.log().splitlines() if f"GET /healthz?asked={pid}" in x]
            assert f"pid {pid} " in line, line
        assert twistd.log().count("StowSite starting on") == 1
    finally:
        assert twistd.stop() == 0


def test_two_workers_racing_on_one_sop_uid_store_exactly_one(tmp_path: Path) -> None:
    """Two workers commit one SOP Instance UID with other bytes at the same moment, in the
    same series (the link decides) and in two studies (the index decides, under a lock
    shared by the processes): each time one is stored, the other fails 0x0111, and the
    one file is byte-identical to the winner."""
    storage = tmp_path / "store"
    twistd = Twistd(storage, "--listen", LOOPBACK_ANY_PORT, *WORKERS)
    try:
        (port,) = twistd.ports(1)
        first_pid, second_pid = workers_of(twistd)
        for round_ in range(4):
            uid = generate_uid()
            first = instance(CT, SOPInstanceUID=uid)
            other: dict[str, object] = {"PatientName": f"Other^Bytes^{round_}"}
            if round_ % 2:
                other["StudyInstanceUID"] = generate_uid()
            second = instance(CT, SOPInstanceUID=uid, **other)
            assert first != second
            bodies = [build_multipart([data], BOUNDARY) for data in (first, second)]
            socks = [
                on_worker(twistd, port, pid, len(body))
                for pid, body in zip((first_pid, second_pid), bodies, strict=True)
            ]
            # All but the close delimiter: neither part is complete yet.
            for sock, body in zip(socks, bodies, strict=True):
                sock.sendall(body[:-64])
            start = threading.Barrier(2)

            def finish(sock: socket.socket, body: bytes, start: threading.Barrier = start) -> bytes:
                start.wait()
                sock.sendall(body[-64:])
                return read_all(sock)

            with ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(finish, socks, bodies))
            statuses = [status_of(answer) for answer in answers]
            assert sorted(statuses) == [200, 409], (round_, statuses, answers)
            winner = (first, second)[statuses.index(200)]
            loser = answers[statuses.index(409)]
            assert failure_reasons(loser) == [CONFLICTING_DUPLICATE]
            copies = [p for p in stored_files(storage) if p.stem == uid]
            assert copies == [stored_location(storage, winner)]
            assert copies[0].read_bytes() == winner
        assert staging_files(storage) == []
    finally:
        assert twistd.stop() == 0


def test_a_worker_killed_mid_upload_is_replaced_and_its_part_swept(tmp_path: Path) -> None:
    """SIGKILL of a worker with a half-received part: its client is cut off, its staged
    file removed by the main process (by run token), nothing partial stored, and a new
    worker serves on the same port."""
    storage = tmp_path / "store"
    twistd = Twistd(storage, "--listen", LOOPBACK_ANY_PORT, *WORKERS)
    try:
        (port,) = twistd.ports(1)
        victim, survivor = workers_of(twistd)
        big = instance(MR, padding=4 * 1024 * 1024)
        body = build_multipart([big], BOUNDARY)
        sock = on_worker(twistd, port, victim, len(body))
        sock.sendall(body[: len(body) // 2])
        assert wait_until(lambda: staging_files(storage) != []), twistd.log_tail()
        os.kill(victim, signal.SIGKILL)
        assert read_all(sock) == b""  # reset or closed: no answer at all

        def replacements() -> set[int]:
            return set(serving(twistd)) - {survivor, victim}

        # One snapshot decides: the log and the process list are read separately.
        assert wait_until(lambda: len(replacements()) == 1, 60), twistd.log_tail()
        (replacement,) = replacements()
        assert victim not in serving(twistd)
        assert "starting another" in twistd.log()
        assert "removed 1 staged parts of a worker that ended" in twistd.log()
        assert staging_files(storage) == []
        assert not stored_location(storage, big).exists()
        for pid in (survivor, replacement):
            with only(twistd, pid):
                request = upload_request([instance(CT)], BOUNDARY)
                assert status_of(raw_exchange(port, request)) == 200
        assert len(stored_files(storage)) == 2
    finally:
        assert twistd.stop() == 0


def test_sigkill_of_the_main_process_takes_every_worker_down(tmp_path: Path) -> None:
    """SIGKILL of the main process: no worker outlives it, no partial instance is left,
    and a server started at once on the same port and storage serves and sweeps."""
    storage = tmp_path / "store"
    twistd = Twistd(storage, "--listen", LOOPBACK_ANY_PORT, *WORKERS)
    (port,) = twistd.ports(1)
    workers = workers_of(twistd)
    big = instance(MR, padding=4 * 1024 * 1024)
    body = build_multipart([big], BOUNDARY)
    sock = on_worker(twistd, port, workers[0], len(body))
    sock.sendall(body[: len(body) // 2])
    assert wait_until(lambda: staging_files(storage) != []), twistd.log_tail()
    os.kill(twistd.pid, signal.SIGKILL)
    assert twistd.process.wait(timeout=30) == -signal.SIGKILL
    processes = []
    for pid in workers:
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(processes, timeout=10)
    assert alive == []
    assert read_all(sock) == b""
    restarted = Twistd(storage, "--listen", f"tcp:{port}:interface=127.0.0.1", *WORKERS)
    try:
        assert restarted.ports(1) == [port]
        request = upload_request([instance(CT)], BOUNDARY)
        assert status_of(raw_exchange(port, request)) == 200
        # The workers' start-up sweep removed the dead run's staged part.
        assert staging_files(storage) == []
        assert not stored_location(storage, big).exists()
        assert len(stored_files(storage)) == 1
    finally:
        assert restarted.stop() == 0


def test_a_worker_failing_at_start_up_stops_the_server(tmp_path: Path) -> None:
    """Storage the main process accepts but a worker cannot start on (its staging
    directory is a file): the server exits non-zero with the worker's error, no restart."""
    storage = tmp_path / "store"
    storage.mkdir()
    (storage / ".staging").write_text("not a directory")
    twistd = Twistd(storage, "--listen", LOOPBACK_ANY_PORT, *WORKERS)
    status = twistd.process.wait(timeout=60)
    assert twistd.wait_for(lambda lines: lines[-1:] == [b""], 10)
    log = twistd.log()
    assert status == 2, log
    assert "cannot start: File exists" in log, log
    assert "failed at start-up" in log
    assert "starting another" not in log
    assert "StowSite starting on" not in log
    assert log.count("cannot start") <= 2  # once per worker at most: no loop
    assert twistd.children_pids() == []


def test_an_endpoint_that_cannot_be_handed_over_refuses_workers(tmp_path: Path) -> None:
    """--workers 2 with a UNIX socket listener: one start-up line, exit 2."""
    twistd = Twistd(tmp_path / "store", "--listen", f"unix:{tmp_path / 'stow.sock'}", *WORKERS)
    assert twistd.process.wait(timeout=60) == 2
    log = twistd.log()
    assert "--workers 2: --listen unix:" in log and "cannot be shared" in log, log


def test_metrics_are_served_once_for_every_worker(tmp_path: Path) -> None:
    """--metrics-listen on the main process: the instances both workers stored are summed,
    and an upload held open on one worker is in flight."""
    twistd = Twistd(
        tmp_path / "store",
        "--listen",
        LOOPBACK_ANY_PORT,
        "--metrics-listen",
        LOOPBACK_ANY_PORT,
        *WORKERS,
    )
    try:
        (port,) = twistd.ports(1)
        match = re.search(r"MetricsSite starting on (\d+)", twistd.log())
        assert match is not None
        metrics_port = int(match.group(1))
        pids = workers_of(twistd)
        for pid in pids:
            with only(twistd, pid):
                request = upload_request([instance(CT)], BOUNDARY)
                assert status_of(raw_exchange(port, request)) == 200
        body = build_multipart([instance(CT)], BOUNDARY)
        held = on_worker(twistd, port, pids[1], len(body))
        try:
            scrape = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            text = raw_exchange(metrics_port, scrape).decode()
            assert 'stow_instances_total{outcome="stored",reason="none"} 2.0' in text, text
            assert "\nstow_uploads_in_flight 1.0" in text, text
            assert text.count("# TYPE stow_requests_total counter") <= 1
        finally:
            held.close()
    finally:
        assert twistd.stop() == 0


def test_sigterm_drains_uploads_on_both_workers_and_exits_0(tmp_path: Path) -> None:
    """SIGTERM to the main process with an upload half-sent on each worker: both are
    answered 200 and stored, new connections are refused, the server exits 0."""
    storage = tmp_path / "store"
    twistd = Twistd(storage, "--listen", LOOPBACK_ANY_PORT, *WORKERS)
    try:
        (port,) = twistd.ports(1)
        pids = workers_of(twistd)
        data = [instance(CT), instance(MR)]
        bodies = [build_multipart([x], BOUNDARY) for x in data]
        socks = [
            on_worker(twistd, port, pid, len(body)) for pid, body in zip(pids, bodies, strict=True)
        ]
        for sock, body in zip(socks, bodies, strict=True):
            sock.sendall(body[:-100])
        twistd.process.send_signal(signal.SIGTERM)
        assert wait_until(lambda: twistd.log().count("SIGTERM: draining, 1 uploads") == 2)
        for sock, body in zip(socks, bodies, strict=True):
            sock.sendall(body[-100:])
        answers = [read_all(sock) for sock in socks]
        assert [status_of(x) if x else 0 for x in answers] == [200, 200], twistd.log_tail()
        assert twistd.process.wait(timeout=30) == 0
        for x in data:
            assert stored_location(storage, x).read_bytes() == x
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                break
        else:
            raise AssertionError("the port still accepts after the drain")
    finally:
        twistd.stop()


def test_upload_limits_hold_for_the_whole_server(tmp_path: Path) -> None:
    """--max-requests 1 and --max-requests-per-peer 1 with two workers: an upload held
    open on one worker makes an upload on the other get 503 + Retry-After; once it is
    answered, the other worker stores."""
    for option in ("--max-requests", "--max-requests-per-peer"):
        (tmp_path / option.strip("-")).mkdir()
        twistd = Twistd(
            tmp_path / option.strip("-") / "store",
            "--listen",
            LOOPBACK_ANY_PORT,
            option,
            "1",
            *WORKERS,
        )
        try:
            (port,) = twistd.ports(1)
            holder_pid, other_pid = workers_of(twistd)
            body = build_multipart([instance(CT)], BOUNDARY)
            held = on_worker(twistd, port, holder_pid, len(body))
            with only(twistd, other_pid):
                refused = raw_exchange(port, upload_request([instance(MR)], BOUNDARY))
            assert status_of(refused) == 503, (option, refused)
            assert b"\r\nRetry-After: " in refused
            held.sendall(body)
            assert status_of(read_all(held)) == 200
            # The holder's release reaches the main process a moment after its
            # client saw the answer (the response finishes after it is written), so
            # the holder must run between tries: ``only`` stops it while one lasts.
            deadline = time.monotonic() + 10
            while True:
                with only(twistd, other_pid):
                    stored = raw_exchange(port, upload_request([instance(MR)], BOUNDARY))
                if status_of(stored) != 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert status_of(stored) == 200, (option, stored)
        finally:
            assert twistd.stop() == 0
