"""Issue 16 with a real ``twistd -n stow``: metrics, readiness, drain, JSON logs, start-up."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.dicom_files import CT, MR, SR, read, stored_path
from tests.helpers import build_multipart
from tests.integration.conftest import LOOPBACK_ANY_PORT, Twistd
from tests.integration.observe import staging_files, stored_files, wait_until
from tests.integration.streaming import raw_exchange, raw_post, status_of

BOUNDARY = "ops-test-boundary-0123456789"
METRICS_STARTED = re.compile(rb"MetricsSite starting on (\d+)")
WAIT_SECONDS = 30.0
# Exit status of a signalled process that did not drain (Popen: minus the signal).
EXIT_SIGTERM = -signal.SIGTERM


def metrics_port(twistd: Twistd) -> int:
    """The port of the "MetricsSite starting on N" line."""
    assert twistd.wait_for(lambda lines: any(METRICS_STARTED.search(x) for x in lines))
    (match,) = METRICS_STARTED.findall(twistd.log().encode())
    return int(match)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics, parsed with prometheus_client.parser: sample (name, labels) → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def started(storage: Path, *options: str) -> Twistd:
    return Twistd(storage, "--listen", LOOPBACK_ANY_PORT, *options)


@pytest.fixture
def servers() -> Iterator[list[Twistd]]:
    """Every twistd a test starts, stopped (by PID) at the end."""
    started_here: list[Twistd] = []
    yield started_here
    for twistd in started_here:
        twistd.stop()


def open_upload(port: int, body: bytes, sent: int) -> socket.socket:
    """A POST whose headers and first ``sent`` body bytes are on their way."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS)
    request = raw_post(body, BOUNDARY)
    head = len(request) - len(body)
    sock.sendall(request[: head + sent])
    return sock


def finish_upload(sock: socket.socket, body: bytes, sent: int) -> bytes:
    sock.sendall(body[sent:])
    received = b""
    while data := sock.recv(65536):
        received += data
    sock.close()
    return received


def test_metrics_count_what_was_sent(tmp_path: Path, servers: list[Twistd]) -> None:
    """/metrics parses; 3 stored, one 503 (per-client limit), one 413, bytes ≥ the bodies."""
    twistd = started(
        tmp_path / "store",
        "--metrics-listen",
        LOOPBACK_ANY_PORT,
        "--max-body-size",
        "600K",
        "--max-requests-per-peer",
        "1",
    )
    servers.append(twistd)
    (port,) = twistd.ports(1)
    mport = metrics_port(twistd)
    body = build_multipart([read(p) for p in (CT, MR, SR)], BOUNDARY)
    held = open_upload(port, body, 1000)
    assert wait_until(lambda: scrape(mport)[("stow_uploads_in_flight", ())] == 1)
    busy = raw_exchange(port, raw_post(body, BOUNDARY))
    assert status_of(busy) == 503
    assert status_of(finish_upload(held, body, 1000)) == 200
    too_large = raw_post(b"x" * (700 * 1024), BOUNDARY)
    assert status_of(raw_exchange(port, too_large)) == 413
    samples = scrape(mport)
    assert samples[("stow_instances_total", (("outcome", "stored"), ("reason", "none")))] == 3
    assert (
        samples[("stow_refusals_total", (("cause", "ServiceUnavailable"), ("status", "503")))] == 1
    )
    assert samples[("stow_refusals_total", (("cause", "BodyTooLarge"), ("status", "413")))] == 1
    assert samples[("stow_requests_total", (("family", "standard"), ("status", "200")))] == 1
    assert samples[("stow_received_bytes_total", ())] >= len(body)
    assert samples[("stow_request_body_bytes_count", ())] == 1
    assert samples[("stow_commit_duration_seconds_count", ())] == 3
    assert samples[("stow_uploads_in_flight", ())] == 0


def test_readiness_follows_storage_and_free_space(tmp_path: Path, servers: list[Twistd]) -> None:
    """/readyz: 200, then 503 naming "storage" while the directory is gone; /healthz stays 200."""
    storage = tmp_path / "store"
    twistd = started(storage)
    servers.append(twistd)
    (port,) = twistd.ports(1)
    assert get(port, "/readyz")[0] == 200
    # Root ignores permissions: take the directory away instead of chmod-ing it.
    storage.rename(tmp_path / "elsewhere")
    status, body = get(port, "/readyz")
    assert status == 503
    checks = json.loads(body)["checks"]
    assert checks["storage"] != "ok" and checks["draining"] == "ok"
    assert get(port, "/healthz")[0] == 200
    (tmp_path / "elsewhere").rename(storage)
    assert get(port, "/readyz")[0] == 200


