"""The pure core imports without Twisted, Klein or treq (STYLE.md: one test checks it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Modules that must exist and stay pure.
REQUIRED = [
    "twisted_stow",
    "twisted_stow.errors",
    "twisted_stow.outcomes",
    "twisted_stow.multipart",
    "twisted_stow.singlepart",
    "twisted_stow.mediatype",
]
# Pure too, checked whenever they exist.
OPTIONAL = [
    "twisted_stow.response",
    "twisted_stow.validation",
    "twisted_stow.dicomheader",
    "twisted_stow.uids",
    "twisted_stow.deadlines",
    "twisted_stow.durable",
]

# Runs in a fresh interpreter, so nothing the test process loaded can hide an import.
_PROBE = """
import importlib, importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
required, optional = json.loads(sys.argv[2]), json.loads(sys.argv[3])
for name in required:
    importlib.import_module(name)
checked = list(required)
for name in optional:
    if importlib.util.find_spec(name) is not None:
        importlib.import_module(name)
        checked.append(name)
def edge(module):
    return module == "twisted" or module.startswith(("twisted.", "klein", "treq"))
print(json.dumps({"checked": checked, "edge": sorted(m for m in sys.modules if edge(m))}))
"""


def test_core_modules_do_not_load_twisted() -> None:
    """Importing every core module in a fresh interpreter loads no twisted/klein/treq module."""
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            _PROBE,
            str(REPO_ROOT),
            json.dumps(REQUIRED),
            json.dumps(OPTIONAL),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert set(REQUIRED) <= set(report["checked"])
    assert report["edge"] == [], f"core modules loaded {report['edge']}"
