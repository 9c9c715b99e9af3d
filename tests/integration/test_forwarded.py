"""--trusted-proxy through real haproxy and nginx (deploy/ configs) before a real twistd.

One node with ``--max-requests-per-peer 1``.  A client holds its one slot with
an upload whose body is still coming; the same client's next request must be
refused (503) and another client's stored, whatever either claims in
X-Forwarded-For.  Through a balancer that buffered bodies the held upload
would never reach the node, so the 503 also shows the body streams through.
On a direct (untrusted) connection a forged X-Forwarded-For is ignored.

A 503 counts only when it is the node's refusal naming the real client: a
balancer answers 503 itself while its health checks have no node up (a
loaded machine can miss two /readyz in a row), which says nothing about the
limit, so those answers are asked again.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.dicom_files import CT, MR
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.cluster import (
    Balancer,
    NodeProcess,
    free_port,
    start_haproxy,
    start_nginx,
    start_node,
)
from tests.integration.observe import wait_until
from tests.integration.streaming import json_body, raw_exchange, status_of
from tests.integration.test_s3_storage import new_instance
from twisted_stow.auth.files import entry_with_grant, write_atomically
from twisted_stow.auth.grants import EVERYTHING
from twisted_stow.auth.passwords import token_digest

BOUNDARY = "stow-forwarded-boundary"
HELD_BODY_BYTES = 1024 * 1024
ANSWER_SECONDS = 30.0
# How long the held upload may take to be admitted on a loaded machine (a
# wait, not a measurement: it ends as soon as the answer is seen).
ADMITTED_SECONDS = 60.0
# What the balancers answer themselves with no node up (deploy/haproxy.cfg,
# deploy/nginx.conf).
BALANCER_OWN_ANSWERS = (b"no STOW node is ready", b"no STOW node is reachable")


def request_head(length: int, forwarded_for: str | None = None) -> bytes:
    return (
        b"POST /studies HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        + f"Content-Type: {multipart_content_type(BOUNDARY)}\r\n".encode()
        + (f"X-Forwarded-For: {forwarded_for}\r\n".encode() if forwarded_for else b"")
        + b"Accept: application/dicom+json\r\n"
        + f"Content-Length: {length}\r\n\r\n".encode()
    )


def answer_to_upload(port: int, source: str, forwarded_for: str | None = None) -> bytes:
    """A whole one-instance POST from ``source``; the raw answer, from the node when it can.

    While a balancer answers for itself (no node up in its eyes), ask again.
    """
    deadline = time.monotonic() + ADMITTED_SECONDS
    while True:
        _, data = new_instance(MR)
        body = build_multipart([data], BOUNDARY)
        answer = raw_exchange(
            port,
            request_head(len(body), forwarded_for) + body,
            source=source,
            read_timeout=ANSWER_SECONDS,
        )
        own = any(text in answer for text in BALANCER_OWN_ANSWERS)
        if not own or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def upload(port: int, source: str, forwarded_for: str | None = None) -> int:
    """The status of ``answer_to_upload``."""
    return status_of(answer_to_upload(port, source, forwarded_for))


# The last answer refused_as saw, for the message of an assertion that waited in vain.
LAST_ANSWER: list[bytes] = [b""]


def refused_as(port: int, source: str, forwarded_for: str | None, client: str) -> bool:
    """Whether an upload from ``source`` gets the node's per-client refusal of ``client``."""
    answer = answer_to_upload(port, source, forwarded_for)
    LAST_ANSWER[0] = answer
    if status_of(answer) != 503:
        return False
    detail = str(json_body(answer).get("detail", ""))
    return f"uploads from {client} are running" in detail


