"""MONAI profile against a real RabbitMQ broker and a real ``twistd -n stow``.

The broker is started by the tests (tests/integration/rabbitmq.py) and a
broker that cannot start fails them: they never skip.  Restarts cost ~15 s
each, so one module-wide broker serves every test and only the outage test
stops and starts it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pika
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from tests.dicom_files import CT, MR, NO_META, SR, read, stored_path, uids
from tests.helpers import build_multipart, multipart_content_type
from tests.integration import observe
from tests.integration.conftest import LOOPBACK_ANY_PORT, Twistd
from tests.integration.rabbitmq import RabbitMQ

EXCHANGE = "monaideploy"
ROUTING_KEY = "md.workflow.request"
BOUNDARY = "amqp-test-boundary-0123456789"
HEADERS = {"Content-Type": multipart_content_type(BOUNDARY)}
WAIT_SECONDS = 60.0


@dataclass
class Gateway:
    url: str
    storage: Path
    twistd: Twistd

    @property
    def spool(self) -> Path:
        return self.storage / ".workflow-spool"

    def pending(self) -> list[Path]:
        """Workflow requests still in the outbox."""
        return sorted(p for p in self.spool.iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def gateway(broker: RabbitMQ, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """``twistd -n stow`` publishing to ``broker``, with an allow-list and a default."""
    storage = tmp_path_factory.mktemp("gateway") / "store"
    twistd = Twistd(
        storage,
        "--listen",
        LOOPBACK_ANY_PORT,
        "--amqp-url",
        broker.url,
        "--workflow",
        "ai-liver",
        "--workflow",
        "triage",
        "--default-workflow",
        "triage",
    )
    try:
        (port,) = twistd.ports(1)
        yield Gateway(f"http://127.0.0.1:{port}", storage, twistd)
    finally:
        twistd.stop()


def bind_queue(
    broker: RabbitMQ, queue: str, exchange: str = EXCHANGE, routing_key: str = ROUTING_KEY
) -> None:
    """A durable queue on MONAI's exchange and routing key (or others), as a consumer has."""
    with closing(pika.BlockingConnection(broker.parameters())) as connection:
        channel = connection.channel()
        channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, exchange, routing_key=routing_key)


def publishing_twistd(storage: Path, broker: RabbitMQ, *options: str) -> Twistd:
    """``twistd -n stow`` on loopback publishing to ``broker``, with ``options``."""
    return Twistd(storage, "--listen", LOOPBACK_ANY_PORT, "--amqp-url", broker.url, *options)


def drain(broker: RabbitMQ, queue: str) -> list[tuple[Any, dict[str, Any]]]:
    """Every message in ``queue`` now: (properties, parsed body)."""
    messages = []
    with closing(pika.BlockingConnection(broker.parameters())) as connection:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return messages
            messages.append((properties, json.loads(body)))


def wait_until(condition: Callable[[], object], seconds: float = WAIT_SECONDS) -> bool:
    """``observe.wait_until`` with this module's longer default (a broker is slower)."""
    return observe.wait_until(condition, seconds)


def post(url: str, parts: list[bytes]) -> requests.Response:
    body = build_multipart(parts, BOUNDARY)
    return requests.post(url, data=body, headers=HEADERS, timeout=30)


def new_ct() -> bytes:
    """CT_small as a new instance (fresh SOP Instance UID)."""
    ds = pydicom.dcmread(CT)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    with BytesIO() as buffer:
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()


def test_one_message_per_post_with_its_content(broker: RabbitMQ, gateway: Gateway) -> None:
    """Each /dicomweb/ POST that stores something → exactly one persistent
    message on monaideploy/md.workflow.request, confirmed before its spool
    entry goes; other routes, failed and refused POSTs publish nothing."""
    bind_queue(broker, "content-test")
    liver = post(gateway.url + "/dicomweb/ai-liver/studies", [read(CT), read(MR)])
    default = post(gateway.url + "/dicomweb/studies", [read(SR)])
    assert liver.status_code == default.status_code == 200
    assert post(gateway.url + "/studies", [read(CT)]).status_code == 200
    assert post(gateway.url + "/dicomweb/ai-liver/studies", [read(NO_META)]).status_code == 409
    unknown = new_ct()
    refused = post(gateway.url + "/dicomweb/ai-lung/studies", [unknown])
    assert refused.status_code == 404
    assert refused.headers["Content-Type"] == "application/problem+json"

    assert wait_until(lambda: gateway.pending() == []), gateway.twistd.log()
    messages = drain(broker, "content-test")
    assert len(messages) == 2, messages
    by_correlation = {body["correlation_id"]: (props, body) for props, body in messages}
    props, body = by_correlation[liver.headers["X-Correlation-ID"]]
    assert props.message_id == body["payload_id"]
    assert props.correlation_id == body["correlation_id"]
    assert props.delivery_mode == 2
    assert props.content_type == "application/json"
    assert body["workflows"] == ["ai-liver"]
    assert body["file_count"] == 2
    assert body["total_bytes"] == len(read(CT)) + len(read(MR))
    assert body["endpoint"] == "/dicomweb/ai-liver/studies"
    assert body["peer"] == "127.0.0.1"
    root = Path(body["storage_root"])
    for entry, source in zip(body["payload"], (CT, MR), strict=True):
        sop_class, sop, study, series = uids(source)
        assert (entry["sop_class_uid"], entry["sop_instance_uid"]) == (sop_class, sop)
        assert (entry["study_instance_uid"], entry["series_instance_uid"]) == (study, series)
        assert root / entry["path"] == stored_path(gateway.storage.absolute(), source)
        assert entry["size"] == len(read(source))
    props, body = by_correlation[default.headers["X-Correlation-ID"]]
    assert body["workflows"] == ["triage"]
    assert [e["sop_instance_uid"] for e in body["payload"]] == [uids(SR)[1]]
    # The 404 stored nothing.
    refused_ds = pydicom.dcmread(BytesIO(unknown))
    assert (
        not (gateway.storage / refused_ds.StudyInstanceUID)
        .joinpath(refused_ds.SeriesInstanceUID, f"{refused_ds.SOPInstanceUID}.dcm")
        .exists()
    )
    assert stored_path(gateway.storage, SR).exists()


