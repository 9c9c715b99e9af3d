"""The wheel a plain ``pip install .`` builds carries the twistd plugin correctly."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

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
