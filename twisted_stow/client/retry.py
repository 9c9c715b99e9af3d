"""When to try again, and after how long: the retry policy, pure.

Retried: the statuses a server or proxy uses for "not now" (408 Request
Timeout, 429 Too Many Requests, 503 Service Unavailable, 504 Gateway
Timeout; RFC 9110 §15.5.9, §15.6.4-5, RFC 6585 §4) and connection errors,
each request up to ``--retries`` times.  Per instance, only the
FailureReasons that say "out of resources" (0xA700) or "processing failure"
(0x0110) are transient (PS3.18 Table I.2-2); every other one would fail the
same way again.  The delay is exponential backoff with full jitter (clients
that were refused together do not come back together), and never shorter
than the server's ``Retry-After`` (RFC 9110 §10.2.3).
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from dataclasses import dataclass

RETRYABLE_STATUSES = frozenset({408, 429, 503, 504})
TRANSIENT_FAILURE_REASONS = frozenset({0xA700, 0x0110})
DEFAULT_RETRIES = 5
# The first backoff is up to half a second, doubling per attempt: 0.5, 1, 2,
# 4, 8 s ceilings for the default five retries (about 15 s at the most).
BASE_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 30.0
# A Retry-After of hours is honoured only up to this: the user is watching.
MAX_RETRY_AFTER_SECONDS = 300.0
# Spread of the retries that all waited for the same Retry-After.
RETRY_AFTER_JITTER_SECONDS = 0.25


def is_retryable_status(status: int) -> bool:
    """Whether a request answered with ``status`` is sent again (after a delay)."""
    return status in RETRYABLE_STATUSES


def is_transient_failure(reason: int | None) -> bool:
    """Whether an instance that failed with FailureReason ``reason`` is sent again."""
    return reason in TRANSIENT_FAILURE_REASONS


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now`` (a Unix time), or None.

    Both forms of RFC 9110 §10.2.3: delay-seconds and an HTTP-date; a date
    in the past is 0, anything unparseable is None (ignored).
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True, slots=True)
class Backoff:
    """The delays before each retry.  ``random`` returns a float in [0, 1)."""

    random: Callable[[], float]
    base_seconds: float = BASE_DELAY_SECONDS
    max_seconds: float = MAX_DELAY_SECONDS

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry).

        Full jitter: uniform in [0, min(max, base * 2**(attempt-1))).  With a
        ``Retry-After``, at least that (capped at ``MAX_RETRY_AFTER_SECONDS``)
        plus up to ``RETRY_AFTER_JITTER_SECONDS``.
        """
        if attempt < 1:
            raise ValueError("attempt counts retries from 1")
        ceiling = min(self.max_seconds, self.base_seconds * 2.0 ** (attempt - 1))
        jittered = self.random() * ceiling
        if retry_after is None:
            return jittered
        floor = min(max(retry_after, 0.0), MAX_RETRY_AFTER_SECONDS)
        return floor + self.random() * RETRY_AFTER_JITTER_SECONDS
