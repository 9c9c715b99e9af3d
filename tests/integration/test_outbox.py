"""The shared workflow outbox (``--index``) with a real PostgreSQL, RabbitMQ and twistd nodes.

The outbox table replaces the local spool: a MONAI POST's workflow request
is a row before the answer, and any live node's relay publishes it with
publisher confirms, deleting it only once confirmed.
"""

from __future__ import annotations

import json
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import pika

from tests.integration import observe
from tests.integration.cluster import Node, new_instance
from tests.integration.postgres import PostgreSQL, free_port
from tests.integration.rabbitmq import RabbitMQ
from tests.integration.seaweedfs import SeaweedFS

EXCHANGE = "monaideploy"
ROUTING_KEY = "md.workflow.request"
# A relay publishes within its rescan interval (5 s); a broker is slow to
# come back. Generous, as the workflow tests use.
WAIT_SECONDS = 60.0


def bind_queue(broker: RabbitMQ) -> str:
    """A fresh durable queue on the workflow exchange and routing key."""
    queue = f"outbox-{uuid.uuid4().hex[:8]}"
    with closing(pika.BlockingConnection(broker.parameters())) as connection:
        channel = connection.channel()
        channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, EXCHANGE, routing_key=ROUTING_KEY)
    return queue


def drain(broker: RabbitMQ, queue: str) -> list[tuple[Any, dict[str, Any]]]:
    messages: list[tuple[Any, dict[str, Any]]] = []
    with closing(pika.BlockingConnection(broker.parameters())) as connection:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return messages
            messages.append((properties, json.loads(body)))


def outbox_rows(postgres: PostgreSQL, url: str) -> list[tuple[Any, ...]]:
    with postgres.connect(url.rsplit("/", 1)[1]) as conn:
        return conn.execute(
            "SELECT payload_id, correlation_id, claimed_by FROM stow_outbox ORDER BY id"
        ).fetchall()


def nobody_amqp_url() -> str:
    """A broker address nothing listens on: the node's relay never connects."""
    return f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"


def collect(broker: RabbitMQ, queue: str, count: int) -> list[tuple[Any, dict[str, Any]]]:
    messages: list[tuple[Any, dict[str, Any]]] = []

    def arrived() -> bool:
        messages.extend(drain(broker, queue))
        return len(messages) >= count

    assert observe.wait_until(arrived, WAIT_SECONDS), messages
    return messages


def test_a_killed_node_s_request_is_relayed_by_another(
    postgres: PostgreSQL, broker: RabbitMQ, tmp_path: Path
) -> None:
    """Node A answers a MONAI POST (its relay cannot reach the broker), then is
    SIGKILLed for good: node B's relay publishes A's workflow request, with
    the request's stable id as message id, and the row goes once confirmed."""
    seaweed = SeaweedFS(tmp_path / "seaweedfs")
    seaweed.start()
    try:
        bucket = seaweed.new_bucket()
        url = postgres.new_database()
        queue = bind_queue(broker)
        first = Node(
            tmp_path / "a", url, "--amqp-url", nobody_amqp_url(), seaweed=seaweed, bucket=bucket
        )
        try:
            ds, data = new_instance()
            answer = first.post([data], "/dicomweb/studies")
            assert answer.status_code == 200
            correlation = answer.headers["X-Correlation-ID"]
            # Durable before the answer: the row is there when the answer is.
            assert [row[1] for row in outbox_rows(postgres, url)] == [correlation]
        finally:
            first.kill()
        second = Node(tmp_path / "b", url, "--amqp-url", broker.url, seaweed=seaweed, bucket=bucket)
        try:
            ((properties, body),) = collect(broker, queue, 1)
            assert observe.wait_until(lambda: outbox_rows(postgres, url) == [], WAIT_SECONDS)
        finally:
            second.stop()
    finally:
        seaweed.stop()
    assert body["correlation_id"] == properties.correlation_id == correlation
    assert properties.message_id == body["payload_id"]
    assert properties.delivery_mode == 2
    assert [entry["sop_instance_uid"] for entry in body["payload"]] == [ds.SOPInstanceUID]
    assert body["storage_root"] == f"s3://{bucket}/site"
    assert drain(broker, queue) == []


