"""stow-upload's edges: auth over TLS, the progress bar under a pty, and scripted answers."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tests.dicom_files import uids
from tests.integration.test_auth_twistd import PASSWORD, TLSServer
from tests.integration.test_auth_twistd import tls_server as tls_server  # the fixture
from tests.integration.upload_folders import (
    report_lines,
    stow_upload_command,
    summary_value,
    synthetic,
    upload,
)
from twisted_stow.core.multipart import MultipartParser, PartData, PartEnded, PartStarted


def test_basic_auth_over_tls(tls_server: TLSServer, tmp_path: Path) -> None:
    """--user with --password-file, --cacert: stored over TLS; the secret is in no argv."""
    files = synthetic(tmp_path / "in", 3)
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    args = ["--user", "alice", "--password-file", secret, "--cacert", tls_server.ca]
    done = upload(tls_server.url, tmp_path / "in", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    _, sop, study, series = uids(files[0])
    assert (tls_server.storage / study / series / f"{sop}.dcm").exists()
    assert PASSWORD not in " ".join(map(str, args))


def test_bearer_token_from_env_over_tls(tls_server: TLSServer, tmp_path: Path) -> None:
    """STOW_TOKEN gives a Bearer token (this one may store under /aets/CT1 only)."""
    synthetic(tmp_path / "in", 2)
    url = tls_server.url + "/aets/CT1/rs"
    done = upload(
        url, tmp_path / "in", "--cacert", tls_server.ca, env={"STOW_TOKEN": tls_server.token}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    refused = upload(tls_server.url, tmp_path / "in", "--cacert", tls_server.ca, "-q",
                     env={"STOW_TOKEN": tls_server.token})  # fmt: skip
    assert refused.returncode == 2 and "403 Forbidden" in refused.stderr


def test_wrong_password_and_untrusted_certificate(tls_server: TLSServer, tmp_path: Path) -> None:
    """A refused password is a 401 line; an untrusted certificate is "cannot reach": exit 2."""
    synthetic(tmp_path / "in", 1)
    wrong = upload(tls_server.url, tmp_path / "in", "--user", "alice", "--cacert", tls_server.ca,
                   "-q", env={"STOW_PASSWORD": "not it"})  # fmt: skip
    assert wrong.returncode == 2 and "401 Unauthorized" in wrong.stderr
    untrusted = upload(tls_server.url, tmp_path / "in", "-q", env={"STOW_PASSWORD": PASSWORD})
    assert untrusted.returncode == 2
    assert untrusted.stderr.startswith(f"stow-upload: cannot reach {tls_server.url}: ")
    assert untrusted.stderr.count("\n") == 1


def test_progress_bar_under_a_pty(tls_server: TLSServer, tmp_path: Path) -> None:
    """On a terminal: a redrawn (\\r) bar with bytes, a rate, instances, retries and failures."""
    synthetic(tmp_path / "in", 20, padding=50_000)
    controller, terminal = pty.openpty()
    # A terminal 150 columns wide (a fresh pty is 0 x 0).
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))
    url = tls_server.url + "/aets/CT1/rs"
    options = ["--cacert", str(tls_server.ca), "--max-instances", "1", "--concurrency", "1"]
    command = [*stow_upload_command(), url, str(tmp_path / "in"), *options]
    env = {**os.environ, "STOW_TOKEN": tls_server.token}
    process = subprocess.Popen(command, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the process ended
                break
            if not chunk:
                break
            output += chunk
    os.close(controller)
    assert process.wait(timeout=30) == 0
    text = output.decode(errors="replace")
    assert "\r" in text and "stow-upload" in text
    assert "20/20 instances" in text and "retries" in text and "failed" in text
    assert "B/s" in text and "100%" in text
    assert "stored " in text  # the summary follows the bar


def test_plain_progress_lines_without_a_terminal(tls_server: TLSServer, tmp_path: Path) -> None:
    """Not a terminal: plain lines (no \\r); --quiet: nothing but the summary."""
    synthetic(tmp_path / "in", 2)
    args = [tls_server.url + "/aets/CT1/rs", tmp_path / "in", "--cacert", tls_server.ca]
    env = {"STOW_TOKEN": tls_server.token}
    plain = upload(*args, env=env)
    assert "\r" not in plain.stderr and plain.stderr.startswith("stow-upload: 2/2 instances")
    quiet = upload(*args, "--quiet", env=env)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert summary_value(quiet.stdout, "stored") == "0" or "already" in quiet.stdout


class Scripted(Resource):
    """A STOW-RS stand-in that answers from a script: the first POST gets 429 with
    Retry-After; an instance in ``transient`` fails once with 0xA700, one in
    ``permanent`` always with 0xC000; the rest are stored.  It records what
    each POST held, and when."""

    isLeaf = True

    def __init__(self, transient: set[str], permanent: set[str]) -> None:
        super().__init__()
        self.transient, self.permanent = set(transient), permanent
        self.posts: list[tuple[float, list[str]]] = []

    def render_POST(self, request: Request) -> bytes:
        boundary = request.getHeader("content-type").split("boundary=")[1].encode()  # type: ignore[union-attr]
        parser = MultipartParser(boundary)
        events = parser.feed(request.content.read()) + parser.close()  # type: ignore[union-attr]
        sent, part = [], b""
        for event in events:
            if isinstance(event, PartStarted):
                part = b""
            elif isinstance(event, PartData):
                part += bytes(event.data)
            elif isinstance(event, PartEnded):
                sent.append(str(pydicom.dcmread(BytesIO(part)).SOPInstanceUID))
        self.posts.append((time.monotonic(), sent))
        if len(self.posts) == 1:
            request.setResponseCode(429)
            request.setHeader("Retry-After", "1")
            return b""
        stored, failed = [], []
        for uid in sent:
            if uid in self.permanent:
                failed.append((uid, 0xC000))
            elif uid in self.transient:
                self.transient.discard(uid)
                failed.append((uid, 0xA700))
            else:
                stored.append(uid)

        def item(uid: str, reason: int | None = None) -> dict[str, object]:
            entry: dict[str, object] = {"00081155": {"vr": "UI", "Value": [uid]}}
            if reason is not None:
                entry["00081197"] = {"vr": "US", "Value": [reason]}
            return entry

        model = {
            "00081199": {"vr": "SQ", "Value": [item(u) for u in stored]},
            "00081198": {"vr": "SQ", "Value": [item(u, r) for u, r in failed]},
        }
        request.setResponseCode(202 if failed and stored else 409 if failed else 200)
        request.setHeader("Content-Type", "application/dicom+json")
        return json.dumps(model).encode()


@pytest.fixture
def scripted_folder(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    files = synthetic(tmp_path / "in", 6)
    yield tmp_path / "in", [uids(p)[1] for p in files]


@pytest_twisted.ensureDeferred
async def test_retry_after_and_per_instance_retries(
    scripted_folder: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """429 waits out Retry-After; only the 0xA700 instance is sent again; 0xC000 is reported."""
    from twisted.internet import reactor

    folder, sops = scripted_folder
    script = Scripted(transient={sops[1]}, permanent={sops[4]})
    port = reactor.listenTCP(0, Site(script), interface="127.0.0.1")  # type: ignore[attr-defined]
    report = tmp_path / "report.jsonl"
    try:
        url = f"http://127.0.0.1:{port.getHost().port}"
        done = await deferToThread(upload, url, folder, "--report", report)
    finally:
        await port.stopListening()
    assert done.returncode == 1, done.stdout + done.stderr
    (first_at, first), (second_at, second), *later = script.posts
    assert first == second == sops and second_at - first_at >= 1.0  # Retry-After: 1
    assert [sent for _, sent in later] == [[sops[1]]]  # only the transient failure again
    failed = [line for line in report_lines(report) if line["outcome"] == "failed"]
    assert [(f["sop_instance_uid"], f["reason"]) for f in failed] == [(sops[4], 0xC000)]
    assert summary_value(done.stdout, "stored") == "5"


class Refusing(Resource):
    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        request.setResponseCode(415)
        return b""


@pytest_twisted.ensureDeferred
async def test_415_is_one_line_and_exit_2(scripted_folder: tuple[Path, list[str]]) -> None:
    """A server that refuses the media type: exit 2, the 415 explained in one line."""
    from twisted.internet import reactor

    port = reactor.listenTCP(0, Site(Refusing()), interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        url = f"http://127.0.0.1:{port.getHost().port}"
        done = await deferToThread(upload, url, scripted_folder[0], "-q")
    finally:
        await port.stopListening()
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "415 Unsupported Media Type" in done.stderr
