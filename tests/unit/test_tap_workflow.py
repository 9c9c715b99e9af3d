"""The MONAI profile's options: values, checks, and the services they build."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from tests.unit.test_tap import parse
from twisted_stow.tap import Options, makeService
from twisted_stow.workflow.amqp import AmqpPublisher


def test_workflow_defaults() -> None:
    """No options: any workflow id, no default workflows, spool under storage, no broker."""
    config = parse("--storage", "/srv/dicom")
    assert config.workflows == config.default_workflows == ()
    assert config.workflow_spool_dir == Path("/srv/dicom/.workflow-spool")
    assert config.amqp_url is None
    assert (config.amqp_exchange, config.amqp_routing_key) == ("monaideploy", "md.workflow.request")


def test_workflow_options_set_their_fields() -> None:
    """Each workflow option lands in its field; the repeatable ones collect."""
    config = parse(
        "--workflow=a",
        "--workflow=b",
        "--default-workflow=b",
        "--workflow-spool=/var/spool/stow",
        "--amqp-url=amqp://u:p@127.0.0.1:5673/vh",
        "--amqp-exchange=x",
        "--amqp-routing-key=k.y",
    )
    assert config.workflows == ("a", "b")
    assert config.default_workflows == ("b",)
    assert config.workflow_spool_dir == Path("/var/spool/stow")
    assert config.amqp_url == "amqp://u:p@127.0.0.1:5673/vh"
    assert (config.amqp_exchange, config.amqp_routing_key) == ("x", "k.y")


@pytest.mark.parametrize(
    "argv",
    [
        ["--amqp-url=http://127.0.0.1/"],
        ["--amqp-url=ftp://127.0.0.1/"],
        # --amqp-ca verifies a TLS broker: meaningless without amqps://.
        ["--amqp-url=amqp://127.0.0.1/", f"--amqp-ca={__file__}"],
        # A file that holds no PEM certificate.
        ["--amqp-url=amqps://127.0.0.1/", f"--amqp-ca={__file__}"],
        ["--amqp-url=amqps://127.0.0.1/", "--amqp-ca=/nonexistent/ca.pem"],
        ["--workflow=a/b"],
        ["--workflow="],
        ["--default-workflow= x"],
        ["--workflow=a", "--default-workflow=b"],
    ],
)
def test_invalid_workflow_options_are_usage_errors(argv: list[str]) -> None:
    """Bad URLs, ids that are not one path segment, defaults outside the allow-list."""
    with pytest.raises(usage.UsageError):
        parse(*argv)


def _services(argv: list[str]) -> list[object]:
    options = Options()
    options.parseOptions(argv)
    return list(makeService(options, reactor=MemoryReactorClock()))


def test_publisher_service_only_with_a_broker(tmp_path: Path) -> None:
    """--amqp-url adds the publisher to the application; without it there is none."""
    storage = f"--storage={tmp_path}"
    assert not any(isinstance(s, AmqpPublisher) for s in _services([storage]))
    services = _services([storage, "--amqp-url=amqp://127.0.0.1:1/", "--amqp-exchange=ex"])
    (publisher,) = [s for s in services if isinstance(s, AmqpPublisher)]
    assert publisher.exchange == "ex"
    assert publisher.routing_key == "md.workflow.request"
    assert publisher.spool.directory == (tmp_path / ".workflow-spool").absolute()
