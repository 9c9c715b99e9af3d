"""Issue 14 point 3: ``amqps://`` to a real RabbitMQ with TLS on 127.0.0.1.

The broker listens for AMQP over TLS with a certificate for 127.0.0.1 signed
by a throwaway CA (tests/auth_material.py).  A node given that CA publishes
its workflow request; a node given another CA never connects and says why
in its log, while its POSTs are still answered and the request waits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import requests

from tests.auth_material import write_tls_files
from tests.dicom_files import MR
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.observe import wait_until
from tests.integration.rabbitmq import RabbitMQ, free_port
from tests.launcher import LOOPBACK_ANY_PORT, Twistd

BOUNDARY = "stow-amqps-boundary"
EXCHANGE = "monaideploy"
ROUTING_KEY = "md.workflow.request"


class TlsRabbitMQ(RabbitMQ):
    """The test broker with a second listener: AMQP over TLS on 127.0.0.1 only."""

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.ca, key, cert = write_tls_files(base)
        self.tls_port = free_port()
        (base / "rabbitmq.conf").write_text(
            f"listeners.ssl.1 = 127.0.0.1:{self.tls_port}\n"
            f"ssl_options.cacertfile = {self.ca}\n"
            f"ssl_options.certfile = {cert}\n"
            f"ssl_options.keyfile = {key}\n"
            "ssl_options.verify = verify_none\n"
            "ssl_options.fail_if_no_peer_cert = false\n"
        )
        self.tls_url = f"amqps://guest:guest@127.0.0.1:{self.tls_port}/%2F"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRabbitMQ]:
    rabbit = TlsRabbitMQ(tmp_path_factory.mktemp("rabbitmq-tls"))
    try:
        rabbit.start()
        yield rabbit
    finally:
        rabbit.close()


def gateway(directory: Path, broker: TlsRabbitMQ, ca: Path) -> tuple[Twistd, str]:
    storage = directory / "store"
    storage.mkdir(parents=True)
    twistd = Twistd(
        storage,
        "--listen",
        LOOPBACK_ANY_PORT,
        "--amqp-url",
        broker.tls_url,
        "--amqp-ca",
        str(ca),
        env=None,
        cwd=directory,
    )
    (port,) = twistd.ports(1)
    return twistd, f"http://127.0.0.1:{port}"


def post_one(url: str) -> requests.Response:
    data = MR.read_bytes()
    return requests.post(
        url + "/dicomweb/studies",
        data=build_multipart([data], BOUNDARY),
        headers={"Content-Type": multipart_content_type(BOUNDARY)},
        timeout=30,
    )


def test_amqps_verifies_the_broker(broker: TlsRabbitMQ, tmp_path: Path) -> None:
    # A queue bound before anything is published (over the plain listener).
    connection = pika.BlockingConnection(broker.parameters())
    channel = connection.channel()
    channel.exchange_declare(exchange=EXCHANGE, exchange_type="topic", durable=True)
    queue = channel.queue_declare(queue="", exclusive=True).method.queue
    channel.queue_bind(queue=queue, exchange=EXCHANGE, routing_key=ROUTING_KEY)
    try:
        twistd, url = gateway(tmp_path / "trusted", broker, broker.ca)
        try:
            answer = post_one(url)
            assert answer.status_code == 200, answer.text
            correlation = answer.headers["X-Correlation-ID"]
            got: list[bytes] = []

            def delivered() -> bool:
                _, _, body = channel.basic_get(queue=queue, auto_ack=True)
                if body is not None:
                    got.append(body)
                return bool(got)

            assert wait_until(delivered, 30), twistd.log_tail()
            assert json.loads(got[0])["correlation_id"] == correlation
            assert "(TLS, certificate verified)" in twistd.log()
        finally:
            twistd.stop()

        # Another CA: the broker's certificate is not trusted, nothing is sent.
        other_ca, _, _ = write_tls_files(tmp_path)
        twistd, url = gateway(tmp_path / "untrusted", broker, other_ca)
        try:
            assert post_one(url).status_code == 200  # still answered: it waits
            assert twistd.wait_for(
                lambda lines: any(b"broker certificate not verified" in line for line in lines),
                30,
            ), twistd.log_tail()
            assert "publisher connected" not in twistd.log()
            _, _, body = channel.basic_get(queue=queue, auto_ack=True)
            assert body is None
        finally:
            twistd.stop()
    finally:
        connection.close()
