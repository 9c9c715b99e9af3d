"""``host[:port]``: the one split of an authority into its host and port.

Used for a ``Host`` / ``X-Forwarded-Host`` value (``admission.base_url``)
and for one hop of ``X-Forwarded-For`` / ``Forwarded`` (``forwarded``):
both are RFC 3986's ``host [ ":" port ]``, an IPv6 literal in brackets.
A hop may also be a bare IPv6 address (several colons, no brackets),
which has no port.  What each caller does with a malformed value differs
(a ``Host`` is refused with a reason, or keeps its name when it builds a
URL; a hop is discarded), so the split keeps what follows the host and
leaves the judgement to them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HostPort:
    """An authority split: ``host`` and what follows it (``rest``: "", ":80", "x", ...)."""

    host: str  # an IPv6 literal keeps its brackets
    rest: str

    @property
    def port(self) -> str | None:
        """The port, if ``rest`` is one (1-5 ASCII digits below 65536)."""
        return self.rest[1:] if is_port(self.rest) else None

    @property
    def well_formed(self) -> bool:
        """A host alone or with a port; an IP literal closed."""
        closed = not self.host.startswith("[") or self.host.endswith("]")
        return closed and (not self.rest or self.port is not None)


def split_host_port(text: str) -> HostPort:
    """Split ``text`` (surrounding blanks ignored) at the end of its host.

    The host: ``[...]`` up to its ``]`` (all of ``text`` if unclosed), all
    of a bare IPv6 address (two colons or more, no brackets), else what
    precedes the first ``:``.
    """
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return HostPort(text, "")
        return HostPort(text[: end + 1], text[end + 1 :])
    if text.count(":") > 1:
        return HostPort(text, "")
    host, colon, port = text.partition(":")
    return HostPort(host, colon + port)


def is_port(text: str) -> bool:
    """Whether ``text`` is ``":"`` and a port number (1-5 ASCII digits, below 65536)."""
    digits = text[1:]
    if text[:1] != ":" or not 0 < len(digits) <= 5:
        return False
    return digits.isascii() and digits.isdigit() and int(digits) < 65536
