"""stow-upload end to end: real files, the console script, a real twistd and a real Orthanc."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks._servers import Orthanc, compile_shim
from tests.dicom_files import uids
from tests.integration.conftest import Server, Twistd
from tests.integration.upload_folders import (
    build_folder,
    report_lines,
    stow_upload_command,
    summary_value,
    synthetic,
    upload,
)
from tests.launcher import LOOPBACK_ANY_PORT


def stored_on_ours(storage: Path, path: Path) -> bytes:
    _, sop, study, series = uids(path)
    return (storage / study / series / f"{sop}.dcm").read_bytes()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc + DICOMweb on 127.0.0.1 (fails, never skips, if it cannot start)."""
    server = Orthanc(tmp_path / "orthanc", compile_shim(tmp_path))
    try:
        yield server
    finally:
        server.stop()


def stored_on_orthanc(server: Orthanc, path: Path) -> bytes:
    _, sop, _, _ = uids(path)
    request = urllib.request.Request(server.url("/tools/lookup"), data=sop.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        (found,) = [x for x in json.loads(answer.read()) if x["Type"] == "Instance"]
    with urllib.request.urlopen(server.url(f"/instances/{found['ID']}/file"), timeout=30) as got:
        return bytes(got.read())


def test_folder_stored_byte_identical_on_ours(twistd_server: Server, tmp_path: Path) -> None:
    """Corpus + 3 synthetic studies + junk, nested: all stored byte-identical, junk skipped, 0."""
    dicom, junk = build_folder(tmp_path / "in")
    report = tmp_path / "report.jsonl"
    done = upload(twistd_server.url, tmp_path / "in", "--report", report, "--max-instances", "7")
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary_value(done.stdout, "stored") == str(len(dicom))
    assert summary_value(done.stdout, "skipped") == str(junk)
    for path in dicom:
        assert stored_on_ours(twistd_server.storage, path) == path.read_bytes(), path
    outcomes = [line["outcome"] for line in report_lines(report)]
    assert outcomes.count("stored") == len(dicom) and outcomes.count("skipped") == junk


def test_gzip_folder_stored_byte_identical_and_verified(
    twistd_server: Server, tmp_path: Path
) -> None:
    """--gzip: the corpus sent compressed is stored byte-identical, and stow-verify passes."""
    dicom, _ = build_folder(tmp_path / "in", studies=1, per_study=2)
    done = upload(twistd_server.url, tmp_path / "in", "--gzip")
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary_value(done.stdout, "stored") == str(len(dicom))
    for path in dicom:
        assert stored_on_ours(twistd_server.storage, path) == path.read_bytes(), path
    verify = subprocess.run(
        [str(Path(sys.executable).with_name("stow-verify")), str(twistd_server.storage)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_folder_stored_byte_identical_on_orthanc(orthanc: Orthanc, tmp_path: Path) -> None:
    """The same folder to Orthanc's /dicom-web: every DICOM file stored byte-identical, exit 0."""
    dicom, junk = build_folder(tmp_path / "in")
    done = upload(f"http://127.0.0.1:{orthanc.port}/dicom-web", tmp_path / "in")
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary_value(done.stdout, "stored") == str(len(dicom))
    assert summary_value(done.stdout, "skipped") == str(junk)
    for path in dicom:
        assert stored_on_orthanc(orthanc, path) == path.read_bytes(), path


def test_paths_from_stdin(twistd_server: Server, tmp_path: Path) -> None:
    """``-`` takes the paths from stdin: only the files listed are sent."""
    files = synthetic(tmp_path / "in", 4)
    listed = "\n".join(str(p) for p in files[:3]) + "\n"
    done = upload(twistd_server.url, "-", stdin=listed)
    assert done.returncode == 0, done.stderr
    assert summary_value(done.stdout, "stored") == "3"


def test_busy_server_503s_are_retried(tmp_path: Path) -> None:
    """--max-requests 1 on the server, --concurrency 4: 503s are retried until all are stored."""
    twistd = Twistd(tmp_path / "store", "--listen", LOOPBACK_ANY_PORT, "--max-requests", "1")
    try:
        (port,) = twistd.ports(1)
        files = synthetic(tmp_path / "in", 24, padding=200_000)
        done = upload(
            f"http://127.0.0.1:{port}", tmp_path / "in", "--concurrency", "4",
            "--max-instances", "2", "--retries", "20",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert summary_value(done.stdout, "stored") == "24"
        assert int(summary_value(done.stdout, "retries")) > 0
        for path in files:
            assert stored_on_ours(tmp_path / "store", path) == path.read_bytes()
    finally:
        twistd.stop()


def _journal_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


# Files of the SIGKILL run: the kill comes once 5 are acknowledged, and every
# one sent after it is refused, which stow-upload takes ~0.3 s apiece for (17 s
# for the 55 of a 60-file run here); 25 left still leave the kill plenty of room.
SIGKILL_RUN_FILES = 30


def test_sigkill_and_journal_resume(tmp_path: Path) -> None:
    """Server SIGKILLed mid-run; after a restart the --journal re-run sends only the rest."""
    storage = tmp_path / "store"
    files = synthetic(tmp_path / "in", SIGKILL_RUN_FILES, padding=100_000)
    journal, first_report, second_report = (tmp_path / n for n in ("j", "r1", "r2"))
    twistd = Twistd(storage, "--listen", LOOPBACK_ANY_PORT)
    (port,) = twistd.ports(1)
    url = f"http://127.0.0.1:{port}"
    args = ["--concurrency", "1", "--max-instances", "1", "--journal", journal]
    client = subprocess.Popen(
        [*stow_upload_command(), url, str(tmp_path / "in"), *map(str, args),
         "--retries", "0", "--report", str(first_report)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while _journal_lines(journal) < 5 and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(twistd.pid, signal.SIGKILL)
        twistd.process.wait()
        out, err = client.communicate(timeout=60)
    finally:
        twistd.stop()
    acknowledged = _journal_lines(journal)
    assert client.returncode == 1, out + err  # the rest failed: the server was gone
    assert 5 <= acknowledged < SIGKILL_RUN_FILES
    first = {line["path"] for line in report_lines(first_report) if line["outcome"] == "stored"}
    assert len(first) == acknowledged
    restarted = Twistd(storage, "--listen", LOOPBACK_ANY_PORT)
    try:
        (port,) = restarted.ports(1)
        done = upload(f"http://127.0.0.1:{port}", tmp_path / "in", *args, "--report", second_report)
    finally:
        restarted.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    lines = report_lines(second_report)
    again = {line["path"] for line in lines if line["outcome"] == "stored"}
    skipped = {line["path"] for line in lines if line["outcome"] == "already-stored"}
    assert skipped == first and again.isdisjoint(first)
    assert len(again) == SIGKILL_RUN_FILES - acknowledged
    for path in files:
        assert stored_on_ours(storage, path) == path.read_bytes()


def test_study_mismatch_exit_1_and_reported(twistd_server: Server, tmp_path: Path) -> None:
    """--study A with one instance of study B: exit 1, B reported failed with 0xA900."""
    ours = synthetic(tmp_path / "in" / "a", 3)
    study = uids(ours[0])[2]
    (stranger,) = synthetic(tmp_path / "in" / "b", 1)
    report = tmp_path / "report.jsonl"
    done = upload(twistd_server.url, tmp_path / "in", "--study", study, "--report", report)
    assert done.returncode == 1, done.stdout + done.stderr
    (failed,) = [line for line in report_lines(report) if line["outcome"] == "failed"]
    assert failed["path"] == str(stranger) and failed["reason"] == 0xA900
    assert failed["http_status"] == 409  # alone in its request: requests are per study
    assert "0xA900" in done.stdout and summary_value(done.stdout, "stored") == "3"


def test_unreachable_server_exit_2_one_line(tmp_path: Path) -> None:
    """Nothing listening: exit 2 and one clear line, before anything was sent."""
    synthetic(tmp_path / "in", 2)
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = upload(f"http://127.0.0.1:{port}", tmp_path / "in", "--quiet")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"stow-upload: cannot reach http://127.0.0.1:{port}: ConnectionRefusedError: "
        "Connection was refused by other side: 111: Connection refused."
    )


def test_wrong_base_url_404_exit_2(twistd_server: Server, tmp_path: Path) -> None:
    """A base URL with no STOW-RS under it: exit 2 and the 404 explained."""
    synthetic(tmp_path / "in", 2)
    done = upload(twistd_server.url + "/nope", tmp_path / "in", "--quiet")
    assert done.returncode == 2
    assert "404 Not Found" in done.stderr and "/nope/studies" in done.stderr
