"""Where the Store Instances Response is built: the reactor when small, a thread when large."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tests.helpers import build_multipart, multipart_content_type
from twisted_stow.app import RESPONSE_IN_THREAD_OUTCOMES, StowService, build_and_render
from twisted_stow.core.config import StowConfig
from twisted_stow.site import StowSite
from twisted_stow.storage.memory import MemoryStorage

BOUNDARY = "response-boundary"
OTHER_FAILURES_SEQUENCE = "0008119A"


def answer_to(parts: int) -> tuple[bytes, list[Callable[..., Any]]]:
    """POST ``parts`` text/plain parts (each 0xC000, never stored); the raw answer and the
    functions that went through run_in_thread."""
    storage = MemoryStorage(held=True)
    ran: list[Callable[..., Any]] = []

    def run_in_thread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        ran.append(f)
        return maybeDeferred(f, *args)

    clock = Clock()
    service = StowService(StowConfig(), storage, clock, run_in_thread)
    channel = StowSite(service, timeout=5.0).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    channel.callLater = clock.callLater  # type: ignore[method-assign]
    transport = StringTransport()
    channel.makeConnection(transport)
    body = build_multipart(
        [b"not dicom %d" % n for n in range(parts)], BOUNDARY, content_type="text/plain"
    )
    channel.dataReceived(
        b"POST /studies HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Type: {multipart_content_type(BOUNDARY)}\r\n".encode()
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
    assert storage.writers == []
    return transport.value(), ran


@pytest.mark.parametrize(
    ("parts", "in_thread"),
    [(1, False), (RESPONSE_IN_THREAD_OUTCOMES - 1, False), (RESPONSE_IN_THREAD_OUTCOMES, True)],
)
def test_large_responses_are_built_in_a_thread(parts: int, in_thread: bool) -> None:
    """From RESPONSE_IN_THREAD_OUTCOMES outcomes on, build and render run through
    run_in_thread; the answer lists every part either way."""
    raw, ran = answer_to(parts)
    assert raw.startswith(b"HTTP/1.1 409 ")  # nothing stored
    assert (build_and_render in ran) is in_thread
    model = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert len(model[OTHER_FAILURES_SEQUENCE]["Value"]) == parts
