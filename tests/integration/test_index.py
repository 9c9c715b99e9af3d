"""The shared SOP instance index (``--index postgresql://...``) against a real PostgreSQL.

Real parts only: PostgreSQL (tests/integration/postgres.py), SeaweedFS for
the shared bucket, and separate ``twistd -n stow`` processes as the nodes
(tests/integration/cluster.py). A database or store that cannot start fails
the tests; they never skip.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import (
    DUPLICATE,
    PROCESSING_FAILURE,
    Node,
    failure_reasons,
    new_instance,
    sha256,
    with_padding,
)
from tests.integration.postgres import PostgreSQL, free_port
from tests.integration.seaweedfs import SeaweedFS
from tests.launcher import LOOPBACK_ANY_PORT, twistd_command
from twisted_stow.cluster.schema import LATEST, MIGRATIONS, SchemaTooNew, current_version, migrate
from twisted_stow.ops.startup import HELP_HINT, STARTUP_FAILURE_STATUS

# Above the multipart minimum (5 MiB): the racing uploads stream S3 parts to
# the same key before either commits.
MULTIPART_PADDING = 6 * 1024 * 1024


@pytest.fixture(scope="module")
def pair(
    postgres: PostgreSQL, seaweed: SeaweedFS, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Node, Node, str, str]]:
    """Two nodes: separate processes and ports, one bucket, one database."""
    url = postgres.new_database()
    bucket = seaweed.new_bucket()
    base = tmp_path_factory.mktemp("pair")
    first = Node(base / "a", url, seaweed=seaweed, bucket=bucket)
    try:
        second = Node(base / "b", url, seaweed=seaweed, bucket=bucket)
        try:
            yield first, second, url, bucket
        finally:
            second.stop()
    finally:
        first.stop()


def index_row(postgres: PostgreSQL, url: str, sop: str) -> tuple[Any, ...] | None:
    """(state, sha256, size_bytes, object_key, node) of ``sop``'s row."""
    with postgres.connect(url.rsplit("/", 1)[1]) as conn:
        row: Any = conn.execute(
            "SELECT state, sha256, size_bytes, object_key, node FROM stow_instances "
            "WHERE sop_instance_uid = %s",
            (sop,),
        ).fetchone()
    return None if row is None else (row[0], bytes(row[1]), row[2], row[3], row[4])


def test_schema_is_created_migrated_and_idempotent(postgres: PostgreSQL) -> None:
    """Version 1 (an older server's schema) → the current one, keeping rows; a
    second run changes nothing; a newer schema than ours is refused."""
    url = postgres.new_database()
    with postgres.connect(url.rsplit("/", 1)[1]) as conn:
        assert migrate(conn, MIGRATIONS[:1]) == 0
        assert current_version(conn) == 1
        assert conn.execute("SELECT to_regclass('stow_outbox')").fetchone() == (None,)
        conn.execute(
            "INSERT INTO stow_instances VALUES "
            "('1.2.3', '1.2', '1.2.1', 'k', 1, '\\x00', 'stored', 'n', NULL, now())"
        )
        assert migrate(conn) == 1
        assert current_version(conn) == LATEST == 2
        assert conn.execute("SELECT to_regclass('stow_outbox')").fetchone() == ("stow_outbox",)
        assert migrate(conn) == LATEST
        assert conn.execute("SELECT count(*) FROM stow_schema").fetchone() == (1,)
        assert conn.execute("SELECT sop_instance_uid FROM stow_instances").fetchall() == [
            ("1.2.3",)
        ]
        conn.execute("UPDATE stow_schema SET version = %s", (LATEST + 1,))
        with pytest.raises(SchemaTooNew):
            migrate(conn)


