"""Crash safety: a real ``twistd`` killed with SIGKILL during concurrent uploads.

After a restart on the same storage: no partial file anywhere in the storage
tree (staging files live in ``.staging/`` and the start-up sweep removes those
of the dead process), and every instance that a 200/202 response listed
before the kill is present and byte-identical.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from io import BytesIO
from pathlib import Path

import pydicom

from tests.dicom_files import CT, MR
from tests.integration.conftest import LOOPBACK_ANY_PORT, Twistd
from tests.integration.crafted import instance, stored_location
from tests.integration.observe import staging_files, stored_files
from tests.integration.streaming import raw_exchange, sop_instance_uids, status_of, upload_request

BOUNDARY = "crash-boundary"
CLIENTS = 6
PARTS_PER_REQUEST = 3
# Large enough that a part spans several 1 MiB write batches, so staging
# files are on disk when the process dies.
PADDING_BYTES = 3 * 1024 * 1024


class Client(threading.Thread):
    """Uploads bodies of fresh instances, one request after another, until the server dies."""

    def __init__(self, port: int, number: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.number = number
        self.stop = stop
        self.sent: list[bytes] = []  # every instance put on the wire
        self.acknowledged: list[str] = []  # SOP Instance UIDs listed as stored
        self.responses = 0
        self.unexpected: list[bytes] = []  # answers other than 200/202

    def run(self) -> None:
        while not self.stop.is_set():
            parts = [
                instance(CT if (self.number + i) % 2 else MR, padding=PADDING_BYTES * (i % 2))
                for i in range(PARTS_PER_REQUEST)
            ]
            self.sent.extend(parts)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=20) as sock:
                    sock.sendall(upload_request(parts, BOUNDARY))
                    answer = b""
                    while chunk := sock.recv(65536):
                        answer += chunk
            except OSError:
                return  # the server is gone
            if not answer:
                return
            if status_of(answer) not in (200, 202):
                self.unexpected.append(answer[:500])
                return
            model = json.loads(answer.partition(b"\r\n\r\n")[2])
            self.acknowledged.extend(sop_instance_uids(model))
            self.responses += 1


def sop_uid_of(data: bytes) -> str:
    return str(pydicom.dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def test_sigkill_during_concurrent_uploads_loses_nothing_acknowledged(tmp_path: Path) -> None:
    root = tmp_path / "store"
    server = Twistd(root, "--listen", LOOPBACK_ANY_PORT)
    stop = threading.Event()
    clients: list[Client] = []
    try:
        (port,) = server.ports(1)
        clients = [Client(port, n, stop) for n in range(CLIENTS)]
        for client in clients:
            client.start()
        # One more client sends half of a large part and holds: a staged
        # partial file is certainly on disk when the process dies.
        big = instance(MR, padding=4 * PADDING_BYTES)
        request = upload_request([big], BOUNDARY)
        holder = socket.create_connection(("127.0.0.1", port), timeout=20)
        holder.sendall(request[: len(request) // 2])
        # Kill while answers have gone out and parts are half-staged.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answered = sum(client.responses for client in clients)
            if answered >= CLIENTS and staging_files(root):
                break
            time.sleep(0.01)
        else:
            raise AssertionError("never saw answers and staged parts together")
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
        holder.close()
    finally:
        stop.set()
        server.stop()
    for client in clients:
        client.join(timeout=30)
    left_by_the_crash = staging_files(root)

    restarted = Twistd(root, "--listen", LOOPBACK_ANY_PORT)
    try:
        (port,) = restarted.ports(1)
        # The start-up sweep removed the dead process's staging files.
        assert left_by_the_crash, "the kill left no staged part: the test proved nothing"
        # "starting on" is logged when the port opens, before the storage
        # service starts; an answer means start-up (and its sweep) is done.
        ping = b"GET /studies HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert status_of(raw_exchange(port, ping)) == 405
        assert staging_files(root) == []

        assert [a for client in clients for a in client.unexpected] == []
        sent = {sop_uid_of(data): data for client in clients for data in client.sent}
        acknowledged = [uid for client in clients for uid in client.acknowledged]
        assert len(acknowledged) >= CLIENTS * PARTS_PER_REQUEST
        # Every acknowledged instance is there, byte for byte.
        for uid in acknowledged:
            assert stored_location(root, sent[uid]).read_bytes() == sent[uid], uid
        # No partial or foreign file anywhere in the storage tree: each stored
        # file is a whole instance that was sent, at its own place.
        for path in stored_files(root):
            uid = path.stem
            assert uid in sent, path
            assert path.read_bytes() == sent[uid], f"partial file {path}"
            assert path == stored_location(root, sent[uid])
        other_files = [
            p
            for p in root.rglob("*")
            if p.is_file()
            and p.suffix != ".dcm"
            and ".sop-index" not in p.relative_to(root).parts
            and ".staging" not in p.relative_to(root).parts
        ]
        assert other_files == []

        # The restarted server works, and a retry of everything is idempotent.
        retry = [sent[uid] for uid in acknowledged[:3]] + [instance(CT)]
        answer = raw_exchange(port, upload_request(retry, BOUNDARY))
        assert status_of(answer) == 200, answer[:500]
    finally:
        restarted.stop()
