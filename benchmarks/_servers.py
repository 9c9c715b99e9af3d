"""The servers under test, each started here on 127.0.0.1 and stopped by PID.

* ``Ours``: ``twistd -n stow`` from this checkout, started by
  ``tests.launcher.Twistd`` (the launcher the integration tests use).
* ``Orthanc``: Debian's ``Orthanc`` with the DICOMweb plugin and a config
  written here, with ``bind_loopback.c`` preloaded (compiled with gcc) so it
  listens on 127.0.0.1 only; ``check_loopback_only`` verifies that.
* ``Sink``: ``_sink.py``, the loopback discard limit.

Orthanc and the sink are ``tests.launcher.ServerProcess``es: the same log
reader and the same stop by PID (SIGTERM, then SIGKILL after a timeout).

Each has ``pid``, ``port``, ``path`` (where STOW-RS is) and ``clear()``,
which deletes what the last run stored so every run starts from the same
(empty) storage.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import psutil

from tests.launcher import (
    LOOPBACK_ANY_PORT,
    START_TIMEOUT_SECONDS,
    DidNotStart,
    ServerProcess,
    Twistd,
)

REPO = Path(__file__).resolve().parent.parent
ORTHANC = "/usr/sbin/Orthanc"
# Debian's orthanc-dicomweb 1.7 (bookworm); a later package changes the suffix.
ORTHANC_DICOMWEB = next(
    (str(p) for p in sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*"))),
    "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7",
)


class Started(Protocol):
    """What the benchmark needs of a target server it started."""

    name: str
    path: str  # where STOW-RS is
    port: int

    @property
    def pid(self) -> int: ...

    def log_tail(self) -> str: ...

    def stop(self) -> int: ...

    def release_space(self) -> None:
        """Give back the page cache and disk blocks of what was stored so far."""

    def clear(self) -> None:
        """Delete what the last runs stored."""


def truncate_files(paths: Iterable[Path]) -> None:
    """Truncate regular files to 0 bytes, keeping their inodes.

    Between runs the stored bytes must go, but deleting thousands of files
    makes this (journal-less) ext4 skip every recently freed inode on later
    creates: a fifth of the servers' CPU in a profile.  Keeping the files
    on disk instead makes every run write into page cache pages the VM
    never touched, which cost up to three times more per byte than recycled
    ones.  Truncating frees the pages and blocks and keeps the inodes.
    """
    for path in paths:
        if path.is_file() and not path.is_symlink():
            os.truncate(path, 0)


class Ours(Twistd):
    """``twistd -n stow`` on 127.0.0.1, port 0, storage under ``workdir``.

    ``env`` and ``runner`` go to ``tests.launcher.Twistd`` (backpressure.py
    runs twistd behind a throttled ``os.writev``).
    """

    name = "twisted-stow"
    path = "/studies"

    def __init__(
        self,
        workdir: Path,
        extra_args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        runner: Sequence[str] | None = None,
    ) -> None:
        storage = workdir / "store"
        storage.mkdir(parents=True, exist_ok=True)
        options = ["--listen", LOOPBACK_ANY_PORT, *extra_args]
        super().__init__(storage, *options, env=env, cwd=workdir, runner=runner)
        (self.port,) = self.ports(1)

    def release_space(self) -> None:
        truncate_files(self.storage.glob("*/*/*.dcm"))

    def clear(self) -> None:
        """Delete every stored instance and the duplicate index's entries.

        The study and series directories stay: the server remembers which
        directories it has made durable and would not recreate them.
        """
        for stored in self.storage.glob("*/*/*.dcm"):
            stored.unlink()
        index = self.storage / ".sop-index"
        if index.is_dir():
            for link in index.iterdir():
                link.unlink()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def compile_shim(workdir: Path) -> Path:
    """Build ``bind_loopback.c`` into ``workdir`` with gcc; return the .so."""
    shim = workdir / "bind_loopback.so"
    source = Path(__file__).with_name("bind_loopback.c")
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"], check=True
    )
    return shim


class Orthanc(ServerProcess):
    """Orthanc + DICOMweb on 127.0.0.1 (bind() rewritten by the preloaded shim)."""

    name = "Orthanc"
    path = "/dicom-web/studies"

    def __init__(self, workdir: Path, shim: Path) -> None:
        storage = workdir / "orthanc-storage"
        self.storage = storage
        index = workdir / "orthanc-index"
        storage.mkdir(parents=True)
        index.mkdir()
        port = free_port()
        config = {
            "Name": "stow-bench",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(index),
            "Plugins": [ORTHANC_DICOMWEB],
            "HttpPort": port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            # Defaults, spelled out: compression off, each file fsynced.
            "StorageCompression": False,
            "SyncStorageArea": True,
            # Room for 64 concurrent uploads (default 50 would queue some).
            "HttpThreadsCount": 100,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        config_path = workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        env = {**os.environ, "LD_PRELOAD": str(shim)}
        super().__init__([ORTHANC, str(config_path)], cwd=workdir, env=env)
        self.port = port
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            try:
                with urllib.request.urlopen(self.url("/system"), timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise DidNotStart("Orthanc did not start:\n" + self.log_tail())
            time.sleep(0.1)
        check_loopback_only(self.pid)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _rest(self, method: str, path: str) -> bytes:
        request = urllib.request.Request(self.url(path), method=method)
        with urllib.request.urlopen(request, timeout=300) as answer:
            return bytes(answer.read())

    def release_space(self) -> None:
        # Only the DICOM files: the SQLite index lives in its own directory.
        truncate_files(self.storage.glob("*/*/*"))

    def clear(self) -> None:
        """Delete every study through Orthanc's REST API."""
        for study in json.loads(self._rest("GET", "/studies")):
            self._rest("DELETE", f"/studies/{study}")


def check_loopback_only(pid: int) -> list[str]:
    """The listening addresses of ``pid`` (``ss -ltnp``); raises unless all are loopback."""
    listening = []
    try:
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if f"pid={pid}," in line:
                listening.append(line.split()[3])
    except (OSError, subprocess.CalledProcessError):  # no ss: ask psutil
        for conn in psutil.Process(pid).net_connections("inet"):
            if conn.status == psutil.CONN_LISTEN:
                listening.append(f"{conn.laddr.ip}:{conn.laddr.port}")
    if not listening:
        raise RuntimeError(f"process {pid} listens nowhere")
    for address in listening:
        host = address.rsplit(":", 1)[0].strip("[]")
        if host not in ("127.0.0.1", "::1"):
            raise RuntimeError(f"process {pid} listens on {address}, not on loopback only")
    return listening


class Sink(ServerProcess):
    """``_sink.py`` in its own process: reads bodies, discards them, answers 200.

    With ``store``, it writes them there as durable files instead (the
    floor of a durable server, ``_sink.py`` says how); ``options`` go to it.
    """

    name = "loopback sink"
    path = "/studies"

    def __init__(self, store: Path | None = None, options: Sequence[str] = ()) -> None:
        self.store = store
        command = [sys.executable, "-m", "benchmarks._sink", *options]
        if store is not None:
            store.mkdir(parents=True, exist_ok=True)
            command += ["--store", str(store)]
        super().__init__(command, cwd=REPO)
        # Its first line is its port.
        if not self.wait_for(lambda lines: lines and lines[0].strip().isdigit()):
            self.stop()
            raise DidNotStart("the sink did not start:\n" + self.log_tail())
        self.port = int(self.log().split(maxsplit=1)[0])

    def release_space(self) -> None:
        if self.store is not None:
            truncate_files(self.store.glob("*.dcm"))

    def clear(self) -> None:
        pass
