"""Tests for tap.py's Options: defaults, value checks and the config they build."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from twisted_stow.core.config import DEFAULT_MAX_PARTS, StowConfig
from twisted_stow.core.policy import Duplicates, StudyMismatch
from twisted_stow.tap import Options

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def parse(*argv: str) -> StowConfig:
    """The config that ``twistd stow ARGV`` would run with."""
    options = Options()
    options.parseOptions(list(argv))
    config: StowConfig = options.config
    return config


def test_defaults_are_the_config_defaults() -> None:
    """No arguments give exactly StowConfig's defaults (loopback :8080, ./stow-data, no limits)."""
    config = parse()
    assert config == StowConfig()
    assert config.listen == ("tcp:8080:interface=127.0.0.1",)
    assert config.storage == Path("stow-data")
    assert config.idle_timeout_seconds == 60.0


def test_every_option_sets_its_field() -> None:
    """Each option lands in its StowConfig field, converted."""
    config = parse(
        "--listen=tcp:0",
        "--storage=/srv/stow",
        "--public-url=https://pacs.example/dicomweb",
        "--trust-forwarded-headers",
        "--study-mismatch=warn",
        "--duplicates=overwrite",
        "--cors-origin=https://viewer.example",
        "--max-body-size=10G",
        "--max-requests=8",
        "--max-requests-per-peer=2",
        "--idle-timeout=2.5",
        f"--sop-class={CT_IMAGE_STORAGE}",
        f"--transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}",
    )
    assert config == StowConfig(
        listen=("tcp:0",),
        storage=Path("/srv/stow"),
        public_url="https://pacs.example/dicomweb",
        trust_forwarded_headers=True,
        study_mismatch=StudyMismatch.WARN,
        duplicates=Duplicates.OVERWRITE,
        cors_origins=("https://viewer.example",),
        max_body_bytes=10 * 1024**3,
        max_requests=8,
        max_requests_per_peer=2,
        idle_timeout_seconds=2.5,
        sop_classes=frozenset({CT_IMAGE_STORAGE}),
        transfer_syntaxes=frozenset({EXPLICIT_VR_LITTLE_ENDIAN}),
    )


def test_repeatable_options_are_collected() -> None:
    """--listen, --cors-origin, --sop-class and --transfer-syntax keep every value given."""
    config = parse(
        "--listen=tcp:8080",
        "--listen=unix:/run/stow.sock",
        "--cors-origin=https://a.example",
        "--cors-origin=https://b.example",
        f"--sop-class={CT_IMAGE_STORAGE}",
        f"--sop-class={MR_IMAGE_STORAGE}",
        f"--transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}",
        f"--transfer-syntax={JPEG_BASELINE}",
    )
    assert config.listen == ("tcp:8080", "unix:/run/stow.sock")
    assert config.cors_origins == ("https://a.example", "https://b.example")
    assert config.sop_classes == {CT_IMAGE_STORAGE, MR_IMAGE_STORAGE}
    assert config.transfer_syntaxes == {EXPLICIT_VR_LITTLE_ENDIAN, JPEG_BASELINE}


@pytest.mark.parametrize(
    "url",
    [
        "http://pacs.example",
        "https://pacs.example/",
        "HTTPS://Pacs.Example:8443/dicom-web",
        "http://127.0.0.1:8042/orthanc/dicom-web/",
        "http://[::1]:8080",
    ],
)
def test_public_url_accepts_absolute_http_urls(url: str) -> None:
    """Absolute http(s) URLs, with or without port and base path, are kept as given."""
    assert parse(f"--public-url={url}").public_url == url


@pytest.mark.parametrize(
    ("option", "value", "parsed"),
    [
        ("--max-body-size", "1", 1),
        ("--max-body-size", "512MiB", 512 * 1024**2),
        ("--idle-timeout", "0.001", 0.001),
        ("--idle-timeout", "1e3", 1000.0),
        ("--max-requests", "1", 1),
    ],
)
def test_smallest_and_unusual_valid_numbers(option: str, value: str, parsed: float) -> None:
    """The lower bounds themselves, binary units and exponents are accepted."""
    config = parse(f"{option}={value}")
    field = {
        "--max-body-size": config.max_body_bytes,
        "--idle-timeout": config.idle_timeout_seconds,
        "--max-requests": config.max_requests,
    }[option]
    assert field == parsed


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-body-size=0"],
        ["--max-body-size=0G"],
        ["--max-requests=0"],
        ["--max-requests-per-peer=0"],
    ],
)
def test_zero_means_no_limit(argv: list[str]) -> None:
    """0 turns a limit off, as dcm4chee documents for its connection limits."""
    config = parse(*argv)
    assert (config.max_body_bytes, config.max_requests, config.max_requests_per_peer) == (
        None,
        None,
        None,
    )


def test_leading_zero_uids_need_the_option() -> None:
    """--sop-class follows the server's UID rule: strict, unless --accept-leading-zero-uids."""
    with pytest.raises(usage.UsageError, match="not a valid UID"):
        parse("--sop-class=1.2.03")
    config = parse("--sop-class=1.2.03", "--accept-leading-zero-uids")
    assert config.sop_classes == {"1.2.03"}
    assert config.accept_leading_zero_uids
    assert not parse().accept_leading_zero_uids


@pytest.mark.parametrize(
    "argv",
    [
        # --idle-timeout: a finite number of seconds above 0
        ["--idle-timeout=0"],
        ["--idle-timeout=-1"],
        ["--idle-timeout=nan"],
        ["--idle-timeout=inf"],
        ["--idle-timeout=1e400"],
        ["--idle-timeout=soon"],
        # --max-body-size: a size (0 is no limit)
        ["--max-body-size=-1"],
        ["--max-body-size=lots"],
        # --max-requests and --max-requests-per-peer: whole numbers (0 is no limit)
        ["--max-requests=-3"],
        ["--max-requests=1.5"],
        ["--max-requests=many"],
        ["--max-requests-per-peer=-1"],
        ["--max-requests-per-peer=two"],
        # --public-url: absolute http(s), no query or fragment
        ["--public-url=pacs.example"],
        ["--public-url=/dicomweb"],
        ["--public-url=ftp://pacs.example"],
        ["--public-url=https://"],
        ["--public-url=https:///path"],
        ["--public-url=https://pacs.example/?x=1"],
        ["--public-url=https://pacs.example/?"],
        ["--public-url=https://pacs.example/#top"],
        ["--public-url=https://pacs.example:port"],
        ["--public-url=https://[::1"],
        ["--public-url=https://pacs.example/a b"],
        ["--public-url="],
        # choices
        ["--study-mismatch=ignore"],
        ["--duplicates=keep"],
        # UIDs
        ["--sop-class=1.2.x"],
        ["--transfer-syntax=1..2"],
        ["--transfer-syntax=" + "1" * 65],
    ],
)
def test_invalid_values_are_usage_errors(argv: list[str]) -> None:
    """Each invalid value stops start-up with a UsageError naming its option."""
    option = argv[0].split("=", 1)[0]
    with pytest.raises(usage.UsageError, match=option):
        parse(*argv)


def test_max_parts_defaults_to_ten_thousand_and_zero_is_no_limit() -> None:
    """--max-parts: 10,000 by default, 0 for no limit; anything but a whole number is refused."""
    assert parse().max_parts == DEFAULT_MAX_PARTS == 10_000
    assert parse("--max-parts=5").max_parts == 5
    assert parse("--max-parts=0").max_parts is None
    for bad in ("-1", "lots"):
        with pytest.raises(usage.UsageError, match="--max-parts"):
            parse(f"--max-parts={bad}")