def run_startup(tmp_path: Path, index: str, env: dict[str, str] | None = None) -> list[str]:
    completed = subprocess.run(
        [
            twistd_command(),
            "-n",
            "--pidfile=",
            "stow",
            "--storage",
            str(tmp_path / "store"),
            "--listen",
            LOOPBACK_ANY_PORT,
            "--index",
            index,
        ],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert completed.returncode == STARTUP_FAILURE_STATUS, completed
    output = (completed.stdout + completed.stderr).decode().strip().splitlines()
    assert output == [output[0], HELP_HINT], output
    return output


def test_startup_refuses_with_one_line(postgres: PostgreSQL, tmp_path: Path) -> None:
    """A password in the URL, another scheme, a database nobody answers for, a
    schema newer than ours: one line and exit 2 each, before listening."""
    port = postgres.port
    assert "PGPASSWORD" in run_startup(tmp_path, f"postgresql://stow:secret@127.0.0.1:{port}/x")[0]
    assert "secret" not in run_startup(tmp_path, f"mysql://stow:secret@127.0.0.1:{port}/x")[0]
    nobody = run_startup(tmp_path, f"postgresql://stow@127.0.0.1:{free_port()}/stow")[0]
    assert "cannot use the index database" in nobody
    url = postgres.new_database()
    with postgres.connect(url.rsplit("/", 1)[1]) as conn:
        migrate(conn)
        conn.execute("UPDATE stow_schema SET version = %s", (LATEST + 1,))
    assert "newer than this server" in run_startup(tmp_path, url)[0]


def race(first: Node, second: Node, one: bytes, other: bytes) -> list[tuple[int, list[int]]]:
    """Both nodes receive their bytes at the same moment; (status, failure reasons) each."""
    start = threading.Barrier(2)
    answers: list[tuple[int, list[int]]] = [(0, []), (0, [])]

    def send(slot: int, node: Node, data: bytes) -> None:
        start.wait()
        response = node.post([data])
        answers[slot] = (response.status_code, failure_reasons(response.json()))

    threads = [
        threading.Thread(target=send, args=(0, first, one)),
        threading.Thread(target=send, args=(1, second, other)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_two_nodes_racing_on_one_uid_with_different_bytes(
    pair: tuple[Node, Node, str, str], postgres: PostgreSQL, seaweed: SeaweedFS
) -> None:
    """Exactly one node stores, the other answers 0x0111; the index row and the
    object are the winner's bytes, whole. Repeated, once with multipart-sized parts."""
    first, second, url, bucket = pair
    s3 = seaweed.client()
    for round_, padding in enumerate([0, 1000, 1000, 1000, MULTIPART_PADDING]):
        ds, one = new_instance(padding=padding, seed=2 * round_)
        other = with_padding(ds, padding=padding + 7, seed=2 * round_ + 1)
        answers = race(first, second, one, other)
        assert sorted(answers) == [(200, []), (409, [DUPLICATE])], (round_, answers)
        winner = one if answers[0][0] == 200 else other
        row = index_row(postgres, url, ds.SOPInstanceUID)
        assert row is not None
        state, digest, size, key, _node = row
        assert (state, digest, size) == ("stored", sha256(winner), len(winner))
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert body == winner


def test_the_index_alone_decides_between_nodes_with_their_own_disks(
    postgres: PostgreSQL, tmp_path: Path
) -> None:
    """Two nodes that share nothing but the database (each its own --storage
    directory): the index's unique key is all that can decide, and it does."""
    url = postgres.new_database()
    first = Node(tmp_path / "a", url)
    try:
        second = Node(tmp_path / "b", url)
        try:
            for round_ in range(3):
                ds, one = new_instance(padding=300, seed=round_)
                other = with_padding(ds, padding=301, seed=round_ + 50)
                answers = race(first, second, one, other)
                assert sorted(answers) == [(200, []), (409, [DUPLICATE])], answers
                winner = one if answers[0][0] == 200 else other
                stored = [
                    node.base
                    / "store"
                    / ds.StudyInstanceUID
                    / ds.SeriesInstanceUID
                    / f"{ds.SOPInstanceUID}.dcm"
                    for node in (first, second)
                ]
                assert [path.read_bytes() for path in stored if path.exists()] == [winner]
        finally:
            second.stop()
    finally:
        first.stop()


def test_two_nodes_with_the_same_bytes_both_succeed(
    pair: tuple[Node, Node, str, str], postgres: PostgreSQL
) -> None:
    """An identical retry racing on another node is a success on both."""
    first, second, url, _bucket = pair
    for _ in range(3):
        ds, data = new_instance(padding=500)
        assert race(first, second, data, data) == [(200, []), (200, [])]
        row = index_row(postgres, url, ds.SOPInstanceUID)
        assert row is not None and row[:2] == ("stored", sha256(data))


def test_a_stored_uid_on_one_node_is_a_duplicate_on_the_other(
    pair: tuple[Node, Node, str, str],
) -> None:
    first, second, _url, _bucket = pair
    ds, data = new_instance()
    assert first.post([data]).status_code == 200
    assert second.post([data]).status_code == 200  # identical: idempotent
    conflicting = second.post([with_padding(ds, padding=64, seed=3)])
    assert conflicting.status_code == 409
    assert failure_reasons(conflicting.json()) == [DUPLICATE]


def insert_pending(
    postgres: PostgreSQL, url: str, ds: object, data: bytes, *, expired: bool
) -> None:
    """The row a node leaves when it dies mid-commit (or holds while it commits)."""
    lease = "now() - interval '1 minute'" if expired else "now() + interval '1 hour'"
    with postgres.connect(url.rsplit("/", 1)[1]) as conn:
        conn.execute(
            "INSERT INTO stow_instances (sop_instance_uid, study_instance_uid, "
            "series_instance_uid, object_key, size_bytes, sha256, state, node, lease_expires) "
            f"VALUES (%s, %s, %s, 'k', %s, %s, 'pending', 'dead-node', {lease})",
            (
                ds.SOPInstanceUID,  # type: ignore[attr-defined]
                ds.StudyInstanceUID,  # type: ignore[attr-defined]
                ds.SeriesInstanceUID,  # type: ignore[attr-defined]
                len(data),
                sha256(data),
            ),
        )


def test_a_pending_row_with_an_expired_lease_is_taken_over(
    pair: tuple[Node, Node, str, str], postgres: PostgreSQL
) -> None:
    """A node died between its claim and its commit: the UID is not blocked."""
    first, _second, url, _bucket = pair
    ds, data = new_instance()
    insert_pending(postgres, url, ds, with_padding(ds, padding=32, seed=9), expired=True)
    assert first.post([data]).status_code == 200
    row = index_row(postgres, url, ds.SOPInstanceUID)
    assert row is not None
    assert row[:3] == ("stored", sha256(data), len(data))
    assert row[4] != "dead-node"


def test_a_live_pending_row_is_waited_for(
    pair: tuple[Node, Node, str, str], postgres: PostgreSQL
) -> None:
    """Another node is committing the UID (live lease): the upload waits for
    that commit's end instead of failing at once, then decides against it
    (here the other commit gave the row back, so this one stores)."""
    first, _second, url, _bucket = pair
    ds, data = new_instance()
    insert_pending(postgres, url, ds, with_padding(ds, padding=32, seed=9), expired=False)
    answer: list[int] = []
    sending = threading.Thread(target=lambda: answer.append(first.post([data]).status_code))
    sending.start()
    time.sleep(1.0)  # the upload is waiting now (not a timing assertion)
    assert answer == []
    with postgres.connect(url.rsplit("/", 1)[1]) as conn:
        conn.execute("DELETE FROM stow_instances WHERE sop_instance_uid = %s", (ds.SOPInstanceUID,))
    sending.join()
    assert answer == [200]
    row = index_row(postgres, url, ds.SOPInstanceUID)
    assert row is not None and row[:2] == ("stored", sha256(data))


def test_overwrite_across_nodes(
    pair: tuple[Node, Node, str, str],
    postgres: PostgreSQL,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """``--duplicates overwrite`` on one node replaces what another node stored."""
    first, _second, url, bucket = pair
    ds, data = new_instance()
    assert first.post([data]).status_code == 200
    replacing = Node(
        tmp_path / "c", url, "--duplicates", "overwrite", seaweed=seaweed, bucket=bucket
    )
    try:
        newer = with_padding(ds, padding=128, seed=5)
        assert replacing.post([newer]).status_code == 200
    finally:
        replacing.stop()
    row = index_row(postgres, url, ds.SOPInstanceUID)
    assert row is not None
    assert row[:2] == ("stored", sha256(newer))
    assert seaweed.client().get_object(Bucket=bucket, Key=row[3])["Body"].read() == newer


def test_postgres_restarted_under_a_running_node(tmp_path: Path) -> None:
    """During the gap every answer is 503 + Retry-After (from the headers) or
    0x0110 per instance, never a 500 or a hang; after it, the node stores
    again by itself."""
    database = PostgreSQL(tmp_path / "pg")
    database.start()
    try:
        node = Node(tmp_path / "node", database.url)
        try:
            _, data = new_instance()
            assert node.post([data]).status_code == 200
            database.stop()
            answers: list[tuple[int, str | None, list[int]]] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                _, data = new_instance()
                response = node.post([data])
                retry_after = response.headers.get("Retry-After")
                reasons = failure_reasons(response.json()) if response.status_code == 409 else []
                answers.append((response.status_code, retry_after, reasons))
                if response.status_code == 503:
                    # The client learns that the index is down, not where it lives.
                    assert str(database.port) not in response.json()["detail"]
                    break
            assert answers[-1][0] == 503 and answers[-1][1] is not None, answers
            for status, retry_after, reasons in answers:
                assert (status == 503 and retry_after) or reasons == [PROCESSING_FAILURE], answers
            database.start()
            deadline = time.monotonic() + 30
            statuses = []
            while time.monotonic() < deadline:
                _, data = new_instance()
                statuses.append(node.post([data]).status_code)
                if statuses[-1] == 200:
                    break
                time.sleep(0.2)
            assert statuses[-1] == 200, statuses
            assert set(statuses) <= {200, 503, 409}, statuses
        finally:
            node.stop()
    finally:
        database.close()


def test_overwrites_racing_on_two_nodes_leave_row_and_object_agreeing(
    postgres: PostgreSQL, seaweed: SeaweedFS, tmp_path: Path
) -> None:
    """Both nodes overwrite: both succeed, one after the other (the index
    serialises them), and the row's SHA-256 is that of the object left."""
    url = postgres.new_database()
    bucket = seaweed.new_bucket()
    s3 = seaweed.client()
    first = Node(tmp_path / "a", url, "--duplicates", "overwrite", seaweed=seaweed, bucket=bucket)
    try:
        second = Node(
            tmp_path / "b", url, "--duplicates", "overwrite", seaweed=seaweed, bucket=bucket
        )
        try:
            for round_ in range(3):
                ds, one = new_instance(padding=400, seed=round_)
                other = with_padding(ds, padding=401, seed=round_ + 60)
                assert race(first, second, one, other) == [(200, []), (200, [])]
                row = index_row(postgres, url, ds.SOPInstanceUID)
                assert row is not None and row[0] == "stored"
                body = s3.get_object(Bucket=bucket, Key=row[3])["Body"].read()
                assert body in (one, other)
                assert sha256(body) == row[1]
        finally:
            second.stop()
    finally:
        first.stop()
