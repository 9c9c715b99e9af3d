"""Issue 14 point 6: what a cluster's parts cost, 1 node vs 2 behind haproxy.

One SeaweedFS (``tests/integration/seaweedfs.py``) is the shared store; the
nodes and haproxy are the tests' own (``tests/integration/cluster.py``, which
runs ``deploy/haproxy.cfg`` as it is).  Targets, alternated round by round so
that the machine's other load falls on all of them alike:

- **direct-1**: 8 clients straight to one node (no balancer);
- **haproxy-1**: the same node behind haproxy (what the balancer costs);
- **haproxy-2**: two nodes behind haproxy;
- **index-2**: two other nodes with ``--index`` (a private PostgreSQL with
  fsync on, tests/integration/postgres.py) behind their haproxy, ``/studies``;
- **outbox-2**: the same nodes on ``/dicomweb/studies``: one workflow request
  per POST into the outbox, relayed to a private RabbitMQ.

PostgreSQL's and RabbitMQ's CPU (every process of each, from /proc) per
1,000 instances says what one database and one broker carry.

Each client POSTs bodies of ``INSTANCES_PER_POST`` small instances (MR_small
with fresh UIDs, built before the clock starts) for ``--seconds``; the figure
is acknowledged instances per second, and the CPU seconds the nodes and
haproxy used per 1,000 instances (from /proc).  Medians over ``--rounds``.
There is one process per node: this branch has no ``--workers``, so "the
same total workers" is 1 vs 2 processes, and on a 2-core machine that also
runs SeaweedFS and the clients, 2 nodes can only show what the CPU leaves.

    python3 -m benchmarks.cluster_bench                # 3 rounds of 5 s
    python3 -m benchmarks.cluster_bench --seconds 1 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from contextlib import closing
from io import BytesIO
from pathlib import Path
from typing import Any

import pika
import pydicom
import requests
from pydicom.uid import generate_uid

from tests.dicom_files import MR
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.cluster import NodeProcess, start_haproxy, start_node
from tests.integration.postgres import PostgreSQL
from tests.integration.rabbitmq import RabbitMQ
from tests.integration.seaweedfs import SeaweedFS, credentials_env

CLIENTS = 8
INSTANCES_PER_POST = 10
BOUNDARY = "cluster-bench-boundary"
TARGETS = ("direct-1", "haproxy-1", "haproxy-2", "index-2", "outbox-2")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU of ``pid`` and its live children (PostgreSQL's backends, RabbitMQ's helpers)."""
    total = cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        except (OSError, ValueError, IndexError):
            continue
    return total


def bodies(count: int) -> list[bytes]:
    """``count`` POST bodies of new instances (unique SOP Instance UIDs)."""
    template = pydicom.dcmread(MR)
    out = []
    for _ in range(count):
        parts = []
        for _ in range(INSTANCES_PER_POST):
            uid = generate_uid()
            template.SOPInstanceUID = uid
            template.file_meta.MediaStorageSOPInstanceUID = uid
            with BytesIO() as buffer:
                pydicom.dcmwrite(buffer, template)
                parts.append(buffer.getvalue())
        out.append(build_multipart(parts, BOUNDARY))
    return out


