"""Workflow requests spooled by two workers, published by the main process to a real
RabbitMQ (tests/integration/rabbitmq.py): each exactly once under its stable id."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.integration.crafted import instance
from tests.integration.observe import wait_until
from tests.integration.rabbitmq import RabbitMQ
from tests.integration.streaming import raw_exchange, status_of, upload_request
from tests.integration.test_workers import BOUNDARY, WORKERS, only, workers_of
from tests.integration.test_workflow_amqp import bind_queue, drain
from tests.launcher import LOOPBACK_ANY_PORT, Twistd

POSTS = 6
QUEUE = "workers-test"
_CORRELATION = re.compile(rb"\r\nX-Correlation-ID: ([^\r]+)\r\n", re.IGNORECASE)


def pending(storage: Path) -> list[Path]:
    spool = storage / ".workflow-spool"
    return [p for p in spool.iterdir() if not p.name.startswith(".")] if spool.exists() else []


def test_entries_of_two_workers_are_published_once_each(broker: RabbitMQ, tmp_path: Path) -> None:
    """Three POSTs on each worker: six messages, six distinct ids (the correlation ids
    the clients were answered), the spool empty, and only the main process publishing."""
    bind_queue(broker, QUEUE)
    storage = tmp_path / "store"
    twistd = Twistd(storage, "--listen", LOOPBACK_ANY_PORT, "--amqp-url", broker.url, *WORKERS)
    try:
        (port,) = twistd.ports(1)
        pids = workers_of(twistd)
        correlations = []
        for n in range(POSTS):
            with only(twistd, pids[n % 2]):
                request = upload_request([instance()], BOUNDARY, path="/dicomweb/studies")
                raw = raw_exchange(port, request)
            assert status_of(raw) == 200, raw
            match = _CORRELATION.search(raw)
            assert match is not None
            correlations.append(match.group(1).decode())
        assert wait_until(lambda: pending(storage) == [], 60), twistd.log_tail()
        messages: list[tuple[Any, dict[str, Any]]] = []
        assert wait_until(lambda: len(messages.__iadd__(drain(broker, QUEUE))) >= POSTS, 30)
        ids = [props.message_id for props, _body in messages]
        assert len(ids) == len(set(ids)) == POSTS, ids
        assert sorted(body["correlation_id"] for _props, body in messages) == sorted(correlations)
        served = {int(m) for m in re.findall(r"worker \d pid (\d+) twisted_stow.app", twistd.log())}
        assert served == set(pids)
        publisher = [x for x in twistd.log().splitlines() if "AMQP publisher connected" in x]
        assert publisher and all(" pid " not in line for line in publisher), publisher
    finally:
        assert twistd.stop() == 0
    assert drain(broker, QUEUE) == []  # nothing published twice, also at the stop
