"""The access log line of each request, with the authenticated principal in it.

twisted.web's combined log format leaves the Common Log Format "authuser"
field as ``-``; here it carries ``Upload.principal`` (percent-encoded so a
name with spaces or quotes cannot break the line), so every stored request's
access line says who sent it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from twisted.web.http import combinedLogFormatter

# combinedLogFormatter's line: '"ip" - - [timestamp] "request" ...'; the second
# dash is the authuser field.
_NO_USER = " - - "


def access_log_line(timestamp: str, request: Any) -> str:
    """``combinedLogFormatter``'s line, with the principal as authuser when there is one."""
    line: str = combinedLogFormatter(timestamp, request)
    principal = getattr(getattr(request, "upload", None), "principal", None)
    if not principal:
        return line
    ip, sep, rest = line.partition(_NO_USER)
    if not sep:  # pragma: no cover - Twisted changed its format
        return line
    return f"{ip} - {quote(principal, safe='@.-_:+')} {rest}"
