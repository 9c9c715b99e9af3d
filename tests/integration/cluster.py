"""A cluster for tests: real ``twistd -n stow`` nodes behind real haproxy or nginx.

The balancers run the configuration files of ``deploy/`` themselves, never a
copy: haproxy expands the ``${STOW_...}`` environment variables in
``deploy/haproxy.cfg`` on its own; ``deploy/nginx.conf`` goes through
``render`` (what ``envsubst`` with a list of names does), which replaces only
those names and leaves nginx's own ``$variables`` alone.  Everything listens
on 127.0.0.1 with free ports and keeps its pid, logs and temporary files in
the test's directory; each process is stopped by its PID.  A balancer that
does not start raises ``DidNotStart``: the test fails, it never skips.

Clients tell themselves apart by their source address: all of 127.0.0.0/8 is
loopback on Linux, so ``source_address=("127.0.0.2", 0)`` is another client
while the balancer reaches the nodes from 127.0.0.1 (their --trusted-proxy).

``Node`` (at the end) is one ``twistd -n stow --index URL`` of its own, for
tests/integration/test_index*.py and test_outbox*.py, which ask nodes
directly; ``start_node`` gives the nodes a balancer stands in front of.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import requests
from pydicom.uid import generate_uid

from tests.dicom_files import CT, MR
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.seaweedfs import SeaweedFS, credentials_env
from tests.integration.streaming import failure_reasons as reasons_in
from tests.integration.streaming import sop_instance_uids
from tests.launcher import LOOPBACK_ANY_PORT, DidNotStart, ServerProcess, Twistd

REPOSITORY = Path(__file__).resolve().parents[2]
HAPROXY_CONFIG = REPOSITORY / "deploy" / "haproxy.cfg"
NGINX_CONFIG = REPOSITORY / "deploy" / "nginx.conf"
# Debian's binaries (.ci/run installs the packages when missing).
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
# Where a balancer connects to the nodes from (the nodes' --trusted-proxy).
BALANCER_ADDRESS = "127.0.0.1"
START_TIMEOUT_SECONDS = 30.0
BOUNDARY = "stow-cluster-load-boundary"
# A client waits this long for an answer; longer is a hang (the test fails).
CLIENT_TIMEOUT_SECONDS = 30.0
_PLACEHOLDER = re.compile(r"\$\{(STOW_[A-Z0-9_]+)\}")


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on now (the balancer binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def render(template: str, values: Mapping[str, str]) -> str:
    """``template`` with every ``${STOW_NAME}`` replaced; a name without a value raises."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"no value for ${{{name}}}")
        return values[name]

    return _PLACEHOLDER.sub(value, template)


