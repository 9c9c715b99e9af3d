"""Per-instance results of a STOW-RS request, with the standard reason codes.

A problem with one part is a value of this module, never an exception that
crosses into other parts.  Reason codes are PS3.18 Annex I Tables I.2-1 and
I.2-2; the ones the standard does not define (0x0111) are documented in
docs/CONFORMANCE.md as its I.2.2 requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class FailureReason(IntEnum):
    """FailureReason (0008,1197) values (PS3.18 Table I.2-2, plus 0x0111)."""

    PROCESSING_FAILURE = 0x0110
    # PS3.7 "Duplicate SOP Instance": not in Table I.2-2, an additional code
    # the conformance statement documents (docs/CONFORMANCE.md), as dcm4chee
    # and Microsoft's server report duplicates.
    DUPLICATE_SOP_INSTANCE = 0x0111
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122


class WarningReason(IntEnum):
    """WarningReason (0008,1196) values (PS3.18 Table I.2-1)."""

    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xB007


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """The four UIDs that place an instance in storage and in the response."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str


@dataclass(frozen=True, slots=True)
class Stored:
    """The instance is durably stored (possibly with a warning)."""

    instance: InstanceRef
    warning: WarningReason | None = None
    detail: str = ""
    # Bytes of the stored file, when the storage reports it (workflow requests list it).
    size_bytes: int | None = None
    # SHA-256 of the stored bytes, hex, as the storage computed it while they
    # streamed (the instance's log line and workflow request carry it).
    sha256: str | None = None
    # 1-based position of its part in the body, set once the part ended (the
    # log line names it; see ``Failed.part``).
    part: int | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """The instance (or a piece of the body) was not stored.

    With ``sop_instance_uid`` known the failure is reported in
    FailedSOPSequence; without it (unparseable part, broken framing) in
    OtherFailuresSequence, which is where PS3.18 Annex I puts failures "not
    associated with a specific SOP Instance".
    """

    reason: FailureReason
    detail: str
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    # 1-based position of its part in the body; None for a failure of the body
    # itself (broken framing, digest).  A failure without UIDs is only
    # identifiable by it: the Warning header and problem documents name it.
    part: int | None = None


Outcome = Stored | Failed