def test_broker_outage_during_a_burst_loses_nothing(broker: RabbitMQ, gateway: Gateway) -> None:
    """The broker stops in the middle of a burst of uploads and comes back:
    every upload was answered 200 meanwhile, and every workflow request is
    delivered (at least once, under its stable message id)."""
    bind_queue(broker, "outage-test")
    correlation_ids: list[str] = []
    statuses: list[int] = []
    lock = threading.Lock()
    stop_uploading = threading.Event()

    def upload_until_told() -> None:
        while not stop_uploading.is_set():
            response = post(gateway.url + "/dicomweb/ai-liver/studies", [new_ct()])
            with lock:
                statuses.append(response.status_code)
                correlation_ids.append(response.headers.get("X-Correlation-ID", ""))
            time.sleep(0.05)

    def uploads() -> int:
        with lock:
            return len(statuses)

    with ThreadPoolExecutor(2) as pool:
        workers = [pool.submit(upload_until_told) for _ in range(2)]
        try:
            assert wait_until(lambda: uploads() >= 10)
            broker.stop()
            down_from = uploads()
            # Keep uploading while the broker is down.
            assert wait_until(lambda: uploads() >= down_from + 20)
        finally:
            stop_uploading.set()
        for worker in workers:
            worker.result()
    assert set(statuses) == {200}
    # Requests made while the broker was down wait in the outbox.
    assert gateway.pending()
    broker.start()
    assert wait_until(lambda: gateway.pending() == []), gateway.twistd.log()
    messages = drain(broker, "outage-test")
    delivered = {body["correlation_id"] for _, body in messages}
    assert delivered == set(correlation_ids)
    # At least once: repeats (confirm lost with the connection) keep their id.
    ids = {body["correlation_id"]: props.message_id for props, body in messages}
    for props, body in messages:
        assert props.message_id == body["payload_id"] == ids[body["correlation_id"]]
    assert len(set(ids.values())) == len(correlation_ids)
    assert "AMQP broker unavailable" in gateway.twistd.log()


def test_exchange_routing_key_and_spool_options(broker: RabbitMQ, tmp_path: Path) -> None:
    """--amqp-exchange, --amqp-routing-key and --workflow-spool reach a real
    twistd: the exchange is declared by the server (a fresh name works) and
    the spool is where the option says."""
    storage, spool = tmp_path / "store", tmp_path / "outbox"
    twistd = publishing_twistd(
        storage,
        broker,
        "--amqp-exchange",
        "stow-test-exchange",
        "--amqp-routing-key",
        "stow.test.workflow",
        "--workflow-spool",
        str(spool),
    )
    try:
        (port,) = twistd.ports(1)
        # The server declares its exchange on connecting; bind once it exists.
        assert wait_until(lambda: "AMQP publisher connected" in twistd.log()), twistd.log()
        bind_queue(broker, "options-test", "stow-test-exchange", "stow.test.#")
        response = post(f"http://127.0.0.1:{port}/dicomweb/any/studies", [read(CT)])
        assert response.status_code == 200
        assert spool.is_dir()
        assert not (storage / ".workflow-spool").exists()
        assert wait_until(lambda: not [p for p in spool.iterdir() if p.suffix == ".json"])
        (message,) = drain(broker, "options-test")
        assert message[1]["correlation_id"] == response.headers["X-Correlation-ID"]
        assert message[1]["workflows"] == ["any"]
    finally:
        twistd.stop()


def test_unroutable_request_stays_in_the_spool(broker: RabbitMQ, tmp_path: Path) -> None:
    """An exchange with no queue bound: the broker returns the (mandatory) request, which
    stays spooled with a warning naming exchange and routing key; once a queue is bound
    it is delivered."""
    storage = tmp_path / "store"
    twistd = publishing_twistd(storage, broker, "--amqp-exchange", "stow-unbound-exchange")
    try:
        (port,) = twistd.ports(1)
        assert wait_until(lambda: "AMQP publisher connected" in twistd.log()), twistd.log()
        response = post(f"http://127.0.0.1:{port}/dicomweb/any/studies", [new_ct()])
        assert response.status_code == 200
        assert wait_until(lambda: "returned unroutable" in twistd.log()), twistd.log()
        log = twistd.log()
        assert "'stow-unbound-exchange'" in log and f"'{ROUTING_KEY}'" in log
        spool = storage / ".workflow-spool"
        assert [p for p in spool.iterdir() if p.suffix == ".json"]
        bind_queue(broker, "unroutable-test", "stow-unbound-exchange", "#")
        # Published again after the retry delay, and now confirmed and removed.
        assert wait_until(lambda: not [p for p in spool.iterdir() if p.suffix == ".json"])
        (message,) = drain(broker, "unroutable-test")
        assert message[1]["correlation_id"] == response.headers["X-Correlation-ID"]
    finally:
        twistd.stop()
