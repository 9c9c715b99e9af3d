"""Issue 12 point 5 / issue 13 point 4: one memory budget per process, into a throttled store.

A real ``twistd -n stow --storage s3://`` writes through a rate-limiting
proxy of ours (``throttle.py``) into a real SeaweedFS, so the store is slower
than the clients.  ``--memory-budget 10M`` (the smallest S3 budget: one
window, one upload buffering a part at a time) with instances larger than it:
what the budget promises is measured as the growth of the server's peak RSS
(VmHWM, reset after a warm-up upload) over its RSS at rest, which does not
move with the machine's load as an absolute figure does.  The server is one
process (no workers), so its VmHWM is the budget's process.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from tests.dicom_files import MR
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.seaweedfs import SeaweedFS, read_object
from tests.integration.streaming import failure_reasons
from tests.integration.test_s3_storage import (
    ANSWER_TIMEOUT_SECONDS,
    BOUNDARY,
    S3Server,
    dataset_bytes,
    new_instance,
    post,
    start_server,
)
from tests.integration.throttle import ThrottledProxy

MiB = 1024 * 1024
BUDGET_BYTES = 10 * MiB
# Larger than the whole budget: no upload can hold its instance at once.
INSTANCE_PADDING_BYTES = 11 * MiB
UPLOADS = 16
# The store takes the parts at this rate (all connections together): ~6 s for
# the 16 uploads, far slower than the clients on loopback.
STORE_BYTES_PER_SECOND = 32 * MiB
# Growth of peak RSS over rest the budget allows: the budget, one socket read
# (256 KiB) for each upload waiting for its window, one chunk on its way to
# the store, and the connections and requests themselves (the growth measured
# 7-11 MiB with 16 and 64 uploads, benchmarks/budget_rss.py --size tiny).  Without
# the one budget each upload would buffer its own window: 16 x 10 MiB.
GROWTH_BOUND_BYTES = BUDGET_BYTES + 30 * MiB
PROCESSING_FAILURE = 0x0110


def status_bytes(pid: int, field: str) -> int:
    """``VmHWM`` or ``VmRSS`` of a process, in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    assert match is not None
    return int(match.group(1)) * 1024


def reset_peak(pid: int) -> None:
    """Make VmHWM start again from the current RSS (Linux: clear_refs, value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.fixture(scope="module")
def slow_store(seaweed: SeaweedFS) -> Iterator[ThrottledProxy]:
    """The proxy that makes the store slower than the clients."""
    proxy = ThrottledProxy(seaweed.s3_port, STORE_BYTES_PER_SECOND).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def server(
    seaweed: SeaweedFS, slow_store: ThrottledProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Server]:
    """``--memory-budget 10M`` into the throttled store."""
    running = start_server(
        seaweed,
        tmp_path_factory.mktemp("stow-budget"),
        "--s3-endpoint",
        slow_store.endpoint,
        "--memory-budget",
        str(BUDGET_BYTES),
    )
    try:
        yield running
    finally:
        running.stop()


def test_concurrent_uploads_larger_than_the_budget_all_finish_within_it(server: S3Server) -> None:
    """16 concurrent uploads, each larger than the whole budget, into a throttled store: all
    16 are stored byte-identical (none starved), and the server's peak RSS grows over its
    rest by at most the budget and a fixed margin."""
    pid = server.twistd.pid
    ds, data = new_instance(MR, padding=6 * MiB)  # warm-up: one multipart upload
    assert post(server.url, [data])[0] == 200
    instances = [new_instance(MR, padding=INSTANCE_PADDING_BYTES, seed=i) for i in range(UPLOADS)]
    rest = status_bytes(pid, "VmRSS")
    reset_peak(pid)
    answers: list[tuple[int, dict[str, Any]] | None] = [None] * UPLOADS

    def upload(index: int) -> None:
        answers[index] = post(server.url, [instances[index][1]])

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(UPLOADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    growth = status_bytes(pid, "VmHWM") - rest
    assert [a[0] if a else None for a in answers] == [200] * UPLOADS, answers
    for ds, data in instances:
        assert read_object(server.s3, server.bucket, server.key(ds))[0] == data
    assert growth < GROWTH_BOUND_BYTES, f"peak RSS grew {growth / MiB:.1f} MiB over rest"


def test_a_header_not_understood_within_the_window_fails_at_once(server: S3Server) -> None:
    """A part whose Series Instance UID comes only after more than the whole budget (a large
    private element before it) fails with a reason naming the limit; it does not wait."""
    ds = pydicom.dcmread(MR)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    block = ds.private_block(0x0009, "STOW BUDGET TEST", create=True)
    block.add_new(0x01, "OB", b"\x00" * (BUDGET_BYTES + MiB))
    response = requests.post(
        server.url + "/studies",
        data=build_multipart([dataset_bytes(ds)], BOUNDARY),
        headers={"Content-Type": multipart_content_type(BOUNDARY)},
        timeout=ANSWER_TIMEOUT_SECONDS,
    )
    assert response.status_code == 409, response.text
    # No UIDs are known for it: OtherFailuresSequence, 0x0110, the reason in Warning.
    assert failure_reasons(response.json(), "0008119A") == [PROCESSING_FAILURE]
    # The reason, naming the limit, is in the server's log line for the part.
    reason = f"no instance named within {BUDGET_BYTES} bytes"
    logged = server.twistd.wait_for(lambda lines: any(reason.encode() in line for line in lines))
    assert logged, server.twistd.log_tail()
