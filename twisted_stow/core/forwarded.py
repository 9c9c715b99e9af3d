"""The client's address behind trusted load balancers (``--trusted-proxy``).

A balancer connects to us from its own address, so every client would share
one per-peer slot count and one authentication throttle.  It says who its
client was in ``X-Forwarded-For`` (haproxy ``option forwardfor``, nginx
``$proxy_add_x_forwarded_for``) or in RFC 7239 ``Forwarded``.  Anyone can
send those headers, so they are read only on a connection from an address
the operator named, and only as far as the chain of named addresses goes:
walking the list from the right (the hop nearest us), the first address that
is not a trusted proxy is the client.  Everything left of it was written by
the client itself and is ignored.  A list we cannot read, or a hop that is
not an IP address (``unknown``, an obfuscated ``_name``), gives the
connection's own address: a broken header makes the limits stricter, never
looser.

Pure: plain values in, an address string out; linear in the header bytes
(twisted.web bounds those already).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from .hostport import split_host_port

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

X_FORWARDED_FOR = "x-forwarded-for"
FORWARDED = "forwarded"
FORWARDED_HEADERS = (X_FORWARDED_FOR, FORWARDED)


def parse_trusted_proxy(text: str) -> IPNetwork:
    """``--trusted-proxy``: an IP address or a CIDR network; ``ValueError`` names it."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"--trusted-proxy: {text!r} is not an IP address or network "
            "(e.g. 127.0.0.1, 10.0.0.0/8, fd00::/8)"
        ) from None


def parse_address(text: str) -> IPAddress | None:
    """One hop's address, or None: bare, ``[v6]``, ``[v6]:port``, ``v4:port``.

    An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``, how a dual-stack socket
    reports an IPv4 peer) is its IPv4 address, so ``10.0.0.0/8`` matches it.
    """
    split = split_host_port(text)
    if not split.well_formed:
        return None
    host = split.host[1:-1] if split.host.startswith("[") else split.host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def x_forwarded_for_hops(lines: Sequence[bytes]) -> list[str] | None:
    """The comma-separated hops of every ``X-Forwarded-For`` line, in order; None if malformed."""
    hops: list[str] = []
    for line in lines:
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            return None
        for hop in text.split(","):
            hop = hop.strip()
            if not hop:
                return None
            hops.append(hop)
    return hops


def forwarded_hops(lines: Sequence[bytes]) -> list[str] | None:
    """The ``for=`` node of each element of ``Forwarded`` lines (RFC 7239 §4); None if malformed.

    An element without ``for=`` is a hop we know nothing about: ``"unknown"``.
    """
    hops: list[str] = []
    for line in lines:
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            return None
        elements = _split_outside_quotes(text, ",")
        if elements is None:
            return None
        for element in elements:
            node = _for_node(element)
            if node is None:
                return None
            hops.append(node)
    return hops


def _for_node(element: str) -> str | None:
    """The ``for`` parameter of one ``forwarded-element``; None if it is malformed."""
    pairs = _split_outside_quotes(element, ";")
    if pairs is None:
        return None
    node = "unknown"
    for pair in pairs:
        name, equals, value = pair.strip().partition("=")
        if not equals or not name or not value:
            return None
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"'):
                return None
            value = value[1:-1].replace("\\", "")
        if name.strip().lower() == "for":
            node = value
    return node


def _split_outside_quotes(text: str, separator: str) -> list[str] | None:
    """``text`` split at ``separator`` outside quoted strings; None for an open quote."""
    pieces: list[str] = []
    start = 0
    quoted = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            pieces.append(text[start:index])
            start = index + 1
    if quoted:
        return None
    pieces.append(text[start:])
    return pieces


@dataclass(frozen=True)
class TrustedProxies:
    """The balancers whose forwarded headers we believe, and which header they write."""

    networks: tuple[IPNetwork, ...] = ()
    header: str = X_FORWARDED_FOR

    def trusts(self, address: str) -> bool:
        """Whether a connection from ``address`` comes from a trusted proxy."""
        parsed = parse_address(address)
        return parsed is not None and self._trusts(parsed)

    def _trusts(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def client_address(self, peer: str, headers: Mapping[bytes, Sequence[bytes]]) -> str:
        """Who the client is: the connection's ``peer``, or, on a connection from a
        trusted proxy, the right-most hop of the forwarded header that no trusted
        proxy wrote.

        ``headers`` maps lower-case header names to their raw lines.
        """
        if not self.networks or not self.trusts(peer):
            return peer
        lines = headers.get(self.header.encode("ascii"))
        if not lines:
            return peer
        if self.header == FORWARDED:
            hops = forwarded_hops(lines)
        else:
            hops = x_forwarded_for_hops(lines)
        if not hops:
            return peer
        return self._right_most_untrusted(peer, hops)

    def _right_most_untrusted(self, peer: str, hops: Iterable[str]) -> str:
        client: IPAddress | None = None
        for hop in reversed(list(hops)):
            address = parse_address(hop)
            if address is None:
                # The hop past our proxies is not an address: we cannot tell
                # who the client is, so it shares the proxy's own limits.
                return peer
            client = address
            if not self._trusts(address):
                break
        # Every hop trusted (a request from a balancer's own host): the
        # left-most is as close to the client as the chain goes.
        return str(client) if client is not None else peer


# The default: no connection's forwarded headers are believed.
NO_TRUSTED_PROXIES = TrustedProxies()
