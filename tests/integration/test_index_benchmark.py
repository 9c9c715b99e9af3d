"""benchmarks.index_cost at a tiny size: every figure is printed (the script keeps working)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_index_cost_tiny_prints_every_figure() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.index_cost",
            *("--instances", "3", "--runs", "1", "--round-trips", "20"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for figure in (
        "blocking psycopg",
        "Database thread pool",
        "psycopg asyncio",
        "index /studies",
        "index /dicomweb (outbox)",
        "plain /dicomweb (spool)",
        "statements (round trips) per instance",
    ):
        assert figure in done.stdout, done.stdout
