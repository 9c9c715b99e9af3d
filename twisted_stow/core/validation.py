"""Judges whether a part is a storable DICOM instance, and names it.

``validate_header`` takes the header ``dicomheader.HeaderCapture`` captured
as the part streamed and applies the rules of docs/CONFORMANCE.md §6.1 rows
4-8 to its UIDs: present and valid, consistent with the File Meta, and
allowed by the ``ValidationPolicy``.  It reads no files and costs a few
microseconds, so the ingest edge runs it on the reactor.  The policy's
defaults, every Storage SOP Class and every transfer syntax pydicom knows,
are built here too.

How the header is captured (the byte, element and nesting limits, deflated
data sets) is ``dicomheader``'s business; what is accepted is this module's.
Neither decides whether a part is complete: the multipart parser does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# pydicom has no public listing of the UIDs it knows; this generated module
# (PS3.6 Table A-1) has kept its name and shape since pydicom 1.x, and the
# tests pin what the defaults must and must not contain.
from pydicom._uid_dict import UID_dictionary
from pydicom.uid import UID

from .dicomheader import DicomHeader, capture_header
from .errors import shorten
from .outcomes import Failed, FailureReason, InstanceRef
from .uids import is_valid_uid

# PS3.4 Annex B lists the Storage SOP Classes; pydicom's dictionary has no
# "service" column, so they are the SOP Classes named "... Storage ...", minus
# those that carry the word but are not stored through the Storage Service
# Class: Storage Commitment Push/Pull (PS3.4 Annex J), Storage Management
# (not in pydicom 3.0 as a SOP Class, excluded should a later one add it), and
# Media Storage Directory Storage, the DICOMDIR (PS3.3 Annex F), which only
# exists in media file-sets and has no Study or Series to be filed under.
_STORAGE_WORD = re.compile(r"\bStorage\b")
_NOT_STORAGE_NAMES = (
    "Storage Commitment",
    "Storage Management",
    "Media Storage Directory",
)


@dataclass(frozen=True, slots=True)
class ValidationPolicy:
    """What the server accepts: UIDs compared exactly, as in the File Meta."""

    allowed_sop_classes: frozenset[str]
    allowed_transfer_syntaxes: frozenset[str]
    # --accept-leading-zero-uids: the one switch of uids.is_valid_uid.
    accept_leading_zero_uids: bool = False


def default_sop_classes() -> frozenset[str]:
    """Every Storage SOP Class UID pydicom knows (PS3.4 Annex B), retired ones included.

    Retired classes stay in because archives being migrated still hold them
    (for example the retired Ultrasound Image Storage).
    """
    found: set[str] = set()
    for key in UID_dictionary:
        uid = UID(key)
        name = uid.name
        if (
            uid.type == "SOP Class"
            and _STORAGE_WORD.search(name)
            and not any(word in name for word in _NOT_STORAGE_NAMES)
        ):
            found.add(str(uid))
    return frozenset(found)


def default_transfer_syntaxes() -> frozenset[str]:
    """Every transfer syntax UID pydicom knows, retired ones included.

    The issue sets the default: "every storage SOP class and transfer syntax
    pydicom knows".  PS3.5 would narrow it: the JPIP Referenced syntaxes
    (§10.8) "shall not be used for media storage defined by PS3.10", since
    their pixel data is only a URL whose persistence is undefined, and the
    retired RFC 2557 MIME Encapsulation and XML Encoding are packagings rather
    than a data set encoding that can follow a File Meta header.  The issue's
    default wins; an operator who wants PS3.5's view, or wants to refuse
    Implicit VR Little Endian and Explicit VR Big Endian (PS3.18 §8.7.3),
    narrows the list with ``--transfer-syntax``.
    """
    return frozenset(str(uid) for uid in map(UID, UID_dictionary) if uid.type == "Transfer Syntax")


DEFAULT_POLICY = ValidationPolicy(
    allowed_sop_classes=default_sop_classes(),
    allowed_transfer_syntaxes=default_transfer_syntaxes(),
)


def validate_header(
    captured: DicomHeader | Failed, policy: ValidationPolicy = DEFAULT_POLICY
) -> InstanceRef | Failed:
    """Judge a part by the header captured from it; return its UIDs or why it fails.

    It does not check that the part is complete (a part cut after its UIDs
    reads like a whole one; the multipart parser decides completeness).  The
    first rule that matches wins:

    - not a readable PS3.10 file (``captured`` is the capture's ``Failed``:
      empty, no preamble + "DICM", unreadable File Meta or data set, no
      Transfer Syntax UID (0002,0010), a corrupt deflate stream, or more
      bytes, elements or nesting than ``dicomheader``'s limits before
      (0020,000E)): CANNOT_UNDERSTAND (0xC000), without UIDs;
    - SOP Class, SOP Instance, Study or Series Instance UID missing, empty or
      not a valid UID (``uids.is_valid_uid``), or SOP Class/Instance UID differing from
      the Media Storage SOP Class/Instance UID (0002,0002)/(0002,0003) when
      those are present: DATA_SET_DOES_NOT_MATCH_SOP_CLASS (0xA900), carrying
      whichever of the SOP Class/Instance UIDs are valid;
    - transfer syntax not in ``policy``: TRANSFER_SYNTAX_NOT_SUPPORTED (0xC122);
    - SOP Class not in ``policy``: SOP_CLASS_NOT_SUPPORTED (0x0122);
    - otherwise the ``InstanceRef``.

    The File Meta transfer syntax is the one judged, whatever the part's
    ``transfer-syntax`` media type parameter says (PS3.18 §8.7.9).
    """
    if isinstance(captured, Failed):
        return captured
    return _judge(captured, policy)


def validate_bytes(
    data: bytes | memoryview, policy: ValidationPolicy = DEFAULT_POLICY
) -> InstanceRef | Failed:
    """``validate_header`` of a whole part held in memory (tests and tools)."""
    return validate_header(capture_header(data), policy)


def _judge(header: DicomHeader, policy: ValidationPolicy) -> InstanceRef | Failed:
    """Apply the UID, consistency and policy rules to a readable header."""
    named = (
        ("SOP Class UID (0008,0016)", header.sop_class),
        ("SOP Instance UID (0008,0018)", header.sop_instance),
        ("Study Instance UID (0020,000D)", header.study),
        ("Series Instance UID (0020,000E)", header.series),
    )
    lenient = policy.accept_leading_zero_uids

    def valid(value: str | None) -> str | None:
        return value if value and is_valid_uid(value, accept_leading_zeros=lenient) else None

    # Each UID checked once: (name, value as captured, value if valid else None).
    checked = [(name, value, valid(value)) for name, value in named]
    problems = [
        f"{name} is missing" if not value else f"{name} is not a valid UID: {_quoted(value)}"
        for name, value, ok in checked
        if ok is None
    ]
    sop_class, sop_instance, study, series = (ok for _, _, ok in checked)
    # problems is empty exactly when all four are valid; the other tests only
    # tell the type checker so.
    if problems or sop_class is None or sop_instance is None or not study or not series:
        return Failed(
            FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "; ".join(problems),
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
        )

    # PS3.10 §7.1: the Media Storage UIDs repeat the data set's own; a part
    # whose two disagree cannot be trusted to be the instance it claims.
    mismatch = None
    if header.media_storage_sop_class and header.media_storage_sop_class != sop_class:
        mismatch = (
            f"SOP Class UID (0008,0016) {sop_class} differs from Media Storage SOP Class"
            f" UID (0002,0002) {_quoted(header.media_storage_sop_class)}"
        )
    elif header.media_storage_sop_instance and header.media_storage_sop_instance != sop_instance:
        mismatch = (
            f"SOP Instance UID (0008,0018) {sop_instance} differs from Media Storage SOP"
            f" Instance UID (0002,0003) {_quoted(header.media_storage_sop_instance)}"
        )
    if mismatch is not None:
        return Failed(
            FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            mismatch,
            sop_class,
            sop_instance,
        )

    if header.transfer_syntax not in policy.allowed_transfer_syntaxes:
        return Failed(
            FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED,
            f"transfer syntax {_describe_uid(header.transfer_syntax)} is not supported",
            sop_class,
            sop_instance,
        )
    if sop_class not in policy.allowed_sop_classes:
        return Failed(
            FailureReason.SOP_CLASS_NOT_SUPPORTED,
            f"SOP Class {_describe_uid(sop_class)} is not supported",
            sop_class,
            sop_instance,
        )
    return InstanceRef(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=study,
        series_instance_uid=series,
    )


def _describe_uid(value: str) -> str:
    """``value`` with pydicom's name for it, when it has one."""
    if not is_valid_uid(value):
        return _quoted(value)
    name = UID(value).name
    return value if name == value else f"{value} ({name})"


def _quoted(value: str) -> str:
    """``value`` quoted and cut short enough for a one-line detail."""
    return repr(shorten(value))