def test_min_free_space_answers_507(tmp_path: Path, servers: list[Twistd]) -> None:
    """Below --min-free-space a POST gets 507 + Retry-After from its headers; /readyz says why."""
    twistd = started(tmp_path / "store", "--min-free-space", "1000000T")
    servers.append(twistd)
    (port,) = twistd.ports(1)
    answer = raw_exchange(port, raw_post(build_multipart([read(CT)], BOUNDARY), BOUNDARY))
    assert status_of(answer) == 507 and b"Retry-After: 60" in answer
    assert stored_files(tmp_path / "store") == []
    status, body = get(port, "/readyz")
    assert status == 503 and "min-free-space" in json.loads(body)["checks"]["free_space"]


def test_sigterm_drains_uploads_in_flight(tmp_path: Path) -> None:
    """SIGTERM with 4 uploads half sent: all 4 answered 200 and stored, a new connection is
    refused, a request on an open keep-alive connection gets 503 + close, exit status 0."""
    storage = tmp_path / "store"
    # --workers 1: the drain is per worker, and a worker with no upload in
    # flight stops at once, closing its idle keep-alive connections unanswered
    # (which HTTP allows).  With two, the kernel may put the keep-alive
    # connection on the worker holding none of the 4 uploads: then its request
    # meets a closed connection, not the 503 this test is about (seen once in
    # a whole-suite run).  test_workers covers the drain across workers.
    twistd = started(
        storage,
        "--metrics-listen",
        LOOPBACK_ANY_PORT,
        "--drain-timeout",
        "30",
        "--workers",
        "1",
    )
    try:
        (port,) = twistd.ports(1)
        mport = metrics_port(twistd)
        bodies = [build_multipart([read(p)], BOUNDARY) for p in (CT, MR, SR, CT)]
        # The fourth is a second copy of CT: an identical duplicate succeeds.
        uploads = [open_upload(port, body, len(body) // 2) for body in bodies]
        keep_alive = socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS)
        keep_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 200 " in keep_alive.recv(65536)
        assert wait_until(lambda: scrape(mport)[("stow_uploads_in_flight", ())] == 4)
        twistd.process.send_signal(signal.SIGTERM)
        assert twistd.wait_for(lambda lines: any(b"draining" in line for line in lines))
        assert wait_until(lambda: scrape(mport)[("stow_draining", ())] == 1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS).close()
        keep_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        refused = keep_alive.recv(65536)
        keep_alive.close()
        assert status_of(refused) == 503 and b"Connection: close" in refused
        answers = [
            finish_upload(sock, body, len(body) // 2)
            for sock, body in zip(uploads, bodies, strict=True)
        ]
        assert [status_of(a) for a in answers] == [200] * 4
        status = twistd.process.wait(timeout=WAIT_SECONDS)
    finally:
        twistd.stop()
    assert status == 0, twistd.log_tail()
    for path in (CT, MR, SR):
        assert stored_path(storage, path).read_bytes() == read(path)


def test_drain_timeout_aborts_what_is_left(tmp_path: Path) -> None:
    """An upload longer than --drain-timeout is aborted: nothing partial left, exit status 0."""
    storage = tmp_path / "store"
    twistd = started(storage, "--drain-timeout", "0.5", "--metrics-listen", LOOPBACK_ANY_PORT)
    try:
        (port,) = twistd.ports(1)
        mport = metrics_port(twistd)
        body = build_multipart([read(CT)], BOUNDARY)
        sock = open_upload(port, body, len(body) // 2)
        assert wait_until(lambda: scrape(mport)[("stow_uploads_in_flight", ())] == 1)
        twistd.process.send_signal(signal.SIGTERM)
        status = twistd.process.wait(timeout=WAIT_SECONDS)
        sock.close()
    finally:
        twistd.stop()
    assert status == 0, twistd.log_tail()
    assert "drain timeout: aborting 1 uploads" in twistd.log()
    assert stored_files(storage) == [] and staging_files(storage) == []


def test_json_log_lines(tmp_path: Path, servers: list[Twistd]) -> None:
    """--log-format json: every line is one JSON object; request.done and instance.stored
    carry their keys."""
    twistd = started(tmp_path / "store", "--log-format", "json")
    servers.append(twistd)
    (port,) = twistd.ports(1)
    body = build_multipart([read(CT)], BOUNDARY)
    assert status_of(raw_exchange(port, raw_post(body, BOUNDARY))) == 200
    assert twistd.wait_for(lambda lines: any(b'"request.done"' in line for line in lines))
    records = [json.loads(line) for line in twistd.log().splitlines() if line]
    assert all({"timestamp", "level", "event", "message"} <= set(r) for r in records)
    (done,) = [r for r in records if r["event"] == "request.done"]
    assert {"method", "path", "family", "status", "peer", "principal", "correlation_id"} <= set(
        done
    )
    assert done["status"] == 200 and done["bytes"] == len(body) and done["stored"] == 1
    assert done["peer"] == "127.0.0.1" and done["family"] == "standard"
    (stored,) = [r for r in records if r["event"] == "instance.stored"]
    assert stored["sop_instance_uid"] and stored["size"] == len(read(CT))
    assert stored["sha256"] == hashlib.sha256(read(CT)).hexdigest()
    # One line per instance (a second, from ingest, doubled the relayed events).
    assert [r for r in records if stored["sop_instance_uid"] in r["message"]] == [stored]


def test_config_file_starts_the_server(tmp_path: Path, servers: list[Twistd]) -> None:
    """--config: the file's options apply (its --max-body-size refuses), the command line wins."""
    config = tmp_path / "stow.toml"
    config.write_text(
        'max-body-size = "1K"\nidle-timeout = 30\nlisten = "tcp:1:interface=127.0.0.1"\n'
    )
    twistd = started(tmp_path / "store", "--config", str(config))
    servers.append(twistd)
    (port,) = twistd.ports(1)  # --listen on the command line replaced the file's
    answer = raw_exchange(port, raw_post(build_multipart([read(CT)], BOUNDARY), BOUNDARY))
    assert status_of(answer) == 413


def _port_in_use(tmp_path: Path) -> tuple[list[str], socket.socket]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return ["--listen", f"tcp:{holder.getsockname()[1]}:interface=127.0.0.1"], holder


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("port-in-use", "cannot listen"),
        ("bare-port", "--listen: '8080' is not a Twisted endpoint"),
        ("storage-file", "is not a directory"),
        ("missing-tls-key", "No such file or directory: "),
        ("missing-users", "--users "),
        ("bad-config-key", "'max-body-sise' is not an option"),
        ("unknown-option", "option --bogus not recognized"),
    ],
)
def test_startup_failures_are_one_line(tmp_path: Path, case: str, expected: str) -> None:
    """Each start-up failure: exit 2, one error line and a pointer to --help, no traceback."""
    holder = None
    storage = tmp_path / "store"
    options: list[str] = ["--listen", LOOPBACK_ANY_PORT]
    if case == "port-in-use":
        options, holder = _port_in_use(tmp_path)
    elif case == "bare-port":
        options = ["--listen", "8080"]
    elif case == "storage-file":
        storage.write_bytes(b"not a directory")
    elif case == "missing-tls-key":
        options = ["--listen", f"ssl:0:interface=127.0.0.1:privateKey={tmp_path / 'no.pem'}"]
    elif case == "missing-users":
        options += ["--users", str(tmp_path / "no-users")]
    elif case == "bad-config-key":
        (tmp_path / "bad.toml").write_text("max-body-sise = '1G'\n")
        options += ["--config", str(tmp_path / "bad.toml")]
    else:
        options += ["--bogus"]
    twistd = Twistd(storage, *options)
    try:
        status = twistd.process.wait(timeout=WAIT_SECONDS)
    finally:
        twistd.stop()
        if holder is not None:
            holder.close()
    log = twistd.log()
    assert status == 2, log
    assert "Traceback" not in log and "Usage:" not in log, log
    (line,) = [x for x in log.splitlines() if x.startswith("twistd stow: ")]
    assert expected in line, log
    assert "Run 'twistd stow --help' for the options." in log


def _header(raw: bytes, name: bytes) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0]
    (value,) = [
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")[1:]
        if line.split(b":", 1)[0].strip().lower() == name
    ]
    return value.decode()