def node_values(frontend_port: int, node_ports: Iterable[int]) -> dict[str, str]:
    """The ``STOW_*`` values of a balancer on ``frontend_port`` before ``node_ports``.

    The files name two nodes; one node is named twice (the same node, two
    server lines), which is still one node.
    """
    ports = list(node_ports)
    if len(ports) == 1:
        ports *= 2
    if len(ports) != 2:
        raise ValueError("deploy/ names two nodes")
    return {
        "STOW_FRONTEND": f"127.0.0.1:{frontend_port}",
        "STOW_NODE1": f"127.0.0.1:{ports[0]}",
        "STOW_NODE2": f"127.0.0.1:{ports[1]}",
    }


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Balancer:
    """haproxy or nginx on 127.0.0.1 before the nodes; ``url`` is where clients go."""

    def __init__(self, process: ServerProcess, port: int, name: str, log: Path | None) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.name = name
        self._log = log
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _accepts(port):
            if process.process.poll() is not None or time.monotonic() > deadline:
                process.stop()
                raise DidNotStart(f"{name} did not start on {port}:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self) -> str:
        text = self.process.log_tail()
        if self._log is not None and self._log.exists():
            text += self._log.read_text(errors="replace")[-3000:]
        return text

    def stop(self) -> None:
        self.process.stop()


def start_haproxy(directory: Path, node_ports: Iterable[int]) -> Balancer:
    """``haproxy -db -f deploy/haproxy.cfg`` with the nodes' addresses in its environment."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, **node_values(port, node_ports)}
    # -db: foreground, no daemon, no pid file; logs to stdout (the config).
    process = ServerProcess([HAPROXY, "-db", "-f", str(HAPROXY_CONFIG)], cwd=directory, env=env)
    return Balancer(process, port, "haproxy", None)


def start_nginx(directory: Path, node_ports: Iterable[int]) -> Balancer:
    """nginx in the foreground with ``deploy/nginx.conf`` rendered into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    values = {**node_values(port, node_ports), "STOW_NGINX_RUN": str(directory)}
    config = directory / "nginx.conf"
    config.write_text(render(NGINX_CONFIG.read_text(), values))
    error_log = directory / "error.log"
    process = ServerProcess(
        # -e: the log of start-up itself, before the file's error_log applies
        # (Debian's default would be /var/log/nginx).
        [NGINX, "-e", str(error_log), "-p", str(directory), "-c", str(config), "-g", "daemon off;"],
        cwd=directory,
    )
    return Balancer(process, port, "nginx", error_log)


def start_node(directory: Path, *options: str, env: Mapping[str, str] | None = None) -> NodeProcess:
    """One ``twistd -n stow`` on a free port of 127.0.0.1 that trusts the balancer."""
    storage = directory / "store"
    storage.mkdir(parents=True, exist_ok=True)
    twistd = Twistd(
        storage,
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--trusted-proxy",
        BALANCER_ADDRESS,
        *options,
        env=env,
        cwd=directory,
    )
    (port,) = twistd.ports(1)
    return NodeProcess(twistd, port)


class NodeProcess:
    """A running node: its process and port."""

    def __init__(self, twistd: Twistd, port: int) -> None:
        self.twistd = twistd
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    @property
    def pid(self) -> int:
        return self.twistd.pid

    def kill(self) -> None:
        """SIGKILL by PID, as a crash or the OOM killer would: nothing runs after it."""
        import signal

        os.kill(self.twistd.pid, signal.SIGKILL)
        self.twistd.process.wait()

    def stop(self) -> None:
        self.twistd.stop()


@dataclass
class Attempt:
    """One client POST: what was sent and what came back (status None: no answer)."""

    instances: dict[str, tuple[Any, bytes]]
    phase: str
    status: int | None = None
    stored: list[str] = field(default_factory=list)
    failure_reasons: list[int] = field(default_factory=list)
    retry_after: str | None = None
    correlation_id: str | None = None
    error: str | None = None


class Load:
    """``clients`` threads POSTing two fresh small instances at a time to ``url + path``.

    ``phase`` labels the attempts begun while it is set ("before", "during",
    ...), so a test can say what it expects of the requests of each phase.
    A client's timeout is generous and counted as no answer: a hang fails
    the test rather than blocking it.
    """

    def __init__(self, url: str, path: str = "/studies", clients: int = 8) -> None:
        self.url = url + path
        self.phase = "before"
        self.attempts: list[Attempt] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> list[Attempt]:
        self._stop.set()
        for thread in self._threads:
            thread.join(CLIENT_TIMEOUT_SECONDS * 2)
        return self.attempts

    def acknowledged(self) -> list[tuple[Attempt, str]]:
        """Every (attempt, SOP Instance UID) a node answered as stored."""
        return [(attempt, uid) for attempt in self.attempts for uid in attempt.stored]

    def _client(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            instances = {ds.SOPInstanceUID: (ds, data) for ds, data in (fresh(MR), fresh(CT))}
            attempt = Attempt(instances, self.phase)
            self.attempts.append(attempt)
            try:
                answer = session.post(
                    self.url,
                    data=build_multipart([data for _, data in instances.values()], BOUNDARY),
                    headers={
                        "Content-Type": multipart_content_type(BOUNDARY),
                        "Accept": "application/dicom+json",
                    },
                    timeout=CLIENT_TIMEOUT_SECONDS,
                )
            except requests.RequestException as e:
                attempt.error = type(e).__name__
                session = requests.Session()
                continue
            attempt.status = answer.status_code
            attempt.retry_after = answer.headers.get("Retry-After")
            attempt.correlation_id = answer.headers.get("X-Correlation-ID")
            if answer.headers.get("Content-Type", "").startswith("application/dicom+json"):
                model = answer.json()
                attempt.stored = sop_instance_uids(model)
                attempt.failure_reasons = reasons_in(model) + reasons_in(model, "0008119A")


def fresh(path: Path) -> tuple[Any, bytes]:
    """The DICOM file at ``path`` as a new instance (a fresh SOP Instance UID)."""
    ds = pydicom.dcmread(path)
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    with BytesIO() as buffer:
        pydicom.dcmwrite(buffer, ds)
        return ds, buffer.getvalue()


# The index tests' own nodes, asked directly (test_index*.py, test_outbox*.py).
INDEX_BOUNDARY = "cluster-test-boundary-0123456789"
ANSWER_TIMEOUT_SECONDS = 60.0
DUPLICATE = 0x0111
PROCESSING_FAILURE = 0x0110


class Node:
    """One ``twistd -n stow --index URL`` (``--storage`` S3 when ``bucket`` is given)."""

    def __init__(
        self,
        base: Path,
        index_url: str,
        *options: str,
        seaweed: SeaweedFS | None = None,
        bucket: str | None = None,
    ) -> None:
        base.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        storage: list[str] = []
        if bucket is not None:
            assert seaweed is not None
            env.update(credentials_env())
            storage = [
                "--storage",
                f"s3://{bucket}/site",
                "--s3-endpoint",
                seaweed.endpoint,
                "--workflow-spool",
                str(base / "spool"),
            ]
        self.base = base
        # Twistd passes a --storage of its own first; a later s3:// one wins.
        self.twistd = Twistd(
            base / "store",
            "--listen",
            LOOPBACK_ANY_PORT,
            "--index",
            index_url,
            *storage,
            *options,
            env=env,
            cwd=base,
        )
        (port,) = self.twistd.ports(1)
        self.url = f"http://127.0.0.1:{port}"

    def post(self, parts: list[bytes], path: str = "/studies") -> requests.Response:
        return requests.post(
            self.url + path,
            data=build_multipart(parts, INDEX_BOUNDARY),
            headers={
                "Content-Type": multipart_content_type(INDEX_BOUNDARY),
                "Accept": "application/dicom+json",
            },
            timeout=ANSWER_TIMEOUT_SECONDS,
        )

    def kill(self) -> None:
        """SIGKILL by PID: the node dies for good, no shutdown code runs."""
        os.kill(self.twistd.pid, signal.SIGKILL)
        self.twistd.process.wait()

    def stop(self) -> None:
        self.twistd.stop()


def new_instance(*, padding: int = 0, seed: int = 0) -> tuple[pydicom.Dataset, bytes]:
    """CT_small as a new instance (fresh SOP Instance UID), ``padding`` bytes longer."""
    ds = pydicom.dcmread(CT)
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    return ds, with_padding(ds, padding=padding, seed=seed)


def with_padding(ds: pydicom.Dataset, *, padding: int, seed: int) -> bytes:
    """``ds`` with a trailing padding element of ``padding`` bytes made from ``seed``:
    other bytes under the same UIDs for each seed."""
    with BytesIO() as buffer:
        pydicom.dcmwrite(buffer, ds)
        data = buffer.getvalue()
    if not padding:
        return data
    filler = bytes((seed + i) % 241 for i in range(241)) * (padding // 241 + 1)
    # (FFFC,FFFC) Data Set Trailing Padding, OB: after everything validation reads.
    return data + b"\xfc\xff\xfc\xffOB\x00\x00" + struct.pack("<I", padding) + filler[:padding]


def failure_reasons(answer: dict[str, Any]) -> list[int]:
    """FailureReason of each FailedSOPSequence item of a JSON Store Instances Response."""
    items = answer.get("00081198", {}).get("Value", [])
    return [item["00081197"]["Value"][0] for item in items]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
