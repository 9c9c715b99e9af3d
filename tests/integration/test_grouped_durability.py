"""Grouped durability, checked from the syscalls of a real ``twistd``.

strace (``-f``: every thread; ``-yy``: each fd's path or TCP endpoints) is
attached to the running server while several clients upload into one
series at once.  From the trace: every staged file is fsynced before its
link; every directory a commit changed or created (series, index, and the
parents of new study and series directories) is fsynced by an fsync that
*began after* the change and *ended before* the first byte of the response
listing that instance went to its client; and there are fewer directory
fsyncs than instances, so one fsync answered several commits.

Why the trace order is sound: strace handles one ptrace stop at a time and
writes each line (or each "unfinished"/"resumed" half) as it handles it,
while the traced thread stays stopped.  A syscall's exit is handled after
the kernel did its work, and its entry before the kernel starts it, so
"exit of A before entry of B" in the file means A's effect was complete
before B began.  A call on one line had no other event between its entry
and exit.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import generate_uid

from tests.dicom_files import CT
from tests.integration.conftest import LOOPBACK_ANY_PORT, Twistd, twistd_command
from tests.integration.crafted import instance
from tests.integration.streaming import sop_instance_uids, status_of, upload_request

BOUNDARY = "grouped-durability"
CLIENTS = 4
PARTS_PER_REQUEST = 6
TRACED = (
    "fsync,fdatasync,link,linkat,rename,renameat,renameat2,symlink,symlinkat,"
    "mkdir,mkdirat,openat,sendto,sendmsg,write,writev"
)
_SENDS = frozenset({"sendto", "sendmsg", "write", "writev"})

_COMPLETE = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+|\?)")
_UNFINISHED = re.compile(r"^(\d+)\s+(\w+)\((.*) <unfinished \.\.\.>$")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>.*\)\s+=\s+(-?\d+|\?)")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_FD_PATH = re.compile(r"^-?\d+<(.*?)>")


@dataclass
class Call:
    name: str
    args: str
    entry: int  # position of its entry in strace's order of handling
    exit: int = -1
    result: str = "?"

    @property
    def ok(self) -> bool:
        return self.result == "0" or (self.name in _SENDS and self.result.isdigit())

    def fd_path(self) -> str:
        match = _FD_PATH.match(self.args)
        return match.group(1) if match else ""

    def last_path(self) -> str:
        return _QUOTED.findall(self.args)[-1]

    def first_path(self) -> str:
        return _QUOTED.findall(self.args)[0]


def parse_trace(text: str) -> list[Call]:
    calls: list[Call] = []
    open_calls: dict[tuple[str, str], Call] = {}
    for position, line in enumerate(text.splitlines()):
        if match := _COMPLETE.match(line):
            tid, name, args, result = match.groups()
            calls.append(Call(name, args, position, position, result))
        elif match := _UNFINISHED.match(line):
            tid, name, args = match.groups()
            call = Call(name, args, position)
            open_calls[(tid, name)] = call
            calls.append(call)
        elif match := _RESUMED.match(line):
            tid, name, result = match.groups()
            call = open_calls.pop((tid, name))
            call.exit, call.result = position, result
    return calls


def workers_option() -> list[str]:
    """``--workers 1`` when the server has that option: strace is attached to
    one process, so every commit must run in it (and a multi-process default
    would put them elsewhere)."""
    help_text = subprocess.run(
        [twistd_command(), "stow", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    return ["--workers", "1"] if "--workers" in help_text else []


@dataclass
class Upload:
    parts: list[bytes]
    port: int = 0  # the client's local port: names its connection in the trace
    answer: bytes = b""


def post(server_port: int, upload: Upload, go: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", server_port), timeout=60) as sock:
        upload.port = sock.getsockname()[1]
        go.wait(30)
        sock.sendall(upload_request(upload.parts, BOUNDARY))
        while chunk := sock.recv(65536):
            upload.answer += chunk


def attach_strace(pid: int, out: Path) -> subprocess.Popen[bytes]:
    log = out.with_suffix(".log")
    tracer = subprocess.Popen(
        ["strace", "-f", "-yy", "-e", f"trace={TRACED}", "-o", str(out), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    deadline = time.monotonic() + 30
    while b"attached" not in log.read_bytes():
        assert tracer.poll() is None, f"strace could not attach: {log.read_text()}"
        assert time.monotonic() < deadline, "strace did not attach within 30 s"
        time.sleep(0.05)
    return tracer


def test_concurrent_commits_share_directory_fsyncs_and_each_answer_follows_them(
    tmp_path: Path,
) -> None:
    root = tmp_path / "store"
    server = Twistd(root, "--listen", LOOPBACK_ANY_PORT, *workers_option())
    trace = tmp_path / "server.trace"
    study, series = generate_uid(), generate_uid()
    uploads = [
        Upload(
            [
                instance(CT, StudyInstanceUID=study, SeriesInstanceUID=series)
                for _ in range(PARTS_PER_REQUEST)
            ]
        )
        for _ in range(CLIENTS)
    ]
    try:
        (port,) = server.ports(1)
        tracer = attach_strace(server.pid, trace)
        try:
            go = threading.Event()
            clients = [
                threading.Thread(target=post, args=(port, u, go), daemon=True) for u in uploads
            ]
            for client in clients:
                client.start()
            go.set()
            for client in clients:
                client.join(120)
        finally:
            tracer.send_signal(signal.SIGINT)  # detaches from the server
            tracer.wait(30)
    finally:
        server.stop()

    listed: dict[str, int] = {}  # SOP Instance UID → client port of the answer
    for upload in uploads:
        assert status_of(upload.answer) == 200, upload.answer[:500]
        model = json.loads(upload.answer.partition(b"\r\n\r\n")[2])
        sops = sop_instance_uids(model)
        assert len(sops) == PARTS_PER_REQUEST
        listed.update(dict.fromkeys(sops, upload.port))

    calls = parse_trace(trace.read_text())
    answered: dict[int, int] = {}  # client port → entry of the first send to it
    for call in calls:
        if call.name in _SENDS:
            endpoint = re.match(r"-?\d+<TCP:\[[\d.]+:\d+->[\d.]+:(\d+)\]>", call.args)
            if endpoint:
                answered.setdefault(int(endpoint.group(1)), call.entry)
    assert set(answered) == {u.port for u in uploads}, "a response is missing from the trace"
    fsyncs = [c for c in calls if c.name in ("fsync", "fdatasync") and c.ok]

    def synced_between(path: Path, after: int, before: int) -> bool:
        """An fsync of ``path`` began after position ``after`` and ended before ``before``."""
        return any(f.fd_path() == str(path) and f.entry > after and f.exit < before for f in fsyncs)

    series_dir = root / study / series
    links = {
        Path(c.last_path()).stem: c
        for c in calls
        if c.name in ("link", "linkat") and c.ok and Path(c.last_path()).parent == series_dir
    }
    entries = {
        Path(c.last_path()).name: c
        for c in calls
        if c.name in ("symlink", "symlinkat", "rename", "renameat", "renameat2")
        and c.ok
        and Path(c.last_path()).parent == root / ".sop-index"
        and not c.last_path().endswith(".tmp")  # a temporary renamed over the entry
    }
    assert set(links) == set(listed) == set(entries)
    for sop, client_port in listed.items():
        link, response = links[sop], answered[client_port]
        staged = link.first_path()
        assert "/.staging/" in staged
        assert any(f.fd_path() == staged and f.exit < link.entry for f in fsyncs), (
            f"{sop}: staged file not fsynced before its link"
        )
        assert synced_between(series_dir, link.exit, response), (
            f"{sop}: no fsync of its series directory between its link and its answer"
        )
        assert synced_between(root / ".sop-index", entries[sop].exit, response), (
            f"{sop}: no fsync of the index between its entry and its answer"
        )
    # The study and series directories were made during the trace: each
    # one's entry in its parent is durable before any answer listing an
    # instance inside it.
    made = [c for c in calls if c.name in ("mkdir", "mkdirat") and c.ok]
    made_dirs = {Path(c.last_path()): c for c in made}
    assert set(made_dirs) >= {root / study, series_dir}
    for directory in (root / study, series_dir):
        for response in answered.values():
            assert synced_between(directory.parent, made_dirs[directory].exit, response), (
                f"{directory} made but its parent not fsynced before an answer"
            )

    # The grouping: commits shared fsyncs.
    instances = len(listed)
    series_fsyncs = sum(1 for f in fsyncs if f.fd_path() == str(series_dir))
    index_fsyncs = sum(1 for f in fsyncs if f.fd_path() == str(root / ".sop-index"))
    assert 0 < series_fsyncs < instances, (series_fsyncs, instances)
    assert 0 < index_fsyncs < instances, (index_fsyncs, instances)