def hold_slot(port: int, source: str, forwarded_for: str | None) -> socket.socket:
    """An upload from ``source`` that sends its headers and a first part, then waits."""
    _, data = new_instance(CT)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.sendall(request_head(HELD_BODY_BYTES, forwarded_for) + build_multipart([data], BOUNDARY))
    return sock


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    # The held uploads send a first part and then nothing: the node's guards
    # against slow clients (60 s by default) must not cut them mid-test.
    running = start_node(
        tmp_path_factory.mktemp("node"),
        "--max-requests-per-peer",
        "1",
        "--idle-timeout",
        "600",
        "--min-body-rate",
        "0",
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(params=["haproxy", "nginx"])
def balancer(
    request: pytest.FixtureRequest, node: NodeProcess, tmp_path: Path
) -> Iterator[Balancer]:
    start: Callable[[Path, list[int]], Balancer] = (
        start_haproxy if request.param == "haproxy" else start_nginx
    )
    running = start(tmp_path / request.param, [node.port])
    try:
        # haproxy sends nothing to a node before its health checks pass.
        assert wait_until(lambda: upload(running.port, "127.0.0.9") == 200, 20), running.log_tail()
        yield running
    finally:
        running.stop()


def test_limits_apply_per_real_client_behind_the_balancer(balancer: Balancer) -> None:
    # 127.0.0.2 claims to be 127.0.0.3; the balancer appends what it saw.
    held = hold_slot(balancer.port, "127.0.0.2", forwarded_for="127.0.0.3")
    try:
        # The same client, whatever it claims, has no second slot ...
        assert wait_until(
            lambda: refused_as(balancer.port, "127.0.0.2", "127.0.0.7", client="127.0.0.2"),
            ADMITTED_SECONDS,
        ), (LAST_ANSWER[0][:600], balancer.log_tail())
        # ... while the client it named, another address, is served.
        assert upload(balancer.port, "127.0.0.3") == 200, balancer.log_tail()
    finally:
        held.close()
    # The slot comes back with the connection.
    assert wait_until(lambda: upload(balancer.port, "127.0.0.2") == 200, ADMITTED_SECONDS)


def test_forged_header_on_a_direct_connection_is_ignored(node: NodeProcess) -> None:
    held = hold_slot(node.port, "127.0.0.4", forwarded_for="127.0.0.5")
    try:
        # Believed, these would be two clients (127.0.0.5 and 127.0.0.6).
        assert wait_until(
            lambda: refused_as(node.port, "127.0.0.4", "127.0.0.6", client="127.0.0.4"),
            ADMITTED_SECONDS,
        ), LAST_ANSWER[0][:600]
        # And 127.0.0.5 was never the holder.
        assert upload(node.port, "127.0.0.5") == 200
    finally:
        held.close()


@pytest.mark.parametrize("name", ["haproxy", "nginx"])
def test_no_node_ready_is_503_with_retry_after(name: str, tmp_path: Path) -> None:
    """With every node gone the balancer itself answers as a node would: 503 + Retry-After."""
    start = start_haproxy if name == "haproxy" else start_nginx
    nowhere = [free_port(), free_port()]  # nothing listens there
    running = start(tmp_path / name, nowhere)
    try:
        _, data = new_instance(MR)
        answer = requests.post(
            running.url + "/studies",
            data=build_multipart([data], BOUNDARY),
            headers={"Content-Type": multipart_content_type(BOUNDARY)},
            timeout=ANSWER_SECONDS,
        )
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] == "5"
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert answer.json()["status"] == 503
    finally:
        running.stop()


def test_login_throttle_blocks_only_the_client_that_failed(tmp_path: Path) -> None:
    """5 wrong tokens from one client behind haproxy block that client (429), not the
    others that share the balancer's connection address."""
    tokens = tmp_path / "tokens.json"
    good = b"the-right-token-0123456789"
    write_atomically(
        tokens, {"uploader": entry_with_grant({"sha256": token_digest(good)}, EVERYTHING)}
    )
    running = start_node(tmp_path / "node", "--tokens", str(tokens))
    balancer = None
    try:
        balancer = start_haproxy(tmp_path / "haproxy", [running.port])
        port = balancer.port

        def bearer(source: str, token: bytes) -> int:
            request = (
                b"POST /studies HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                b"Authorization: Bearer "
                + token
                + b"\r\n"
                + f"Content-Type: {multipart_content_type(BOUNDARY)}\r\n".encode()
                + b"Content-Length: 10\r\n\r\n0123456789"
            )
            return status_of(raw_exchange(port, request, source=source))

        assert wait_until(lambda: bearer("127.0.0.9", b"wrong") == 401, 20)
        assert [bearer("127.0.0.2", b"wrong") for _ in range(5)] == [401] * 5
        assert bearer("127.0.0.2", good) == 429  # blocked, even with the right token
        assert bearer("127.0.0.3", b"wrong") == 401  # another client: not blocked
        # And its right token gets past authentication (the body then is broken: 400).
        assert bearer("127.0.0.3", good) == 400
    finally:
        if balancer is not None:
            balancer.stop()
        running.stop()
