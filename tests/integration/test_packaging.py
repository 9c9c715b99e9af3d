"""The wheel a plain ``pip install .`` builds carries the twistd plugin correctly, and the
deployment examples in deploy/ install and start it."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.launcher import LOOPBACK_ANY_PORT, STARTED, ServerProcess, twistd_command
from twisted_stow.core.config import DEFAULT_DRAIN_TIMEOUT_SECONDS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built the way ``pip install .`` builds it."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("twisted_stow-*.whl")
    return built


def test_wheel_installs_the_plugin_without_shadowing_twisted(wheel: Path) -> None:
    """twisted/plugins/stow_plugin.py is in the wheel; twisted/plugins/__init__.py is not."""
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/stow_plugin.py" in names
    # Shipping this file would overwrite Twisted's own plugin package.
    assert "twisted/plugins/__init__.py" not in names
    assert "twisted_stow/tap.py" in names
    assert "twisted_stow/storage/filesystem.py" in names


def test_plugin_is_found_from_an_installed_tree(wheel: Path, tmp_path: Path) -> None:
    """Installed into a bare directory, Twisted's plugin scan finds ``stow`` there."""
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from twisted.plugin import getPlugins\n"
        "from twisted.application.service import IServiceMaker\n"
        "import twisted.plugins, os\n"
        "found = [m for m in getPlugins(IServiceMaker) if m.tapname == 'stow']\n"
        "here = os.path.join(sys.argv[1], 'twisted', 'plugins')\n"
        "print(found[0].module, here in twisted.plugins.__path__,\n"
        "      os.path.exists(os.path.join(here, 'stow_plugin.py')))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["twisted_stow.tap", "True", "True"]


DEPLOY = ROOT / "deploy"


def _dockerfile_commands() -> tuple[str, list[str]]:
    """The Dockerfile's install command (its RUN) and its start command (its CMD)."""
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    (run,) = [line.removeprefix("RUN ") for line in lines if line.startswith("RUN ")]
    (cmd,) = [line.removeprefix("CMD ") for line in lines if line.startswith("CMD ")]
    return run, json.loads(cmd)


def test_dockerfile_installs_and_starts_the_server(wheel: Path, tmp_path: Path) -> None:
    """The Dockerfile's RUN and CMD, run in a fresh venv here (no container engine): the
    server answers /healthz.  /src is the wheel, /opt/stow the venv, the listener loopback."""
    run, cmd = _dockerfile_commands()
    venv = tmp_path / "opt-stow"
    # Dependencies come from this interpreter's site-packages (a .pth file), so
    # the fresh venv installs only the package itself, offline.
    run = run.replace("/opt/stow", str(venv)).replace("/src", f"--no-deps --no-index {wheel}")
    subprocess.run(
        run.replace("python -m venv", f"{sys.executable} -m venv --without-pip").replace(
            f"{venv}/bin/pip", f"{sys.executable} -m pip --python {venv}/bin/python"
        ),
        shell=True,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (site,) = venv.glob("lib/python*/site-packages")
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # The console script Twisted's own install would have put there.
    twistd = venv / "bin" / "twistd"
    twistd.write_text(f"#!{venv}/bin/python\nfrom twisted.scripts.twistd import run\nrun()\n")
    twistd.chmod(0o755)
    command = [
        arg.replace("/opt/stow", str(venv))
        .replace("tcp:8080:interface=0.0.0.0", LOOPBACK_ANY_PORT)
        .replace("/data", str(tmp_path / "data"))
        for arg in cmd
    ]
    server = ServerProcess(command, cwd=tmp_path)
    try:
        assert server.wait_for(lambda lines: any(STARTED.search(x) for x in lines)), server.log()
        (port,) = [int(m.group(1)) for m in STARTED.finditer(server.log().encode())]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.status == 200
        # The server runs from the fresh install, not from this checkout.
        assert f"({venv}/bin/python" in server.log()
    finally:
        status = server.stop()
    assert status == 0, server.log_tail()
    assert (site / "twisted_stow" / "tap.py").exists()


def test_systemd_unit_is_valid_and_outlasts_the_drain(tmp_path: Path) -> None:
    """The unit: Type=exec, KillSignal=SIGTERM, TimeoutStopSec above the drain timeout, and
    ``systemd-analyze verify`` accepts it (ExecStart pointed at this twistd)."""
    text = (DEPLOY / "twisted-stow.service").read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0].isalpha()
    )
    assert settings["Type"] == "exec" and settings["KillSignal"] == "SIGTERM"
    assert float(settings["TimeoutStopSec"]) > DEFAULT_DRAIN_TIMEOUT_SECONDS
    unit = tmp_path / "twisted-stow.service"
    unit.write_text(text.replace("/opt/twisted-stow/bin/twistd", twistd_command()))
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verified.returncode == 0, verified.stderr
