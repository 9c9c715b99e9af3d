"""Storage backends, and the results every backend reports."""

from __future__ import annotations

import enum


class StorageFull(Exception):
    """The filesystem has no room (ENOSPC or EDQUOT)."""


class CommitResult(enum.Enum):
    """What ``commit`` did with a staged part."""

    STORED = "stored"
    # The same SOP Instance UID was already stored with identical bytes: the
    # request is an idempotent retry, nothing was rewritten.
    IDENTICAL_DUPLICATE = "identical-duplicate"
    # Already stored with other bytes and overwriting is off: not stored.
    CONFLICTING_DUPLICATE = "conflicting-duplicate"
    OVERWRITTEN = "overwritten"
