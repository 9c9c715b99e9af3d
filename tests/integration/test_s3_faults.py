"""Issue 13 point 6: a store that answers, but with errors, in front of a real SeaweedFS.

``FaultProxy`` is a loopback HTTP server of ours between the server and
SeaweedFS: it forwards every request as it came (SigV4 signs the Host the
server sent, which the proxy keeps), or answers chosen requests with an S3
error of its own.  That is how a store that answers 500 / 503 SlowDown, or
refuses writes for quota, looks to the server, which SeaweedFS cannot be
made to do on demand.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.dicom_files import MR
from tests.integration.seaweedfs import SeaweedFS, credentials_env, open_uploads
from tests.integration.streaming import failure_reasons, sop_instance_uids
from tests.integration.test_s3_storage import (
    ANSWER_TIMEOUT_SECONDS,
    LARGE_BYTES,
    S3Server,
    new_instance,
    post,
    raw_post_headers,
)
from tests.launcher import LOOPBACK_ANY_PORT, twistd_command
from twisted_stow.ops.startup import HELP_HINT, STARTUP_FAILURE_STATUS

MiB = 1024 * 1024
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
# The health probe runs every 2 s and needs 2 failures in a row: a few periods.
NOTICE_SECONDS = 30.0
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}

Fault = tuple[int, str]  # HTTP status and S3 error code the proxy answers
Selector = Callable[[str, str], bool]  # (method, path) -> answer with the fault?


class FaultProxy:
    """Forwards to ``upstream``, or answers ``fault`` to requests ``selects`` picks."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream).netloc
        self.fault: Fault | None = None
        self.selects: Selector = lambda method, path: True
        self.faulted = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the server's pool expects

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy.fault
                if fault is not None and proxy.selects(self.command, self.path):
                    proxy.faulted += 1
                    self.answer_fault(*fault)
                else:
                    self.forward(body)

            def answer_fault(self, status: int, code: str) -> None:
                document = (
                    f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                    f"<Message>injected by the test</Message></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(document)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(document)

            def forward(self, body: bytes) -> None:
                connection = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    connection.request(self.command, self.path, body=body or None, headers=headers)
                    answer = connection.getresponse()
                    content = answer.read()
                    self.send_response(answer.status)
                    for name, value in answer.getheaders():
                        if name.lower() not in HOP_BY_HOP:
                            self.send_header(name, value)
                    # HEAD: the object's length, not the (empty) body's.
                    length = answer.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(content)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(content)
                finally:
                    connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def inject(self, fault: Fault | None, selects: Selector | None = None) -> None:
        self.selects = selects or (lambda method, path: True)
        self.fault = fault

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxied(seaweed: SeaweedFS, tmp_path: Path) -> Iterator[tuple[FaultProxy, S3Server]]:
    """A server whose store is SeaweedFS behind a ``FaultProxy`` (forwarding at first)."""
    proxy = FaultProxy(seaweed.endpoint)
    bucket = seaweed.new_bucket()
    server: S3Server | None = None
    try:
        # The server sees only the proxy; the test's boto3 client the store.
        # --workers 1: the store's health is each worker's own (its probe and its
        # requests), so after one worker noticed the 5xx "the next POST" may land on
        # a worker that notices a probe period later; one process makes it exact.
        server = S3Server.fronted(seaweed, tmp_path, bucket, proxy.endpoint)
        yield proxy, server
    finally:
        if server is not None:
            server.stop()
        proxy.close()


@pytest.mark.parametrize("fault", [(500, "InternalError"), (503, "SlowDown")])
def test_store_answering_5xx_is_refused_up_front(
    proxied: tuple[FaultProxy, S3Server], fault: Fault
) -> None:
    """Every request answered 500 (or 503 SlowDown): the next POST gets 503 + Retry-After
    from its headers and /readyz names the answer; served again once the store is."""
    proxy, server = proxied
    _, first = new_instance(MR)
    assert post(server.url, [first])[0] == 200
    proxy.inject(fault)
    deadline = time.monotonic() + NOTICE_SECONDS
    _, probe = new_instance(MR)
    while post(server.url, [probe])[0] != 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    answer = raw_post_headers(server.url, 10 * MiB)
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert answer.startswith(b"HTTP/1.1 503"), answer[:300]
    assert b"\r\nretry-after: " in head, head
    ready = requests.get(server.url + "/readyz", timeout=ANSWER_TIMEOUT_SECONDS)
    assert ready.status_code == 503
    assert f"answers HTTP {fault[0]} {fault[1]}" in ready.json()["checks"]["storage"]
    proxy.inject(None)
    ds, data = new_instance(MR)
    deadline = time.monotonic() + NOTICE_SECONDS
    code, model = post(server.url, [data])
    while code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
        code, model = post(server.url, [data])
    assert code == 200, model
    assert sop_instance_uids(model) == [ds.SOPInstanceUID]


def instance_writes(method: str, path: str) -> bool:
    """The PutObject / UploadPart of an instance (not claims, markers or heartbeats)."""
    return method == "PUT" and ".dcm" in path


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ((403, "QuotaExceeded"), OUT_OF_RESOURCES),
        ((507, "InsufficientStorage"), OUT_OF_RESOURCES),
        ((400, "EntityTooLarge"), OUT_OF_RESOURCES),
        ((500, "InternalError"), PROCESSING_FAILURE),
    ],
)
def test_instance_writes_refused_mid_request(
    proxied: tuple[FaultProxy, S3Server], fault: Fault, reason: int
) -> None:
    """Instance writes refused (quota, full, too large, a fault) while claims still work:
    each instance fails with its reason, the request gets its answer, nothing is left."""
    proxy, server = proxied
    small_ds, small = new_instance(MR)
    large_ds, large = new_instance(padding=LARGE_BYTES, seed=3)
    proxy.inject(fault, instance_writes)
    code, model = post(server.url, [small, large])
    assert proxy.faulted >= 2
    assert code == 409, model
    # The small one fails at its PutObject (commit), the large one at its
    # first UploadPart (while it streams): the two failure sequences.
    reasons = failure_reasons(model) + failure_reasons(model, "0008119A")
    assert reasons == [reason, reason], model
    s3 = server.s3
    listed = s3.list_objects_v2(Bucket=server.bucket, Prefix=server.prefix)
    left = {item["Key"] for item in listed.get("Contents", [])}
    assert {server.key(small_ds), server.key(large_ds)} & left == set()
    # Unclaimed: a retry once the store has room is stored, not a duplicate.
    assert not any(small_ds.SOPInstanceUID in key for key in left), left
    assert open_uploads(s3, server.bucket) == []
    proxy.inject(None)
    assert post(server.url, [small])[0] == 200


