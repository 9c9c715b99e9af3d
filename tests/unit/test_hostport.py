"""``host[:port]``: the one split (core/hostport.py) behind Host and forwarded hops."""

from __future__ import annotations

import pytest

from twisted_stow.core.hostport import is_port, split_host_port


@pytest.mark.parametrize(
    ("text", "host", "rest", "port", "well_formed"),
    [
        ("h", "h", "", None, True),
        ("h:8080", "h", ":8080", "8080", True),
        (" h:1 ", "h", ":1", "1", True),
        ("198.51.100.7:4711", "198.51.100.7", ":4711", "4711", True),
        ("[::1]", "[::1]", "", None, True),
        ("[::1]:80", "[::1]", ":80", "80", True),
        ("2001:db8::17", "2001:db8::17", "", None, True),  # bare IPv6: no port
        ("h:", "h", ":", None, False),
        ("h:port", "h", ":port", None, False),
        ("h:65536", "h", ":65536", None, False),
        ("h:000080", "h", ":000080", None, False),
        ("h:\u0663", "h", ":\u0663", None, False),  # a non-ASCII digit
        ("[::1]:x", "[::1]", ":x", None, False),
        ("[::1]x", "[::1]", "x", None, False),
        ("[::1", "[::1", "", None, False),
        ("", "", "", None, True),
    ],
)
def test_split(text: str, host: str, rest: str, port: str | None, well_formed: bool) -> None:
    split = split_host_port(text)
    assert (split.host, split.rest, split.port, split.well_formed) == (
        host,
        rest,
        port,
        well_formed,
    )


def test_ports() -> None:
    assert is_port(":0") and is_port(":65535")
    assert not any(is_port(x) for x in ("", ":", "80", ":65536", ":123456", ":-1", ": 80"))