def load(url: str, seconds: float, pool: list[bytes], path: str = "/studies") -> tuple[int, int]:
    """``CLIENTS`` threads POSTing bodies from ``pool`` for ``seconds``: (instances, failures)."""
    stored = [0] * CLIENTS
    failed = [0] * CLIENTS
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        session = requests.Session()
        headers = {"Content-Type": multipart_content_type(BOUNDARY), "Accept": "application/json"}
        while time.monotonic() < deadline:
            with lock:
                if not pool:
                    raise RuntimeError("body pool too small: raise --pool")
                body = pool.pop()
            answer = session.post(url + path, data=body, headers=headers, timeout=60)
            if answer.status_code == 200:
                stored[index] += INSTANCES_PER_POST
            else:
                failed[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(stored), sum(failed)


def s3_node(directory: Path, seaweed: SeaweedFS, bucket: str, *options: str) -> NodeProcess:
    return start_node(
        directory,
        "--storage",
        f"s3://{bucket}/bench/",
        "--s3-endpoint",
        seaweed.endpoint,
        "--workflow-spool",
        str(directory / "spool"),
        *options,
        env={**os.environ, **credentials_env()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool", type=int, default=400, help="POST bodies built per run")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    arguments = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {target: [] for target in TARGETS}
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as temp:
        base = Path(temp)
        seaweed = SeaweedFS(base / "seaweedfs")
        seaweed.start()
        # fsync on: a commit costs what it costs in production (WAL flushed).
        database = PostgreSQL(base / "pg", fsync=True)
        database.start()
        broker = RabbitMQ(base / "rabbitmq")
        broker.start()
        nodes: list[NodeProcess] = []
        balancers: list[Any] = []
        try:
            bucket = seaweed.new_bucket()
            nodes = [s3_node(base / f"node{i}", seaweed, bucket) for i in (1, 2)]
            indexed_bucket = seaweed.new_bucket()
            index = ("--index", database.new_database(), "--amqp-url", broker.url)
            indexed = [
                s3_node(base / f"indexed{i}", seaweed, indexed_bucket, *index) for i in (1, 2)
            ]
            nodes += indexed
            # A queue on the workflow exchange, or the broker returns every
            # request unroutable and the relay re-sends it every 5 s.
            with closing(pika.BlockingConnection(broker.parameters())) as connection:
                channel = connection.channel()
                channel.exchange_declare("monaideploy", exchange_type="topic", durable=True)
                channel.queue_declare("cluster-bench", durable=True)
                channel.queue_bind("cluster-bench", "monaideploy", "md.workflow.request")
            one = start_haproxy(base / "haproxy-1", [nodes[0].port])
            two = start_haproxy(base / "haproxy-2", [n.port for n in nodes[:2]])
            with_index = start_haproxy(base / "haproxy-index", [n.port for n in indexed])
            balancers = [one, two, with_index]
            time.sleep(3)  # haproxy's health checks: rise 2, inter 1s
            pg, mq = database.process, broker._server
            assert pg is not None and mq is not None
            shared = [pg.pid, mq.pid]
            index_pids = [indexed[0].pid, indexed[1].pid, with_index.process.pid, *shared]
            setups = {
                "direct-1": (nodes[0].url, [nodes[0].pid], "/studies"),
                "haproxy-1": (one.url, [nodes[0].pid, one.process.pid], "/studies"),
                "haproxy-2": (two.url, [nodes[0].pid, nodes[1].pid, two.process.pid], "/studies"),
                "index-2": (with_index.url, index_pids, "/studies"),
                "outbox-2": (with_index.url, index_pids, "/dicomweb/studies"),
            }
            load(nodes[0].url, 1.0, bodies(40))  # warm-up (imports, connections)
            for round_number in range(arguments.rounds):
                for target in TARGETS:
                    url, pids, path = setups[target]
                    pool = bodies(arguments.pool)
                    before = [tree_cpu_seconds(pid) for pid in pids]
                    started = time.monotonic()
                    instances, failures = load(url, arguments.seconds, pool, path)
                    elapsed = time.monotonic() - started
                    used = [tree_cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
                    per = 1000 / max(instances, 1)
                    if target.startswith(("index", "outbox")):
                        node_cpu, balancer_cpu = sum(used[:2]), used[2]
                        pg_cpu, mq_cpu = used[3], used[4]
                    else:
                        pg_cpu = mq_cpu = 0.0
                        has_balancer = target != "direct-1"
                        node_cpu = sum(used[:-1] if has_balancer else used)
                        balancer_cpu = used[-1] if has_balancer else 0.0
                    row = {
                        "instances_per_second": instances / elapsed,
                        "failures": failures,
                        "node_cpu_s_per_1000": node_cpu * per,
                        "haproxy_cpu_s_per_1000": balancer_cpu * per,
                        "postgres_cpu_s_per_1000": pg_cpu * per,
                        "rabbitmq_cpu_s_per_1000": mq_cpu * per,
                        "load_average": os.getloadavg()[0],
                    }
                    results[target].append(row)
                    print(
                        f"round {round_number + 1} {target:10s} "
                        f"{row['instances_per_second']:7.1f} inst/s  "
                        f"node CPU {row['node_cpu_s_per_1000']:.2f} s/1000  "
                        f"haproxy CPU {row['haproxy_cpu_s_per_1000']:.2f} s/1000  "
                        f"postgres CPU {row['postgres_cpu_s_per_1000']:.2f} s/1000  "
                        f"rabbitmq CPU {row['rabbitmq_cpu_s_per_1000']:.2f} s/1000  "
                        f"failures {failures}  load {row['load_average']:.1f}",
                        flush=True,
                    )
        finally:
            for balancer in balancers:
                balancer.stop()
            for node in nodes:
                node.stop()
            broker.close()
            database.close()
            seaweed.stop()
    summary = {
        target: {
            name: statistics.median(row[name] for row in rows)
            for name in rows[0]
            if name != "failures"
        }
        for target, rows in results.items()
    }
    print("\nmedians:")
    for target, figures in summary.items():
        print(
            f"  {target:10s} {figures['instances_per_second']:7.1f} inst/s  "
            f"node CPU {figures['node_cpu_s_per_1000']:.2f} s/1000 instances  "
            f"haproxy {figures['haproxy_cpu_s_per_1000']:.2f}  "
            f"postgres {figures['postgres_cpu_s_per_1000']:.2f}  "
            f"rabbitmq {figures['rabbitmq_cpu_s_per_1000']:.2f} CPU-s/1000 instances"
        )
    ratio = (
        summary["haproxy-2"]["instances_per_second"] / summary["haproxy-1"]["instances_per_second"]
    )
    print(f"  haproxy-2 / haproxy-1: {ratio:.2f}")
    if arguments.out is not None:
        arguments.out.write_text(json.dumps({"runs": results, "medians": summary}, indent=2))


if __name__ == "__main__":
    main()
