"""A server's answer to one request, as one outcome per instance sent.

Pure.  The Store Instances Response (PS3.18 Annex I, DICOM JSON F.2) names
stored instances in ReferencedSOPSequence (0008,1199) and failed ones in
FailedSOPSequence (0008,1198), each by Referenced SOP Instance UID
(0008,1155).  Servers differ in the HTTP status around it (Orthanc answers
409 even when some instances were stored), so the body, not the status,
decides per instance.  An instance the answer does not mention was not
acknowledged: it is sent again, which is safe because a server answers an
instance already stored with the same bytes as stored.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .retry import is_transient_failure

_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_WARNING_REASON = "00081196"
_FAILURE_REASON = "00081197"

# PS3.18 Table I.2-1/I.2-2, and the additional codes of the servers we know
# (docs/UPLOAD.md lists them); ranges are matched by their high byte.
_REASON_TEXTS: Mapping[int, str] = {
    0x0110: "processing failure",
    0x0111: "duplicate SOP Instance (stored with other bytes)",
    0x0122: "SOP Class not supported",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP Class (or the study in the URL)",
    0xB000: "coercion of data elements",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP Class",
    0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
}
_RANGE_TEXTS: Mapping[int, str] = {
    0xA7: "out of resources",
    0xA9: "data set does not match SOP Class",
    0xC0: "cannot understand",
}
# Statuses from here on are errors (RFC 9110 §15.5): what they leave unmentioned failed.
_FIRST_ERROR_STATUS = 400
# The text of an instance the answer does not mention at all.
NOT_IN_ANSWER = "not in the server's answer"


def reason_text(code: int | None) -> str:
    """A short text for a FailureReason or WarningReason code."""
    if code is None:
        return ""
    return _REASON_TEXTS.get(code) or _RANGE_TEXTS.get(code >> 8, "unknown reason")


class Verdict(enum.Enum):
    """What becomes of one instance after an answer."""

    STORED = "stored"
    RETRY = "retry"  # transient: send again in a later request
    FAILED = "failed"  # permanent: report it


@dataclass(frozen=True, slots=True)
class InstanceOutcome:
    """One instance's outcome in one answer; ``reason`` is its Failure/WarningReason."""

    sop_instance_uid: str
    verdict: Verdict
    reason: int | None = None
    text: str = ""


class UnreadableAnswer(ValueError):
    """The body is not a Store Instances Response in DICOM JSON."""


def parse_store_response(body: bytes) -> tuple[dict[str, int | None], dict[str, int | None]]:
    """``(stored, failed)``: SOP Instance UID → WarningReason / FailureReason (or None).

    Raises ``UnreadableAnswer`` when ``body`` is not a JSON object (an empty
    body included).  A dataset with neither sequence is an answer that
    acknowledges nothing.
    """
    try:
        model = json.loads(body)
    except ValueError as error:
        raise UnreadableAnswer(f"not JSON: {error}") from None
    if isinstance(model, list) and len(model) == 1:
        model = model[0]  # some servers wrap the one dataset in an array
    if not isinstance(model, dict):
        raise UnreadableAnswer("not a DICOM JSON dataset")
    stored = _items(model, _REFERENCED_SOP_SEQUENCE, _WARNING_REASON)
    failed = _items(model, _FAILED_SOP_SEQUENCE, _FAILURE_REASON)
    return stored, failed


def _items(model: dict[str, Any], sequence: str, reason_tag: str) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    for item in _values(model.get(sequence)):
        if not isinstance(item, dict):
            continue
        uids = _values(item.get(_REFERENCED_SOP_INSTANCE_UID))
        reasons = [r for r in _values(item.get(reason_tag)) if isinstance(r, int)]
        for uid in uids:
            if isinstance(uid, str):
                found[uid.rstrip("\x00 ")] = reasons[0] if reasons else None
    return found


def _values(element: object) -> list[Any]:
    if isinstance(element, dict):
        values = element.get("Value", [])
        return values if isinstance(values, list) else []
    return []


def judge(sent: Sequence[str], body: bytes, status: int = 200) -> list[InstanceOutcome]:
    """The outcome of each SOP Instance UID in ``sent``, in order, from an answer body.

    Listed as stored → STORED (a warning is kept as its reason).  Listed as
    failed → RETRY for a transient FailureReason, FAILED otherwise.  Not
    listed → RETRY when ``status`` is a success (the server stored something
    and said nothing of these), FAILED when it is an error (Orthanc answers
    400 with empty sequences to a file it cannot parse).  Raises
    ``UnreadableAnswer`` as ``parse_store_response``.  A UID listed both ways
    counts as stored (the server has it).
    """
    stored, failed = parse_store_response(body)
    outcomes = []
    for uid in sent:
        if uid in stored:
            warning = stored[uid]
            outcomes.append(InstanceOutcome(uid, Verdict.STORED, warning, reason_text(warning)))
        elif uid in failed:
            reason = failed[uid]
            verdict = Verdict.RETRY if is_transient_failure(reason) else Verdict.FAILED
            outcomes.append(InstanceOutcome(uid, verdict, reason, reason_text(reason)))
        else:
            verdict = Verdict.RETRY if status < _FIRST_ERROR_STATUS else Verdict.FAILED
            outcomes.append(InstanceOutcome(uid, verdict, None, NOT_IN_ANSWER))
    return outcomes
