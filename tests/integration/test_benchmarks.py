"""The benchmark scripts run end to end at a tiny size, so they cannot rot.

Timings are not judged here (benchmarks/README.md has the figures); what is
checked is that every scenario ran against every target — our twistd
(at ``--workers 1`` and the default in the workers scenario), Orthanc
started on 127.0.0.1, the loopback sink, the disk — that every
request was answered and every instance stored, and that the JSON, the
Markdown table and the plots were written.  Orthanc (Debian ``orthanc`` and
``orthanc-dicomweb``, installed by ``.ci/run``) and gcc must be present.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _servers, _studies
from twisted_stow.core.config import worker_count

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_SECONDS = 300


def _require_orthanc() -> None:
    missing = [
        path for path in (_servers.ORTHANC, _servers.ORTHANC_DICOMWEB) if not Path(path).exists()
    ]
    if missing or shutil.which("gcc") is None:
        pytest.fail(
            f"the benchmarks need Orthanc and gcc (missing: {missing or 'gcc'});"
            " apt-get install orthanc orthanc-dicomweb gcc (.ci/run does)"
        )


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_stow_bench_tiny_runs_every_scenario_against_every_target(tmp_path: Path) -> None:
    _require_orthanc()
    out = tmp_path / "results"
    _run(
        "-m",
        "benchmarks.stow_bench",
        *("--size", "tiny", "--out", str(out), "--workdir", str(tmp_path)),
    )

    results = json.loads((out / "results.json").read_text())
    rows = results["summary"]["rows"]
    seen = {(r["scenario"], r["study"], r["target"], r["clients"]) for r in rows}
    targets = ("ours", "ours-length", "orthanc", "sink", "disk")
    for study in ("large", "ct", "mixed"):
        for target in targets:
            assert ("throughput", study, target, 1) in seen
    for clients in (1, 4, 16, 64):
        for target in ("ours", "orthanc", "sink", "disk"):
            assert ("concurrency", "ct", target, clients) in seen
    assert {("limit", "ct", "ours-limited", c) for c in (16, 64)} <= seen
    assert {("memory", "huge", t, 1) for t in ("ours", "ours-length")} <= seen
    # The workers scenario (issue 12): both our configurations and Orthanc.
    for study, clients in (("ct16", 16), ("ct", 1), ("large", 1)):
        for target in ("ours-w1", "ours", "orthanc"):
            assert ("workers", study, target, clients) in seen
    assert {("workers", "large", t, 4) for t in ("ours", "disk")} <= seen
    assert [r for r in rows if r["errors"]] == []

    # Orthanc was kept on loopback (bind_loopback.c, checked with ss).
    listening = results["environment"]["orthanc_listening"]
    assert listening and all(a.startswith(("127.0.0.1:", "[::1]:")) for a in listening)
    # Over the limit, some answers were 503 and their latency was measured.
    limited = [r for r in rows if r["scenario"] == "limit"]
    assert all(r["refused_share"] > 0 and r["refusal_p95_ms"] is not None for r in limited)
    # Every target took the whole ct study in every scenario (the admitted
    # bytes are the same; 64 requests carry more framing than one).
    runs = results["runs"]
    for scenario in ("throughput", "concurrency", "limit"):
        sizes = {r["body_bytes"] for r in runs if r["study"] == "ct" and r["scenario"] == scenario}
        assert len(sizes) == 1, (scenario, sizes)
    assert {t["target"].split(":")[0] for t in results["summary"]["targets"]} >= {
        "large, chunked",
        "ct, chunked",
    }

    _check_workers_scenario(results)

    markdown = (out / "results.md").read_text()
    for heading in (
        "## Throughput",
        "## Ratios",
        "## Concurrency limit",
        "## Workers",
        "## Targets (issue 5",
        "## Targets (issue 12",
    ):
        assert heading in markdown
    for plot in ("throughput.png", "concurrency.png", "memory.png", "workers.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG")
    # Nothing is left behind in the work directory.
    assert [p.name for p in tmp_path.iterdir()] == ["results"]


def _check_workers_scenario(results: dict[str, Any]) -> None:
    """Every run of the workers scenario stored its whole study, on servers
    of the configuration it names, and the issue-12 targets were judged."""
    workers = [r for r in results["runs"] if r["scenario"] == "workers"]
    for run in workers:
        expected = sum(count for count, _ in _studies.TINY[run["study"]])
        assert run["instances"] == expected, run
    default = worker_count(None, len(os.sched_getaffinity(0)))
    processes = {"ours-w1": 1, "ours": 1 if default == 1 else default + 1, "orthanc": 1}
    for run in workers:
        if run["target"] == "disk":
            assert run["peak_rss"] is None
            continue
        assert run["processes"] == processes[run["target"]], run
        # One process's peak is part of the tree's (sampled and VmHWM alike).
        assert 0 < run["peak_process_rss"] <= run["peak_rss"]
        assert 0 < run["kernel_peak_process_rss"] <= run["kernel_peak_rss"]
        if run["processes"] > 1:
            assert run["kernel_peak_process_rss"] < run["kernel_peak_rss"]
    targets = results["summary"]["targets_issue12"]
    names = " ".join(t["target"] for t in targets)
    # 16 clients, ct, large and peak RSS for each; large with 4 clients at the default.
    assert len(targets) == 9, names
    assert names.count("ours (--workers 1)") == 4, names
    assert names.count("ours (default workers)") == 5, names
    assert "/ disk write + fsync, 4 writers" in names
    assert all(isinstance(t["met"], bool) and t["measured"] is not None for t in targets)


def test_peak_rss_tiny_stores_and_checks_one_request(tmp_path: Path) -> None:
    done = _run(
        "-m",
        "benchmarks.peak_rss",
        "--sizes",
        "2M",
        "--part-size",
        "256K",
        "--workdir",
        str(tmp_path),
    )
    assert "check OK" in done.stdout


def test_s3_bench_tiny_runs_every_target_on_large_and_ct(tmp_path: Path) -> None:
    """benchmarks.s3_bench at the tiny size: every target on both studies (Orthanc on ct),
    every object stored, the JSON and the table written."""
    _require_orthanc()
    out = tmp_path / "results"
    _run(
        "-m",
        "benchmarks.s3_bench",
        *("--size", "tiny", "--runs", "1", "--out", str(out), "--workdir", str(tmp_path)),
    )
    results = json.loads((out / "s3.json").read_text())
    seen = {(r["study"], r["target"]) for r in results["runs"]}
    expected = {("large", t) for t in ("ours", "boto3", "boto3-1", "multipart")}
    expected |= {("ct", t) for t in ("ours", "boto3", "multipart", "orthanc")}
    assert seen == expected
    assert [r for r in results["runs"] if r["problem"]] == []
    for study in ("large", "ct"):
        figures = results["summary"]["studies"][study]
        assert figures["ratio"] > 0 and figures["ours_peak_rss_mib"] > 0
        assert all(ratio > 0 for ratio in figures["ratios"].values())
    assert "one multipart upload of the body" in (out / "s3.md").read_text()
    # Where each run's CPU went (10 ms ticks: a tiny run may see none of one
    # process, never none of the store over all runs nor of the machine).
    runs = results["runs"]
    assert all(0 < r["machine_busy"] <= 1 for r in runs), runs
    assert sum(r["store_cpu_s_per_gb"] for r in runs) > 0
    assert sum(r["server_cpu_s_per_gb"] for r in runs if r["target"] == "ours") > 0


def test_control_cost_tiny_measures_all_three_ways() -> None:
    """benchmarks.control_cost at a tiny count: a row for local, one reactor and two processes,
    the child main process stopped by the run itself."""
    done = _run("-m", "benchmarks.control_cost", "--count", "20", "--batches", "1")
    rows = {line.split()[0] for line in done.stdout.splitlines()[2:]}
    assert rows == {"local", "one", "two"}, done.stdout


def test_floor_bench_tiny_measures_every_target(tmp_path: Path) -> None:
    """benchmarks.floor_bench at the tiny size: the sink, the floor with and without its
    SHA-256, the disk and our server all stored the study, with the figures written."""
    out = tmp_path / "floor.json"
    _run("-m", "benchmarks.floor_bench", "--size", "tiny", "--runs", "1", "--out", str(out))
    medians = json.loads(out.read_text())["medians"]
    assert set(medians) == {"1", "4"}
    for row in medians.values():
        assert set(row) == {"sink", "floor", "floor+sha256", "disk", "ours"}
        assert all(figures["mb_per_second"] > 0 for figures in row.values())
        # CPU is counted in 10 ms ticks: only our server does enough at this size.
        assert row["ours"]["server_cpu_s_per_gb"] > 0
