"""A real PostgreSQL server for tests, on 127.0.0.1 and a free port.

Debian's binaries (``/usr/lib/postgresql/<major>/bin``, the ``postgresql``
package, which .ci/run installs when missing). ``initdb`` refuses to run as
root, so as root the cluster directory is chowned to the ``postgres`` user
and ``initdb``/``postgres`` run as that user (``setpriv``, which execs, so
the PID held is the postmaster's); otherwise as the
current user. The cluster lives in a directory of its own under the system
temp dir, not under pytest's (pytest resets its per-user root to 0700 in
every session, which would lock the postgres user out of a running cluster
while other sessions start); its Unix socket goes there too, so nothing
touches the machine's own /var/run/postgresql; ``close`` removes it.
Started and stopped by PID (other engineers run PostgreSQL too); ``stop``
then ``start`` again keeps the data, which is how the tests restart the
database under a running server. If it cannot start, the tests that need it
fail: they never skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.launcher import wait_until_ready

BIN_ROOT = Path("/usr/lib/postgresql")
# initdb takes ~2 s and the server ~1 s to accept connections here; leave
# room for a loaded 2-core machine.
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
SUPERUSER = "stow"
DATABASE = "stow"


def bin_dir() -> Path:
    """The newest installed major version's ``bin`` (raises when none is installed)."""
    found = sorted(
        (path for path in BIN_ROOT.glob("*/bin") if (path / "postgres").exists()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if not found:
        raise RuntimeError(f"no PostgreSQL under {BIN_ROOT}: install the Debian postgresql")
    return found[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgreSQL:
    """One PostgreSQL cluster in ``base``; ``url`` is what ``--index`` takes.

    Trust authentication on 127.0.0.1 for the superuser ``stow``: the tests
    need no password, and the server never puts one on its command line.
    """

    def __init__(self, base: Path, *, fsync: bool = False) -> None:
        self.base = base
        # Off for tests (see start); benchmarks turn it on to measure what a
        # real, durable commit costs.
        self.fsync = fsync
        base.mkdir(parents=True, exist_ok=True)
        self.home = Path(tempfile.mkdtemp(prefix="stow-postgres-"))
        self.data = self.home / "data"
        self.sockets = self.home / "run"
        self.port = free_port()
        self.url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"
        self.process: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0
        self._initialised = False

    def _command(self, *argv: str) -> list[str]:
        if self._as_root:
            # setpriv execs: the PID we hold is postgres's own.
            return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]
        return list(argv)

    def _own(self, *paths: Path) -> None:
        if self._as_root:
            account = pwd.getpwnam("postgres")
            for path in paths:
                os.chown(path, account.pw_uid, account.pw_gid)

    def _initdb(self) -> None:
        binaries = bin_dir()
        for path in (self.data, self.sockets):
            path.mkdir(parents=True, exist_ok=True)
        self.data.chmod(0o700)
        self._own(self.home, self.data, self.sockets)
        result = subprocess.run(
            self._command(
                str(binaries / "initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ),
            capture_output=True,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed ({result.returncode}):\n{result.stdout.decode()}"
                f"{result.stderr.decode()}"
            )
        self._initialised = True

    def start(self) -> None:
        """Start (initdb the first time) and wait until it answers; raises if not."""
        if not self._initialised:
            self._initdb()
        log = open(self.base / "postgres.log", "ab")
        self.process = subprocess.Popen(
            self._command(
                str(bin_dir() / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.sockets}",
                # A test database: durability of the test cluster itself is
                # not what is tested (the server's answers are), and fsync
                # would cost every test seconds on this shared disk.
                "-c",
                f"fsync={'on' if self.fsync else 'off'}",
                "-c",
                "max_connections=100",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group: a SIGINT to the test run does not reach it
            # before the fixture stops it.
            start_new_session=True,
        )
        log.close()
        if wait_until_ready(self.process, self._created, START_TIMEOUT_SECONDS, 0.2):
            return
        tail = (self.base / "postgres.log").read_bytes()[-3000:].decode(errors="replace")
        self.stop()
        raise RuntimeError(f"PostgreSQL did not start on port {self.port}:\n{tail}")

    def _created(self) -> bool:
        """The server answers, and the tests' database exists (created once)."""
        try:
            with psycopg.connect(
                f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres",
                connect_timeout=2,
                autocommit=True,
            ) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
                ).fetchone()
                if exists is None:
                    conn.execute(f"CREATE DATABASE {DATABASE}")
        except psycopg.Error:
            return False
        return True

    def connect(self, dbname: str = DATABASE) -> psycopg.Connection[tuple[object, ...]]:
        """A connection of the tests' own (autocommit) to look at or change the rows."""
        return psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname}",
            connect_timeout=5,
            autocommit=True,
        )

    def new_database(self) -> str:
        """A fresh empty database; its ``--index`` URL."""
        name = f"stow_{os.urandom(6).hex()}"
        with self.connect("postgres") as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{name}"

    @property
    def running(self) -> bool:
        """Whether the server this object started is still alive."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Fast shutdown (SIGINT) of the postmaster by PID and wait; SIGKILL if it hangs."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # The postmaster has exited once its pid file is gone.
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        """Stop, and remove the cluster's directory."""
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)
