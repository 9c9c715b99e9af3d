"""The per-request rules and the results storage reports, as plain values.

``IngestPolicy`` is decided from the headers (``admission``) and applied by
the ingest edge once a part is validated; ``CommitResult`` and
``StorageFull`` are what every storage backend reports.  They live in the
core so that the interfaces and backends depend on the core, never the
other way round.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .validation import ValidationPolicy


class StudyMismatch(enum.Enum):
    """What to do with an instance of another study than the URL's."""

    REJECT = "reject"  # FailedSOPSequence, FailureReason 0xA900
    WARN = "warn"  # stored, WarningReason 0xB007 (the MONAI seed's behaviour)


class Duplicates(enum.Enum):
    """What to do with a SOP Instance UID already stored with other bytes."""

    REJECT = "reject"  # FailureReason 0x0111
    OVERWRITE = "overwrite"


@dataclass(frozen=True, slots=True)
class IngestPolicy:
    """The per-request rules Ingest applies once a part is validated."""

    validation: ValidationPolicy
    expected_study_uid: str | None = None
    study_mismatch: StudyMismatch = StudyMismatch.REJECT
    duplicates: Duplicates = Duplicates.REJECT


class StorageFull(Exception):
    """The storage has no room (ENOSPC or EDQUOT on disk): FailureReason 0xA700."""


class CommitResult(enum.Enum):
    """What ``commit`` did with a staged part."""

    STORED = "stored"
    # The same SOP Instance UID was already stored with identical bytes: the
    # request is an idempotent retry, nothing was rewritten.
    IDENTICAL_DUPLICATE = "identical-duplicate"
    # Already stored with other bytes and overwriting is off: not stored.
    CONFLICTING_DUPLICATE = "conflicting-duplicate"
    OVERWRITTEN = "overwritten"
