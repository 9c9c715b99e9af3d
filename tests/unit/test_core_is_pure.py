"""The pure core imports without Twisted, Klein, treq or zope: one rule over core/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CORE = REPO_ROOT / "twisted_stow" / "core"

# Modules the core must always hold (a rename must not silently empty the rule).
REQUIRED = {
    "twisted_stow.core.admission",
    "twisted_stow.core.config",
    "twisted_stow.core.deadlines",
    "twisted_stow.core.dicomheader",
    "twisted_stow.core.errors",
    "twisted_stow.core.mediatype",
    "twisted_stow.core.multipart",
    "twisted_stow.core.outcomes",
    "twisted_stow.core.policy",
    "twisted_stow.core.response",
    "twisted_stow.core.singlepart",
    "twisted_stow.core.uids",
    "twisted_stow.core.validation",
}

# Runs in a fresh interpreter, so nothing the test process loaded can hide an import.
_PROBE = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
for name in json.loads(sys.argv[2]):
    importlib.import_module(name)
def edge(module):
    return module.split(".")[0] in ("twisted", "klein", "treq", "zope")
print(json.dumps(sorted(m for m in sys.modules if edge(m))))
"""


def core_modules() -> list[str]:
    """Every module under twisted_stow/core/, by its dotted name."""
    return sorted(
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in CORE.rglob("*.py")
    )


def test_core_holds_the_pure_modules() -> None:
    """The folder rule covers the modules the core is made of."""
    assert REQUIRED <= set(core_modules())


def test_core_modules_do_not_load_twisted() -> None:
    """Each module under core/, imported in a fresh interpreter, loads no Twisted or zope."""
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE, str(REPO_ROOT), json.dumps(core_modules())],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == [], "core modules loaded edge modules"
