"""The names a STOW URL carries besides UIDs: workflow ids, AE titles and Host.

One rule each, used wherever the name enters the server: the request URL
(``admission``), the start-up options (``config``: ``--workflow``,
``--default-workflow``) and the grants (``auth/grants.py``), so that a name
accepted in one place can be named in the others.  Each returns what is
wrong (for the problem document or the usage error) or None.  Standard
library only.
"""

from __future__ import annotations

import ipaddress
import string

from .hostport import split_host_port

# A workflow id is one path segment of /dicomweb/{workflow-id}/studies and
# ends up in RetrieveURLs and workflow requests: RFC 3986 §2.3 unreserved
# characters only, so it never needs escaping, is never a dot segment
# (RFC 3986 §5.2.4 would remove "." and ".."), and holds no control or
# line-separator character.  64 characters hold any UUID or readable name.
MAX_WORKFLOW_ID_CHARS = 64
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_DOT_SEGMENTS = frozenset({".", ".."})

# PS3.5 Table 6.2-1, VR AE: at most 16 characters of the Default Character
# Repertoire (ISO-IR 6, G0: 0x20-0x7E) excluding BACKSLASH and every control
# character, not consisting solely of spaces.
MAX_AE_TITLE_CHARS = 16
_AE_CHARACTERS = frozenset(chr(code) for code in range(0x20, 0x7F)) - {"\\"}

# RFC 1035 §2.3.4: labels of at most 63 octets, names of at most 253
# characters in text form (255 octets on the wire); RFC 3986 §3.2.3: a
# port is digits, at most 65535 to be usable.
MAX_HOST_LABEL_CHARS = 63
MAX_HOST_NAME_CHARS = 253
MAX_PORT = 65535
# Letters, digits and hyphen (RFC 1123 §2.1), plus underscore, which
# container and service-discovery names use and every resolver accepts.
_LABEL_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_")


def workflow_id_problem(value: str) -> str | None:
    """What makes ``value`` no workflow id, or None if it is one."""
    if not value or len(value) > MAX_WORKFLOW_ID_CHARS:
        return f"a workflow id has 1 to {MAX_WORKFLOW_ID_CHARS} characters"
    if not _UNRESERVED.issuperset(value):
        return "a workflow id holds only letters, digits and - . _ ~"
    if value in _DOT_SEGMENTS:
        return "a workflow id is not a dot segment"
    return None


def ae_title_problem(value: str) -> str | None:
    """What makes ``value`` no AE title (PS3.5 VR AE), or None if it is one."""
    if not value or len(value) > MAX_AE_TITLE_CHARS:
        return f"an AE title has 1 to {MAX_AE_TITLE_CHARS} characters"
    if not _AE_CHARACTERS.issuperset(value):
        return "an AE title holds no backslash and no control or non-ASCII character"
    if not value.strip(" "):
        return "an AE title is not all spaces"
    return None


def host_problem(value: bytes) -> str | None:
    """What makes a Host (or X-Forwarded-Host) value invalid, or None.

    RFC 9110 §7.2: ``uri-host [ ":" port ]``.  The host is an IP literal
    (``[v6]``), an IPv4 address or a DNS name of non-empty labels (what IDNA
    and every resolver require: ``a..b`` or a 64-character label is no name).
    Names arrive as ASCII: an internationalised one is sent as A-labels.
    An empty value is allowed (RFC 9110 §7.2, a target without authority).
    """
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return "the host is not ASCII"
    if not text:
        return None
    split = split_host_port(text)
    if split.host.startswith("["):
        if not split.host.endswith("]"):
            return "the IP literal is not closed"
        if split.rest and not split.rest.startswith(":"):
            return "the IP literal is followed by something other than a port"
        try:
            ipaddress.IPv6Address(split.host[1:-1])
        except ValueError:
            return "the IP literal is not an IPv6 address"
    else:
        problem = _name_problem(split.host)
        if problem is not None:
            return problem
    # RFC 9110 allows an empty port ("host:"), and leading zeros.
    port = split.rest[1:]
    if port and not (port.isdigit() and int(port) <= MAX_PORT):
        return f"the port is not a number from 0 to {MAX_PORT}"
    return None


def _name_problem(name: str) -> str | None:
    if len(name) > MAX_HOST_NAME_CHARS + 1:  # one trailing dot is the root
        return f"the host name is longer than {MAX_HOST_NAME_CHARS} characters"
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    for label in labels:
        if not label or len(label) > MAX_HOST_LABEL_CHARS:
            return f"a host name label has 1 to {MAX_HOST_LABEL_CHARS} characters"
        if not _LABEL_CHARACTERS.issuperset(label):
            return "a host name holds only letters, digits, hyphens, underscores and dots"
    return None