def test_broker_stopped_posts_answered_and_delivered_when_it_returns(
    postgres: PostgreSQL, broker: RabbitMQ, tmp_path: Path
) -> None:
    """While RabbitMQ is down the POSTs are still answered (their requests wait
    as rows); once it is back every request is delivered and its row deleted."""
    url = postgres.new_database()
    queue = bind_queue(broker)
    node = Node(tmp_path / "node", url, "--amqp-url", broker.url)
    try:
        broker.stop()
        correlations = set()
        for _ in range(3):
            _, data = new_instance()
            answer = node.post([data], "/dicomweb/studies")
            assert answer.status_code == 200
            correlations.add(answer.headers["X-Correlation-ID"])
        assert {row[1] for row in outbox_rows(postgres, url)} == correlations
        broker.start()
        messages = collect(broker, queue, 3)
        assert observe.wait_until(lambda: outbox_rows(postgres, url) == [], WAIT_SECONDS)
    finally:
        node.stop()
    # At least once: a repeat (a confirm lost with the connection) carries the same ids.
    assert {body["correlation_id"] for _, body in messages} == correlations
    for properties, body in messages:
        assert properties.message_id == body["payload_id"]


def test_claims_of_a_dead_relay_expire_and_live_claims_are_skipped(
    postgres: PostgreSQL, broker: RabbitMQ, tmp_path: Path
) -> None:
    """A row a relay claimed and never confirmed (it died) is published again
    once the claim expired, under the same payload id; a row under another
    relay's live claim is left to that relay."""
    url = postgres.new_database()
    queue = bind_queue(broker)
    node = Node(tmp_path / "node", url, "--amqp-url", nobody_amqp_url())
    node.stop()  # the schema is there now; rows are inserted as a dead relay left them
    expired_id, live_id = str(uuid.uuid4()), str(uuid.uuid4())
    with postgres.connect(url.rsplit("/", 1)[1]) as conn:
        for payload_id, until in (
            (expired_id, "now() - interval '1 minute'"),
            (live_id, "now() + interval '1 hour'"),
        ):
            document = json.dumps({"payload_id": payload_id, "correlation_id": "c"}).encode()
            conn.execute(
                "INSERT INTO stow_outbox (payload_id, correlation_id, body, claimed_by, "
                f"claimed_until, attempts) VALUES (%s, 'c', %s, 'dead-relay', {until}, 1)",
                (payload_id, document),
            )
    relay = Node(tmp_path / "relay", url, "--amqp-url", broker.url)
    try:
        ((properties, body),) = collect(broker, queue, 1)
        assert observe.wait_until(
            lambda: [row[0] for row in outbox_rows(postgres, url)] == [live_id], WAIT_SECONDS
        )
    finally:
        relay.stop()
    assert properties.message_id == body["payload_id"] == expired_id
    assert drain(broker, queue) == []


def test_outbox_lost_after_the_instances_were_stored_is_a_503(
    postgres: PostgreSQL, tmp_path: Path
) -> None:
    """The database connection dies just as the workflow request is written
    (a trigger terminates the writing backend): the answer is 503 with
    Retry-After, never a 500; the instances stay stored, and once the outage
    is over the same POST succeeds (identical instances) with its request."""
    url = postgres.new_database()
    node = Node(tmp_path / "node", url)
    try:
        with postgres.connect(url.rsplit("/", 1)[1]) as conn:
            conn.execute(
                "CREATE FUNCTION stow_test_die() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$"
            )
            conn.execute(
                "CREATE TRIGGER stow_test_die BEFORE INSERT ON stow_outbox "
                "FOR EACH ROW EXECUTE FUNCTION stow_test_die()"
            )
        ds, data = new_instance()
        answer = node.post([data], "/dicomweb/studies")
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"].isdigit()
        assert answer.headers["Content-Type"] == "application/problem+json"
        with postgres.connect(url.rsplit("/", 1)[1]) as conn:
            stored = conn.execute(
                "SELECT state FROM stow_instances WHERE sop_instance_uid = %s",
                (ds.SOPInstanceUID,),
            ).fetchall()
            assert stored == [("stored",)]
            assert conn.execute("SELECT count(*) FROM stow_outbox").fetchone() == (0,)
            conn.execute("DROP TRIGGER stow_test_die ON stow_outbox")

        def retried() -> bool:
            return node.post([data], "/dicomweb/studies").status_code == 200

        assert observe.wait_until(retried, WAIT_SECONDS)
        assert len(outbox_rows(postgres, url)) >= 1
    finally:
        node.stop()
