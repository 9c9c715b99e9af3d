"""Backpressure over a real socket: a slow disk makes the server stop reading."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
import pytest_twisted

from tests.helpers import iter_multipart, multipart_content_type
from tests.integration.conftest import Server
from tests.integration.streaming import ChunkedProducer
from twisted_stow.flow import HIGH_WATER_BYTES
from twisted_stow.storage import filesystem

BOUNDARY = "backpressure"
# Enough that an unthrottled reader would run far past the high-water mark.
BODY_BYTES = 6 * HIGH_WATER_BYTES
SLOW_WRITE_SECONDS = 0.02


@pytest_twisted.ensureDeferred
async def test_slow_storage_pauses_reading_and_loses_nothing(
    stow_server: Server, client: Any, monkeypatch: pytest.MonkeyPatch, uploads: list[Any]
) -> None:
    """The upload pauses (bytes in flight stay bounded) and still completes.

    The part is not DICOM, so it ends as a 0xC000 failure: what matters here
    is the flow of bytes to storage, which is the same for any part.
    """
    real_writev = os.writev

    def slow_writev(fd: int, buffers: Any) -> int:
        time.sleep(SLOW_WRITE_SECONDS)
        return real_writev(fd, buffers)

    monkeypatch.setattr(filesystem.os, "writev", slow_writev)
    peak_in_flight = 0

    def chunks() -> Any:
        nonlocal peak_in_flight
        for piece in iter_multipart([BODY_BYTES], BOUNDARY, chunk_size=256 * 1024):
            if uploads:
                peak_in_flight = max(peak_in_flight, uploads[0].flow.in_flight_bytes)
            yield piece

    response = await client.post(
        stow_server.url + "/studies",
        data=ChunkedProducer(chunks()),
        headers={"Content-Type": [multipart_content_type(BOUNDARY)]},
    )
    model = json.loads(await response.content())
    assert response.code == 409  # one non-DICOM part, received whole
    assert model["0008119A"]["Value"][0]["00081197"]["Value"] == [0xC000]
    flow = uploads[0].flow
    assert flow.pause_count > 0
    assert flow.in_flight_bytes == 0
    # Bounded by the high-water mark plus what one paused socket read and
    # one batch can still deliver, far below the body size.
    assert peak_in_flight < HIGH_WATER_BYTES + 4 * 1024 * 1024
    assert peak_in_flight < BODY_BYTES / 3