def test_part_numbers_of_failures_without_uids(tmp_path: Path, servers: list[Twistd]) -> None:
    """A part that is not DICOM: its log line, the Warning header and the 400 problem
    document name its part number; the stored parts' log lines name theirs."""
    twistd = started(tmp_path / "store", "--log-format", "json")
    servers.append(twistd)
    (port,) = twistd.ports(1)
    body = build_multipart([read(CT), b"no DICOM here", read(MR)], BOUNDARY)
    answer = raw_exchange(port, raw_post(body, BOUNDARY))
    assert status_of(answer) == 202
    assert "parts failed without UIDs: 2 (" in _header(answer, b"warning")
    # The body ends inside its second part, after a first that is no DICOM:
    # nothing stored, 400, and the problem document still names part 1.
    whole = build_multipart([b"no DICOM here", read(SR)], BOUNDARY)
    answer = raw_exchange(port, raw_post(whole[: whole.index(read(SR)) + 100], BOUNDARY))
    assert status_of(answer) == 400
    problem = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert [item["part"] for item in problem["failedPartsWithoutUIDs"]] == [1]
    assert problem["failedPartsWithoutUIDsCount"] == 1
    assert twistd.wait_for(lambda lines: sum(b'"request.done"' in x for x in lines) >= 2)
    records = [json.loads(line) for line in twistd.log().splitlines() if line]
    instances = [r for r in records if r["event"] in ("instance.stored", "instance.failed")]
    # Logged as each outcome is known: the failure may come before part 1's commit.
    assert sorted((r["part"], r["event"]) for r in instances[:3]) == [
        (1, "instance.stored"),
        (2, "instance.failed"),
        (3, "instance.stored"),
    ]
    (failed,) = [r for r in instances[:3] if r["event"] == "instance.failed"]
    assert failed["message"].startswith("part 2: failed ")
