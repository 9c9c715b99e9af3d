"""Issue 16's options: --config TOML against the command line, the loopback default, the
exposure warning and the JSON log record."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from twisted.logger import LogLevel
from twisted.python import usage

from twisted_stow.core.config import StowConfig
from twisted_stow.ops.logs import flat_record
from twisted_stow.ops.startup import is_loopback, warn_if_exposed
from twisted_stow.tap import Options

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

# Every option of twistd stow, as the command line gives it (--config aside).
EVERY_OPTION = [
    "--storage=/srv/dicom",
    "--public-url=https://pacs.example/dicomweb",
    "--study-mismatch=warn",
    "--duplicates=overwrite",
    "--max-body-size=2G",
    "--max-requests=50",
    "--max-requests-per-peer=5",
    "--workflow-spool=/srv/spool",
    "--amqp-url=amqp://guest:guest@127.0.0.1:5672/%2F",
    "--amqp-exchange=ex",
    "--amqp-routing-key=rk",
    "--idle-timeout=30",
    "--max-part-size=1G",
    "--max-parts=500",
    "--memory-budget=256M",
    "--header-timeout=5",
    "--min-body-rate=1K",
    "--body-rate-window=20",
    "--metrics-listen=tcp:9108:interface=127.0.0.1",
    "--drain-timeout=90",
    "--log-format=json",
    "--min-free-space=10G",
    "--listen=tcp:8080:interface=127.0.0.1",
    "--listen=unix:/run/stow.sock",
    "--cors-origin=https://viewer.example",
    f"--sop-class={CT_IMAGE_STORAGE}",
    f"--transfer-syntax={JPEG_BASELINE}",
    "--jwt-algorithm=RS256",
    "--workflow=ai",
    "--default-workflow=ai",
    "--trust-forwarded-headers",
    "--accept-leading-zero-uids",
]
EVERY_OPTION_TOML = f"""
storage = "/srv/dicom"
public-url = "https://pacs.example/dicomweb"
study-mismatch = "warn"
duplicates = "overwrite"
max-body-size = "2G"
max-requests = 50
max-requests-per-peer = 5
workflow-spool = "/srv/spool"
amqp-url = "amqp://guest:guest@127.0.0.1:5672/%2F"
amqp-exchange = "ex"
amqp-routing-key = "rk"
idle-timeout = 30
max-part-size = "1G"
max-parts = 500
memory-budget = "256M"
header-timeout = 5.0
min-body-rate = "1K"
body-rate-window = 20
metrics-listen = "tcp:9108:interface=127.0.0.1"
drain-timeout = 90
log-format = "json"
min-free-space = "10G"
listen = ["tcp:8080:interface=127.0.0.1", "unix:/run/stow.sock"]
cors-origin = "https://viewer.example"
sop-class = ["{CT_IMAGE_STORAGE}"]
transfer-syntax = ["{JPEG_BASELINE}"]
jwt-algorithm = ["RS256"]
workflow = ["ai"]
default-workflow = ["ai"]
trust-forwarded-headers = true
accept-leading-zero-uids = true
"""


def parse(*argv: str) -> StowConfig:
    options = Options()
    options.parseOptions(list(argv))
    config: StowConfig = options.config
    return config


def test_config_file_with_every_option_equals_the_command_line(tmp_path: Path) -> None:
    """A TOML file holding every option builds the same StowConfig as the same options given
    on the command line."""
    path = tmp_path / "stow.toml"
    path.write_text(EVERY_OPTION_TOML)
    from_file = parse(f"--config={path}")
    assert from_file == parse(*EVERY_OPTION)
    assert from_file != StowConfig()


def test_docs_example_config_is_every_option() -> None:
    """docs/stow.example.toml parses and names every option of twistd stow but --config."""
    example = Path(__file__).resolve().parents[2] / "docs" / "stow.example.toml"
    config = parse(f"--config={example}")
    assert config.drain_timeout_seconds == 60
    names = {str(option[0]) for option in [*Options.optParameters, *Options.optFlags]}
    text = example.read_text()
    missing = {n for n in names | {"listen", "cors-origin", "workflow"} if f"{n} =" not in text}
    assert missing == {"config"}


def test_command_line_overrides_the_file(tmp_path: Path) -> None:
    """An option on the command line replaces the file's value; the others stay."""
    path = tmp_path / "stow.toml"
    path.write_text('max-parts = 500\nidle-timeout = 30\nlisten = ["tcp:1"]\n')
    config = parse(f"--config={path}", "--max-parts=7", "--listen=tcp:2")
    assert (config.max_parts, config.idle_timeout_seconds, config.listen) == (7, 30.0, ("tcp:2",))


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("max-body-sise = '1G'\n", "'max-body-sise' is not an option"),
        ("max-parts = [1]\n", "'max-parts' must be a string or a number"),
        ("trust-forwarded-headers = 'yes'\n", "'trust-forwarded-headers' must be true or false"),
        ("listen = [8080]\n", "'listen' must be a string or a list of strings"),
        ("max-parts = 'many'\n", "--max-parts: 'many' is not a whole number"),
        ("config = 'other.toml'\n", "'config' is not an option"),
        ("= broken", "is not valid TOML"),
    ],
)
def test_bad_config_file_names_the_key_and_the_file(tmp_path: Path, text: str, named: str) -> None:
    """An unknown key, a wrong type or bad TOML: one usage error naming the key and the file."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(usage.UsageError) as raised:
        parse(f"--config={path}")
    assert named in str(raised.value)
    if "--max-parts" not in named:
        assert str(path) in str(raised.value)


def test_default_listener_is_loopback_only() -> None:
    """With no --listen (and no authentication) the server binds 127.0.0.1 only."""
    config = parse()
    assert config.listen == ("tcp:8080:interface=127.0.0.1",)
    assert (config.users_file, config.tokens_file, config.jwt_key_file) == (None, None, None)


def test_exposed_listener_warns() -> None:
    """A listener on every interface without auth or TLS is warned about; loopback is not."""
    from twisted.logger import globalLogPublisher

    seen: list[dict[str, object]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        warn_if_exposed("tcp:8080:interface=127.0.0.1", authenticated=False)
        warn_if_exposed("unix:/run/stow.sock", authenticated=False)
        warn_if_exposed("tcp:8080", authenticated=False)
        warn_if_exposed("ssl:8443:interface=10.0.0.5:privateKey=k.pem", authenticated=True)
    finally:
        globalLogPublisher.removeObserver(seen)
    warnings = [e for e in seen if e.get("stow_event") == "server.exposed"]
    assert [(e["where"], e["missing"]) for e in warnings] == [
        ("every interface", "authentication or TLS")
    ]
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")


def test_json_record_is_flat() -> None:
    """A log event becomes flat JSON keys: timestamp, level, event, message and its scalars."""
    record = flat_record(
        {
            "log_time": 0.0,
            "log_level": LogLevel.info,
            "log_format": "stored {n}",
            "log_namespace": "x",
            "stow_event": "instance.stored",
            "n": 3,
            "path": b"/studies",
            "nested": {"not": "kept"},
        }
    )
    assert record == {
        "timestamp": "1970-01-01T00:00:00.000+00:00",
        "level": "info",
        "event": "instance.stored",
        "message": "stored 3",
        "namespace": "x",
        "n": 3,
        "path": "/studies",
    }


def _help_headings_and_options() -> tuple[list[str], list[str]]:
    text = str(Options())
    headings = [
        line[:-1] for line in text.splitlines() if line[:1].isalpha() and line.endswith(":")
    ]
    options = re.findall(r"^  (?:-\w,|   ) --([\w-]+)", text, flags=re.MULTILINE)
    return headings, options


def test_help_starts_with_listen_and_storage_then_examples() -> None:
    """--help: --listen and --storage first, examples next, then the topics in order."""
    text = str(Options())
    headings, options = _help_headings_and_options()
    assert options[:2] == ["listen", "storage"]
    assert headings[:2] == ["Where to listen and store", "Examples"]
    assert [h.split(" (")[0] for h in headings[2:8]] == [
        "Limits",
        "Conformance",
        "Authentication",
        "Workflows",
        "Operations",
        "S3 storage",
    ]
    assert text.index("Examples:") < text.index("--max-body-size")
    assert "twistd -n stow --storage" in text and "loopback" in text


def test_help_shows_every_option_once_in_a_group() -> None:
    """Every option twistd knows is listed once, none left to 'Other options'."""
    headings, options = _help_headings_and_options()
    known = {opt.rstrip("=") for opt in Options().longOpt}
    assert sorted(options) == sorted(known)
    assert "Other options" not in headings


def test_missing_users_file_names_the_option(tmp_path: Path) -> None:
    """A users file that does not exist: the usage error starts with --users and the path."""
    missing = tmp_path / "no-users.json"
    with pytest.raises(usage.UsageError, match=rf"^--users {re.escape(str(missing))}: "):
        Options().parseOptions(["--users", str(missing)])