class IgnoresConditions(BaseHTTPRequestHandler):
    """A "store" that answers every request with success, conditions or not."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def succeed(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(204 if self.command == "DELETE" else 200)
        self.send_header("ETag", '"d41d8cd98f00b204e9800998ecf8427e"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_PUT = do_DELETE = do_GET = succeed


def test_startup_refuses_a_store_that_ignores_conditional_writes(tmp_path: Path) -> None:
    """A store that answers 200 to a second ``If-None-Match: *`` PutObject: one line, exit 2."""
    store = ThreadingHTTPServer(("127.0.0.1", 0), IgnoresConditions)
    threading.Thread(target=store.serve_forever, daemon=True).start()
    try:
        completed = subprocess.run(
            [
                twistd_command(),
                "-n",
                "--pidfile=",
                "stow",
                "--storage",
                "s3://any-bucket/p",
                "--s3-endpoint",
                f"http://127.0.0.1:{store.server_address[1]}",
                "--listen",
                LOOPBACK_ANY_PORT,
            ],
            capture_output=True,
            timeout=60,
            cwd=tmp_path,
            env={**os.environ, **credentials_env()},
        )
    finally:
        store.shutdown()
        store.server_close()
    assert completed.returncode == STARTUP_FAILURE_STATUS
    output = (completed.stdout + completed.stderr).decode().strip().splitlines()
    assert output == [output[0], HELP_HINT], output
    assert "ignores If-None-Match on PutObject" in output[0]
