"""Which ``stow-metrics-*`` directories a starting server sweeps (workers/metricsdir.py).

Real processes and a real /proc: this process is a live owner, a child
that has exited and been reaped a gone one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted_stow.workers import metricsdir


def gone_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_live_servers_directory_is_kept(tmp_path: Path) -> None:
    live = metricsdir.make(str(tmp_path))
    (Path(live) / "counter_1.db").write_bytes(b"x")
    assert metricsdir.sweep(str(tmp_path)) == []
    assert Path(live, "counter_1.db").exists()


def test_a_gone_owners_directory_is_swept(tmp_path: Path) -> None:
    boot = metricsdir.boot_id()
    dead = tmp_path / f"stow-metrics-{boot}-{gone_pid()}-12345-abc_9"
    dead.mkdir()
    (dead / "counter_7.db").write_bytes(b"x")
    assert metricsdir.sweep(str(tmp_path)) == [str(dead)]
    assert not dead.exists()


def test_a_reused_pid_or_another_boot_is_a_gone_owner(tmp_path: Path) -> None:
    boot = metricsdir.boot_id()
    started = metricsdir.start_time(os.getpid())
    assert started is not None
    reused = f"stow-metrics-{boot}-{os.getpid()}-{started + 1}-x"
    other_boot = f"stow-metrics-{'f' * 8 if boot != 'f' * 8 else '0' * 8}-{os.getpid()}-{started}-x"
    ours = f"stow-metrics-{boot}-{os.getpid()}-{started}-x"
    assert metricsdir.is_stale(reused, boot=boot)
    assert metricsdir.is_stale(other_boot, boot=boot)
    assert not metricsdir.is_stale(ours, boot=boot)


def test_other_names_files_and_links_are_left_alone(tmp_path: Path) -> None:
    boot = metricsdir.boot_id()
    pid = gone_pid()
    old_style = tmp_path / "stow-metrics-k3j4h5"  # no owner in the name: cannot tell
    old_style.mkdir()
    a_file = tmp_path / f"stow-metrics-{boot}-{pid}-1-file"
    a_file.write_text("not a directory")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_text("")
    link = tmp_path / f"stow-metrics-{boot}-{pid}-1-link"
    link.symlink_to(target)
    assert metricsdir.sweep(str(tmp_path)) == []
    assert old_style.exists() and a_file.exists() and (target / "keep").exists()


def test_the_start_time_of_this_process_is_stable() -> None:
    assert metricsdir.start_time(os.getpid()) == metricsdir.start_time(os.getpid())
    assert metricsdir.start_time(gone_pid()) is None
