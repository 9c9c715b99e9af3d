"""Connection-level failures described in one line, and the fatal HTTP answers.  Pure."""

from __future__ import annotations

from collections.abc import Mapping

# Answers that no retry and no other request can change: the whole run
# stops with this message (exit status 2 when nothing was stored yet).
FATAL_STATUS_MESSAGES: Mapping[int, str] = {
    401: "401 Unauthorized: {url} wants credentials (--user, --token-file), or refused these",
    403: "403 Forbidden: these credentials may not store at {url}",
    404: "404 Not Found: {url} is not a STOW-RS endpoint (check the base URL; "
    "the client POSTs to BASE/studies)",
    405: "405 Method Not Allowed: {url} does not take POST (check the base URL)",
    415: "415 Unsupported Media Type: {url} does not take multipart/related; "
    "type=application/dicom",
}


def fatal_message(status: int, url: str) -> str | None:
    """The one-line message for a fatal answer, or None when ``status`` is not fatal."""
    template = FATAL_STATUS_MESSAGES.get(status)
    return None if template is None else template.format(url=url)


_CONSEQUENCES = frozenset({"TaskStopped", "ConnectionDone"})


def describe(error: BaseException) -> str:
    """One line for a connection error, Twisted's wrapped reasons unwrapped.

    ``ResponseNeverReceived`` and ``RequestTransmissionFailed`` hold a list
    of Failures in ``reasons``; the first one says what happened (refused,
    reset, a TLS verification error).
    """
    inner = [getattr(reason, "value", None) for reason in getattr(error, "reasons", None) or ()]
    causes = [e for e in inner if isinstance(e, BaseException)]
    # The body producer's TaskStopped is a consequence (the connection went);
    # the reason beside it (a TLS verification error) is the cause.
    if causes:
        return describe(min(causes, key=lambda e: type(e).__name__ in _CONSEQUENCES))
    text = str(error).strip() or type(error).__name__
    # pyOpenSSL errors render as a list of (library, function, reason) tuples.
    args = getattr(error, "args", ())
    if args and isinstance(args[0], list) and args[0] and isinstance(args[0][0], tuple):
        text = ", ".join(str(part[-1]) for part in args[0])
    return f"{type(error).__name__}: {text}"
