"""The client address behind trusted proxies: core/forwarded.py and its options."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_stow.core.config import config_from_options
from twisted_stow.core.forwarded import (
    FORWARDED,
    TrustedProxies,
    forwarded_hops,
    parse_address,
    parse_trusted_proxy,
    x_forwarded_for_hops,
)
from twisted_stow.tap import Options

BALANCERS = TrustedProxies((parse_trusted_proxy("10.0.0.0/24"), parse_trusted_proxy("::1")))


def xff(*lines: str) -> dict[bytes, list[bytes]]:
    return {b"x-forwarded-for": [line.encode() for line in lines]}


def test_a_direct_client_is_its_connection_even_with_a_forged_header() -> None:
    assert BALANCERS.client_address("203.0.113.9", xff("198.51.100.1")) == "203.0.113.9"


def test_without_trusted_proxies_the_header_is_never_read() -> None:
    assert TrustedProxies().client_address("10.0.0.1", xff("198.51.100.1")) == "10.0.0.1"


def test_the_right_most_untrusted_hop_is_the_client() -> None:
    # The client forged "1.1.1.1"; our balancer appended the address it saw.
    headers = xff("1.1.1.1, 198.51.100.7")
    assert BALANCERS.client_address("10.0.0.5", headers) == "198.51.100.7"


def test_chained_trusted_proxies_are_skipped() -> None:
    headers = xff("1.1.1.1", "198.51.100.7, 10.0.0.9")  # two lines are one list
    assert BALANCERS.client_address("10.0.0.5", headers) == "198.51.100.7"


def test_a_chain_of_only_trusted_hops_gives_the_left_most() -> None:
    assert BALANCERS.client_address("10.0.0.5", xff("10.0.0.7, 10.0.0.9")) == "10.0.0.7"


def test_no_header_from_a_proxy_is_the_proxy() -> None:
    assert BALANCERS.client_address("10.0.0.5", {}) == "10.0.0.5"


@pytest.mark.parametrize(
    "line",
    ["", "198.51.100.7,,10.0.0.9", "not-an-address", "198.51.100.7, unknown", "1.2.3.4:99999"],
)
def test_malformed_gives_the_connection_address(line: str) -> None:
    assert BALANCERS.client_address("10.0.0.5", xff(line)) == "10.0.0.5"


def test_non_ascii_gives_the_connection_address() -> None:
    headers = {b"x-forwarded-for": ["198.51.100.7\u00e9".encode("latin-1")]}
    assert BALANCERS.client_address("10.0.0.5", headers) == "10.0.0.5"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("198.51.100.7:4711", "198.51.100.7"),
        ("[2001:db8::17]:4711", "2001:db8::17"),
        ("[2001:db8::17]", "2001:db8::17"),
        ("2001:db8::17", "2001:db8::17"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        (" 198.51.100.7 ", "198.51.100.7"),
    ],
)
def test_address_forms(text: str, expected: str) -> None:
    assert str(parse_address(text)) == expected


@pytest.mark.parametrize("text", ["[2001:db8::17", "[2001:db8::17]x", "1.2.3.4:", "host", ""])
def test_not_addresses(text: str) -> None:
    assert parse_address(text) is None


def test_an_ipv4_mapped_connection_matches_an_ipv4_network() -> None:
    assert BALANCERS.trusts("::ffff:10.0.0.3")
    assert not BALANCERS.trusts("::ffff:10.0.1.3")


def test_rfc7239_forwarded() -> None:
    proxies = TrustedProxies(BALANCERS.networks, FORWARDED)
    headers = {
        b"forwarded": [
            b'for=1.1.1.1, for="[2001:db8:cafe::17]:4711";proto=https',
            b"for=10.0.0.9;by=10.0.0.5",
        ]
    }
    assert proxies.client_address("10.0.0.5", headers) == "2001:db8:cafe::17"
    # X-Forwarded-For is not what these proxies write: ignored.
    assert proxies.client_address("10.0.0.5", xff("198.51.100.7")) == "10.0.0.5"


@pytest.mark.parametrize(
    "line",
    [b'for="198.51.100.7', b"for", b"for=", b"for=unknown", b"for=_hidden", b"proto=https"],
)
def test_rfc7239_malformed_or_unidentified(line: bytes) -> None:
    proxies = TrustedProxies(BALANCERS.networks, FORWARDED)
    assert proxies.client_address("10.0.0.5", {b"forwarded": [line]}) == "10.0.0.5"


def test_hop_lists() -> None:
    assert x_forwarded_for_hops([b"a, b", b"c"]) == ["a", "b", "c"]
    assert forwarded_hops([b'for=a;proto=http, for="b,c"', b"by=x"]) == ["a", "b,c", "unknown"]
    assert forwarded_hops([b'for="a\\"b"']) == ['a"b']


@given(st.binary(max_size=200))
def test_any_header_bytes_give_some_address(raw: bytes) -> None:
    for header in (b"x-forwarded-for", b"forwarded"):
        proxies = TrustedProxies(BALANCERS.networks, header.decode())
        client = proxies.client_address("10.0.0.5", {header: [raw]})
        assert parse_address(client) is not None


def options(*arguments: str) -> Options:
    parsed = Options()
    parsed.parseOptions(list(arguments))
    return parsed


def test_option_is_repeatable_and_takes_cidr() -> None:
    config = options("--trusted-proxy", "127.0.0.1", "--trusted-proxy", "fd00::/8").config
    assert config.trusted_proxies.trusts("127.0.0.1")
    assert config.trusted_proxies.trusts("fd00::5")
    assert not config.trusted_proxies.trusts("127.0.0.2")
    assert config.trusted_proxies.header == "x-forwarded-for"


def test_default_trusts_nobody() -> None:
    assert not options().config.trusted_proxies.networks


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--trusted-proxy", "balancer.example"], "--trusted-proxy: 'balancer.example'"),
        (["--trusted-proxy", "10.0.0.0/33"], "--trusted-proxy"),
        (["--forwarded-header", "x-real-ip"], "--forwarded-header: 'x-real-ip'"),
    ],
)
def test_bad_values_name_the_option(arguments: list[str], message: str) -> None:
    from twisted.python.usage import UsageError

    with pytest.raises(UsageError, match=message):
        options(*arguments)


def test_config_from_a_plain_mapping_needs_no_new_keys() -> None:
    # Other callers build the values without the new options: defaults apply.
    values = dict(Options())
    values.pop("trusted-proxy")
    values.pop("forwarded-header")
    assert not config_from_options(values).trusted_proxies.networks


def start_up_warnings(arguments: list[str]) -> list[str]:
    """The warnings ``makeService`` logs for ``arguments`` (nothing listens: a memory reactor)."""
    from twisted.internet.testing import MemoryReactorClock
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    from twisted_stow.tap import makeService

    seen: list[str] = []

    def observe(event: dict[str, object]) -> None:
        if event.get("log_level") == LogLevel.warn:
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        makeService(options(*arguments), reactor=MemoryReactorClock())
    finally:
        globalLogPublisher.removeObserver(observe)
    return seen


def test_trusting_forwarded_headers_from_anyone_warns(tmp_path: Path) -> None:
    storage = f"--storage={tmp_path}"
    alone = start_up_warnings([storage, "--trust-forwarded-headers"])
    assert any("--trust-forwarded-headers without --trusted-proxy" in line for line in alone)
    named = start_up_warnings([storage, "--trust-forwarded-headers", "--trusted-proxy=10.0.0.1"])
    assert not any("--trusted-proxy" in line for line in named)
