"""The workflow request builder (pure) and the spool's file handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from twisted_stow.core.outcomes import Failed, FailureReason, InstanceRef, Stored, WarningReason
from twisted_stow.workflow.request import (
    SCHEMA_VERSION,
    WorkflowContext,
    build_workflow_request,
    decode,
    encode,
    format_timestamp,
    instance_relative_path,
)
from twisted_stow.workflow.spool import Spool, entry_name

REPO_ROOT = Path(__file__).resolve().parents[2]
CT = "1.2.840.10008.5.1.4.1.1.2"
A = InstanceRef(CT, "1.2.3.1", "1.2.3", "1.2.3.9")
B = InstanceRef(CT, "1.2.3.2", "1.2.3", "1.2.3.9")
CONTEXT = WorkflowContext(
    payload_id="p-1",
    correlation_id="c-1",
    workflows=("wf",),
    endpoint="/dicomweb/wf/studies",
    peer="10.0.0.7",
    principal="alice",
    storage_root="/srv/dicom",
    timestamp=datetime(2026, 11, 22, 19, 40, 1, 123456, tzinfo=timezone.utc),
)


def test_request_lists_stored_instances_only() -> None:
    """Failed outcomes are left out; fields come from outcomes and context."""
    outcomes = [
        Stored(A, size_bytes=100, sha256="ab" * 32),
        Failed(FailureReason.CANNOT_UNDERSTAND, "bad"),
        Failed(FailureReason.DUPLICATE_SOP_INSTANCE, "dup", CT, "1.2.3.5"),
        Stored(B, WarningReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "other study", 50),
    ]
    request = build_workflow_request(outcomes, CONTEXT)
    assert request is not None
    assert request["schema_version"] == SCHEMA_VERSION
    assert request["payload_id"] == "p-1"
    assert request["correlation_id"] == "c-1"
    assert request["workflows"] == ["wf"]
    assert request["file_count"] == 2
    assert request["total_bytes"] == 150
    assert request["timestamp"] == "2026-11-22T19:40:01.123456Z"
    assert request["principal"] == "alice"
    assert request["peer"] == request["data_trigger"]["source"] == "10.0.0.7"
    assert [e["sop_instance_uid"] for e in request["payload"]] == ["1.2.3.1", "1.2.3.2"]
    assert request["payload"][0] == {
        "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.9",
        "sop_instance_uid": "1.2.3.1",
        "sop_class_uid": CT,
        "path": "1.2.3/1.2.3.9/1.2.3.1.dcm",
        "size": 100,
        "sha256": "ab" * 32,
    }


def test_nothing_stored_is_no_request() -> None:
    """No Stored outcome (or no outcome at all): nothing to trigger."""
    assert build_workflow_request([], CONTEXT) is None
    failed = [Failed(FailureReason.CANNOT_UNDERSTAND, "bad")]
    assert build_workflow_request(failed, CONTEXT) is None


def test_same_instance_twice_is_listed_once() -> None:
    """One SOP Instance UID sent twice in a POST is one file."""
    request = build_workflow_request([Stored(A, size_bytes=1), Stored(A, size_bytes=1)], CONTEXT)
    assert request is not None and request["file_count"] == 1


def test_unknown_size_makes_total_unknown() -> None:
    """A storage that reports no size gives null sizes, not a wrong total."""
    request = build_workflow_request([Stored(A), Stored(B, size_bytes=5)], CONTEXT)
    assert request is not None and request["total_bytes"] is None


def test_timestamp_is_utc_and_needs_a_zone() -> None:
    """Timestamps are converted to UTC; a naive datetime is refused."""
    plus_two = timezone(timedelta(hours=2))
    assert format_timestamp(datetime(2026, 1, 1, 2, 0, tzinfo=plus_two)) == (
        "2026-01-01T00:00:00.000000Z"
    )
    with pytest.raises(ValueError):
        format_timestamp(datetime(2026, 1, 1))


def test_encode_decode_round_trip() -> None:
    """JSON bytes round-trip; something else is refused."""
    request = build_workflow_request([Stored(A, size_bytes=1)], CONTEXT)
    assert request is not None
    assert decode(encode(request)) == request
    for junk in (b"[]", b'{"x": 1}'):
        with pytest.raises(ValueError):
            decode(junk)
    with pytest.raises(ValueError):
        decode(b"{not json")


def test_relative_path_follows_storage_layout() -> None:
    """<Study>/<Series>/<SOP>.dcm, as storage/filesystem.py lays files out."""
    assert instance_relative_path(A) == "1.2.3/1.2.3.9/1.2.3.1.dcm"


def test_spool_write_is_complete_and_listed_in_order(tmp_path: Path) -> None:
    """Entries are whole files, listed oldest first; temp and dot files skipped."""
    spool = Spool(tmp_path / "spool")
    spool.open()
    later = spool.write(entry_name(2_000, "b"), b"second")
    earlier = spool.write(entry_name(1_000, "a"), b"first")
    (spool.directory / ".unreadable-x.json").write_bytes(b"?")
    (spool.directory / ".tmp-1-c").write_bytes(b"partial")
    assert spool.pending() == [earlier, later]
    assert earlier.name == "00000000000000001000-a.json"
    assert Spool.read(earlier) == b"first"
    spool.remove([earlier, earlier])  # twice: already gone is fine
    assert spool.pending() == [later]


def test_spool_refuses_names_outside_it(tmp_path: Path) -> None:
    """An entry name never escapes the directory or hides as a dot-file."""
    spool = Spool(tmp_path)
    for name in ("../x", ".hidden"):
        with pytest.raises(ValueError):
            spool.write(name, b"")


def test_failed_spool_write_leaves_nothing(tmp_path: Path) -> None:
    """A write that fails leaves neither the entry nor its temp file."""
    spool = Spool(tmp_path / "spool")
    spool.open()
    os.mkdir(spool.directory / "x.json")  # the final name is taken by a directory
    with pytest.raises(OSError):
        spool.write("x", b"data")
    assert sorted(p.name for p in spool.directory.iterdir()) == ["x.json"]


def test_open_sweeps_temp_files_of_dead_processes(tmp_path: Path) -> None:
    """Start-up removes temp files of gone processes, keeps a live writer's."""
    spool = Spool(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / f".tmp-{dead.pid}-a").write_bytes(b"x")
        (tmp_path / f".tmp-{live.pid}-b").write_bytes(b"x")
        (tmp_path / "00000000000000000001-c.json").write_bytes(b"{}")
        spool.open()
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == [f".tmp-{live.pid}-b", "00000000000000000001-c.json"]
    finally:
        live.kill()
        live.wait()


def test_workflow_core_is_pure() -> None:
    """The builder and the spool import without Twisted (docs/DESIGN.md: pure parts)."""
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import twisted_stow.workflow.request, twisted_stow.workflow.spool;"
        "import json; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('twisted', 'klein', 'treq'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(REPO_ROOT)], capture_output=True, check=True, text=True
    )
    assert json.loads(out.stdout) == []
