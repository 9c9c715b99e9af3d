"""``--index``: the URL checks (no password ever), the schema's steps, the option's wiring."""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from twisted_stow.cluster.index import IndexedStorage
from twisted_stow.cluster.outbox import OutboxTable
from twisted_stow.cluster.schema import LATEST, MIGRATIONS
from twisted_stow.core.config import index_url_or_none
from twisted_stow.site import make_services
from twisted_stow.storage.memory import MemoryStorage
from twisted_stow.tap import Options
from twisted_stow.workflow.amqp import AmqpPublisher


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_index_url_is_kept_as_given() -> None:
    url = "postgresql://stow@db.example:5432/stow?sslmode=verify-full"
    assert parse("--index", url).config.index_url == url
    assert parse().config.index_url is None
    assert index_url_or_none("postgres://u@h/db") == "postgres://u@h/db"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgresql://stow:hunter2@db/stow", "PGPASSWORD"),
        ("postgresql://stow@db/stow?password=hunter2", "PGPASSWORD"),
        ("mysql://stow@db/stow", "is not postgresql://"),
        ("postgresql://stow@db", "is not postgresql://"),
        ("postgresql:///stow", "is not postgresql://"),
        ("postgresql://stow@db:99999/stow", "is not postgresql://"),
    ],
)
def test_bad_index_urls_are_usage_errors(url: str, words: str) -> None:
    with pytest.raises(usage.UsageError) as raised:
        parse("--index", url)
    assert words in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_migrations_are_numbered_by_position() -> None:
    assert LATEST == len(MIGRATIONS) >= 2
    assert "stow_instances" in MIGRATIONS[0] and "stow_outbox" in MIGRATIONS[1]


def test_index_wraps_the_storage_and_the_outbox_feeds_the_publisher() -> None:
    """With --index the storage is behind the index and the AMQP publisher
    drains the shared outbox, not the spool (no database is contacted here)."""
    config = parse(
        "--index", "postgresql://stow@127.0.0.1:1/stow", "--amqp-url", "amqp://g:g@127.0.0.1:1/"
    ).config
    top, site = make_services(config, MemoryReactorClock(), MemoryStorage())
    storage = site.stow.storage
    assert isinstance(storage, IndexedStorage)
    assert isinstance(storage.inner, MemoryStorage)
    (publisher,) = [s for s in top if isinstance(s, AmqpPublisher)]
    assert isinstance(publisher.outbox, OutboxTable)
    assert publisher.spool is None
