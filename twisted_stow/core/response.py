"""Outcomes → HTTP status and Store Instances Response Module, as JSON or XML.

Pure: the standard library and pydicom's data dictionary only.  The builder
turns per-instance outcomes into one DICOM JSON model dict (PS3.18 Annex F);
both renderers walk that same dict, so the DICOM JSON and the PS3.19 Native
DICOM Model bodies cannot drift apart.  Errors about the request as a whole
are rendered as RFC 7807 problem documents instead.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from pydicom.datadict import keyword_for_tag

from .errors import NoParts, StowError
from .mediatype import DICOM_JSON, DICOM_XML
from .outcomes import Failed, Outcome, Stored

PROBLEM_JSON: Final = "application/problem+json"

JsonModel = dict[str, Any]
"""A DICOM JSON Model object (PS3.18 F.2): tag → {"vr": ..., "Value": [...]}."""

# Store Instances Response Module attributes (PS3.18 Annex I, Table I.1-1).
_RETRIEVE_URL: Final = "00081190"
_FAILED_SOP_SEQUENCE: Final = "00081198"
_REFERENCED_SOP_SEQUENCE: Final = "00081199"
_OTHER_FAILURES_SEQUENCE: Final = "0008119A"
_REFERENCED_SOP_CLASS_UID: Final = "00081150"
_REFERENCED_SOP_INSTANCE_UID: Final = "00081155"
_WARNING_REASON: Final = "00081196"
_FAILURE_REASON: Final = "00081197"

# PS3.18 Table 10.5.3-1, keyed by (at least one instance stored, at least one
# failure or warning).  (False, False) cannot occur: with no instance stored,
# every outcome is a failure.  A request that is broken as a whole (400) never
# gets here: it is a StowError.
_STATUS_BY_SHAPE: Final[Mapping[tuple[bool, bool], int]] = {
    (True, False): 200,  # "successfully stored all Instances"
    (True, True): 202,  # "stored some ... but warnings or failures exist for others"
    (False, True): 409,  # "unable to store any Instances ... (or) a mixture of reasons"
}

# RFC 7234 §5.5: warn-code 299 is "Miscellaneous Persistent Warning"; the
# warn-agent may be a pseudonym.  PS3.18 10.5.3 recommends a Warning header
# carrying DICOM status codes; dcm4chee and Microsoft send `299 <agent> "..."`.
_WARN_CODE: Final = 299
_WARN_AGENT: Final = "twisted-stow"

_TAG_RE: Final = re.compile(r"[0-9A-F]{8}")
# F.2.2 allows "Value", "BulkDataURI" or "InlineBinary" beside "vr"; the
# Store Instances Response only ever holds values (UI, UR, US and SQ).
_VALUE_KINDS: Final = frozenset({"Value"})
# Characters XML 1.0 (§2.2 Char) cannot carry at all, not even as references.
_XML_INVALID_RE: Final = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# RFC 9110 §5.6.4 quoted-string: only HTAB, SP and VCHAR are representable in
# our ASCII header; `"` and `\` need a quoted-pair.
_NOT_QDTEXT_RE: Final = re.compile(r"[^\t\x20-\x7e]")
_NEEDS_QUOTED_PAIR_RE: Final = re.compile(r'["\\]')

_NATIVE_DICOM_NS: Final = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
_XML_DECLARATION: Final = '<?xml version="1.0" encoding="utf-8"?>'


@dataclass(frozen=True, slots=True)
class StoreResponse:
    """What the route sends back for a STOW-RS request that reached the instances.

    ``model`` is the Store Instances Response Module as a DICOM JSON model
    dict; render it with ``render``.  ``warning`` is the text for a
    ``Warning`` header (wrap it with ``warning_header_value``), or None when
    every instance was stored without a warning.
    """

    status: int
    model: JsonModel
    warning: str | None


def response_status(outcomes: Sequence[Outcome]) -> int:
    """Return the HTTP status for these outcomes (PS3.18 Table 10.5.3-1).

    Raises ``NoParts`` for an empty sequence: a request needs one or more
    instances (PS3.18 10.5.1.4), and 10.5.3.3 forbids a success with no module.
    """
    if not outcomes:
        raise NoParts("the request body holds no instances")
    any_stored = any(isinstance(outcome, Stored) for outcome in outcomes)
    any_problem = any(
        isinstance(outcome, Failed) or outcome.warning is not None for outcome in outcomes
    )
    return _STATUS_BY_SHAPE[(any_stored, any_problem)]


def build_store_response(outcomes: Sequence[Outcome], *, base_url: str) -> StoreResponse:
    """Build the status, Store Instances Response Module and warning text.

    ``base_url`` is the externally visible DICOMweb root (no trailing slash
    needed), e.g. ``https://pacs.example/dicomweb``; RetrieveURLs are built
    from it.  Sequence items follow the order of ``outcomes``.  Raises
    ``NoParts`` when ``outcomes`` is empty.
    """
    status = response_status(outcomes)
    root = base_url.rstrip("/")
    referenced: list[JsonModel] = []
    failed: list[JsonModel] = []
    other: list[JsonModel] = []
    studies: set[str] = set()
    for outcome in outcomes:
        if isinstance(outcome, Stored):
            referenced.append(_referenced_item(outcome, root))
            studies.add(outcome.instance.study_instance_uid)
        elif outcome.sop_instance_uid:
            failed.append(_failed_item(outcome, outcome.sop_instance_uid))
        else:
            # Annex I: OtherFailuresSequence holds reasons "not associated with
            # a specific SOP Instance" (unparseable part, broken framing).
            other.append({_FAILURE_REASON: _us(int(outcome.reason))})

    # Keys are inserted in ascending tag order; the renderers sort anyway.
    model: JsonModel = {}
    if len(studies) == 1:
        # RetrieveURL is type 2 and names one study.  With several studies
        # stored there is no single URL, so it is left out (PS3.18 Annex I
        # allows an empty value; dcm4chee does the same) rather than pointing
        # at an arbitrary one.
        (study,) = studies
        model[_RETRIEVE_URL] = _ur(_study_url(root, study))
    # The three sequences are type 1C: present only when they have items.
    if failed:
        model[_FAILED_SOP_SEQUENCE] = _sq(failed)
    if referenced:
        model[_REFERENCED_SOP_SEQUENCE] = _sq(referenced)
    if other:
        model[_OTHER_FAILURES_SEQUENCE] = _sq(other)
    return StoreResponse(status=status, model=model, warning=_warning_text(outcomes))


def warning_header_value(text: str) -> str:
    """Return a full ``Warning`` header value: ``299 twisted-stow "<text>"``.

    The text becomes an RFC 9110 quoted-string: ``"`` and ``\\`` are escaped
    with a backslash, and characters a quoted-string cannot carry in an ASCII
    header (controls, non-ASCII) become ``?``.  RFC 9111 obsoletes the
    header, but PS3.18 10.5.3 recommends it and clients log it.
    """
    safe = _NOT_QDTEXT_RE.sub("?", text)
    escaped = _NEEDS_QUOTED_PAIR_RE.sub(lambda match: "\\" + match.group(0), safe)
    return f'{_WARN_CODE} {_WARN_AGENT} "{escaped}"'


def render_json(model: Mapping[str, Any]) -> bytes:
    """Render a DICOM JSON model as compact UTF-8 ``application/dicom+json``.

    Attribute keys are sorted at every nesting level (PS3.18 F.2.2).  Raises
    ``ValueError`` for a key that is not eight uppercase hex digits, an
    attribute object without ``vr`` or with an unknown member, or a NaN.
    """
    return json.dumps(
        _json_dataset(model), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


def render_xml(model: Mapping[str, Any]) -> bytes:
    """Render the same DICOM JSON model as PS3.19 Native DICOM Model XML (UTF-8).

    ``DicomAttribute`` elements follow ascending tag order, values are
    numbered from 1 (``Value``, ``PersonName``), sequence items are
    ``Item`` elements numbered from 1.  Characters XML 1.0 cannot carry
    become U+FFFD.  Raises ``ValueError`` like ``render_json``.
    """
    root = ET.Element("NativeDicomModel", {"xmlns": _NATIVE_DICOM_NS})
    _xml_dataset(root, model)
    ET.indent(root, space="  ")
    return f"{_XML_DECLARATION}\n{ET.tostring(root, encoding='unicode')}".encode()


_RENDERERS: Final[Mapping[str, Callable[[Mapping[str, Any]], bytes]]] = {
    DICOM_JSON: render_json,
    DICOM_XML: render_xml,
}


def render(model: Mapping[str, Any], media_type: str) -> bytes:
    """Render ``model`` as ``DICOM_JSON`` or ``DICOM_XML`` (as chosen by negotiation).

    Raises ``ValueError`` for any other media type: negotiation never picks one.
    """
    try:
        renderer = _RENDERERS[media_type]
    except KeyError:
        raise ValueError(f"no renderer for media type {media_type!r}") from None
    return renderer(model)


def problem_document(
    status: int,
    title: str,
    detail: str,
    instance: str | None = None,
    extensions: Mapping[str, object] | None = None,
) -> bytes:
    """Return an RFC 7807 ``application/problem+json`` body (compact UTF-8).

    ``type`` is ``about:blank``: the HTTP status says what kind of problem it
    is, ``detail`` says what happened to this request.  ``instance`` (a URI
    reference for this occurrence) is included only when given, and so are
    ``extensions`` (RFC 9457 §3.2 extension members; they never replace a
    standard member).
    """
    document: dict[str, object] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        document["instance"] = instance
    for name, value in (extensions or {}).items():
        document.setdefault(name, value)
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def problem_json(error: StowError, *, instance: str | None = None) -> bytes:
    """Return the RFC 7807 body for a request-level ``StowError``."""
    return problem_document(error.status, error.title, error.detail, instance, error.extensions)


# --- model building --------------------------------------------------------


def _referenced_item(outcome: Stored, root: str) -> JsonModel:
    """ReferencedSOPSequence item: SOP Instance Reference Macro plus URL (Annex I)."""
    instance = outcome.instance
    item: JsonModel = {
        _REFERENCED_SOP_CLASS_UID: _ui(instance.sop_class_uid),
        _REFERENCED_SOP_INSTANCE_UID: _ui(instance.sop_instance_uid),
        _RETRIEVE_URL: _ur(
            f"{_study_url(root, instance.study_instance_uid)}"
            f"/series/{_segment(instance.series_instance_uid)}"
            f"/instances/{_segment(instance.sop_instance_uid)}"
        ),
    }
    if outcome.warning is not None:
        # Type 1C: "Required if there was a warning for this SOP Instance".
        item[_WARNING_REASON] = _us(int(outcome.warning))
    return item


def _failed_item(outcome: Failed, sop_instance_uid: str) -> JsonModel:
    """FailedSOPSequence item: the UIDs that are known plus FailureReason (Annex I)."""
    item: JsonModel = {}
    # ReferencedSOPClassUID is type 1 in the module, but a part whose SOP
    # Class could not be read has none; leaving it out is more honest than
    # inventing one (dcm4chee invents a class UID, Microsoft omits it).
    if outcome.sop_class_uid:
        item[_REFERENCED_SOP_CLASS_UID] = _ui(outcome.sop_class_uid)
    item[_REFERENCED_SOP_INSTANCE_UID] = _ui(sop_instance_uid)
    item[_FAILURE_REASON] = _us(int(outcome.reason))
    return item


def _study_url(root: str, study_uid: str) -> str:
    """Studies Retrieve URL (PS3.18 10.4) for one study."""
    return f"{root}/studies/{_segment(study_uid)}"


def _segment(uid: str) -> str:
    """Percent-encode a UID as one path segment (a no-op for a valid UID)."""
    return quote(uid, safe="")


def _ui(value: str) -> JsonModel:
    return {"vr": "UI", "Value": [value]}


def _ur(value: str) -> JsonModel:
    return {"vr": "UR", "Value": [value]}


def _us(value: int) -> JsonModel:
    # Table F.2.3-1: US is a JSON Number, so the reason codes are decimal.
    return {"vr": "US", "Value": [value]}


def _sq(items: list[JsonModel]) -> JsonModel:
    return {"vr": "SQ", "Value": items}


def _warning_text(outcomes: Sequence[Outcome]) -> str | None:
    """Summarise failures and warnings with their codes in hex; None if there are none.

    PS3.18 10.5.3 recommends that the Warning text carry the DICOM status
    code, which is conventionally written as four hex digits (A900, C000).
    """
    failures = Counter(int(o.reason) for o in outcomes if isinstance(o, Failed))
    warnings = Counter(
        int(o.warning) for o in outcomes if isinstance(o, Stored) and o.warning is not None
    )
    total = len(outcomes)
    clauses: list[str] = []
    if failures:
        clauses.append(
            f"{failures.total()} of {total} instances not stored: {_code_counts(failures)}"
        )
    if warnings:
        clauses.append(
            f"{warnings.total()} of {total} instances stored with warnings: "
            f"{_code_counts(warnings)}"
        )
    unidentified = failed_parts_without_uids(outcomes)
    if unidentified:
        # A header line stays short (clients and proxies cap them): the first
        # few parts, then how many more; the body's OtherFailuresSequence has all.
        shown = unidentified[:WARNING_PARTS_SHOWN]
        parts = ", ".join(f"{item['part']} ({item['failureReason']})" for item in shown)
        more = len(unidentified) - len(shown)
        clauses.append(
            f"parts failed without UIDs: {parts}" + (f" and {more} more" if more else "")
        )
    return "; ".join(clauses) or None


# Parts named in the Warning header at most.
WARNING_PARTS_SHOWN: Final = 10

# RFC 9457 extension member of a problem document: the parts that failed
# before their UIDs were known, which nothing else identifies to the client.
FAILED_PARTS_EXTENSION: Final = "failedPartsWithoutUIDs"


# The extension member of a refusal mid-body (413, 408): the instances
# stored whole before it, so the client knows what to send again.
STORED_EXTENSION: Final = "storedSOPInstanceUIDs"


def name_kept_parts(error: StowError, outcomes: Sequence[Outcome]) -> None:
    """Name in ``error``'s problem document what a refusal mid-body kept and
    the parts that failed without UIDs."""
    error.extensions[STORED_EXTENSION] = [
        o.instance.sop_instance_uid for o in outcomes if isinstance(o, Stored)
    ]
    name_failed_parts(error, outcomes)


def name_failed_parts(error: StowError, outcomes: Sequence[Outcome]) -> None:
    """Add the first parts that failed without UIDs, and their count, to ``error``'s
    problem document (kept short: the answer to a body of 10,000 empty parts must
    still be small enough to reach a client that is still sending)."""
    unidentified = failed_parts_without_uids(outcomes)
    if unidentified:
        error.extensions[FAILED_PARTS_EXTENSION] = unidentified[:WARNING_PARTS_SHOWN]
        error.extensions[FAILED_PARTS_EXTENSION + "Count"] = len(unidentified)


def failed_parts_without_uids(outcomes: Sequence[Outcome]) -> list[dict[str, object]]:
    """``{"part": n, "failureReason": "C000"}`` per part that failed without a SOP Instance UID."""
    return [
        {"part": o.part, "failureReason": f"{int(o.reason):04X}"}
        for o in outcomes
        if isinstance(o, Failed) and not o.sop_instance_uid and o.part is not None
    ]


def _code_counts(codes: Counter[int]) -> str:
    return ", ".join(f"{code:04X} ({count})" for code, count in sorted(codes.items()))


# --- rendering -------------------------------------------------------------


def _attributes(
    dataset: Mapping[str, Any],
) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """Yield (tag, vr, attribute object) in ascending tag order, checking the shape.

    F.2.2: keys are "eight character uppercase hexadecimal" tags, so string
    order is tag order; each attribute object has "vr" and at most a Value.
    """
    for tag in sorted(dataset):
        if not _TAG_RE.fullmatch(tag):
            raise ValueError(f"attribute key {tag!r} is not eight uppercase hex digits")
        attribute = dataset[tag]
        if "vr" not in attribute:
            raise ValueError(f"attribute {tag} has no vr")
        vr = attribute["vr"]
        kinds = attribute.keys() - {"vr"}
        if not kinds <= _VALUE_KINDS:
            raise ValueError(f"attribute {tag} has members {sorted(kinds)}")
        yield tag, vr, attribute


def _json_dataset(dataset: Mapping[str, Any]) -> JsonModel:
    """Copy a dataset with its keys in F.2.2 order, nested items included."""
    ordered: JsonModel = {}
    for tag, vr, attribute in _attributes(dataset):
        # "vr" first, as in every Annex F example; F.2.2 orders the tags.
        out: JsonModel = {"vr": vr}
        if "Value" in attribute:
            values = attribute["Value"]
            out["Value"] = [_json_dataset(item) for item in values] if vr == "SQ" else list(values)
        ordered[tag] = out
    return ordered


def _xml_dataset(parent: ET.Element, dataset: Mapping[str, Any]) -> None:
    """Append one PS3.19 ``DicomAttribute`` per attribute of ``dataset``."""
    for tag, vr, attribute in _attributes(dataset):
        element = ET.SubElement(parent, "DicomAttribute", {"tag": tag, "vr": vr})
        keyword = keyword_for_tag(int(tag, 16))
        if keyword:
            # PS3.19 Annex A: keyword is optional; private and unknown tags
            # have none.
            element.set("keyword", keyword)
        values = attribute.get("Value", [])
        for number, value in enumerate(values, start=1):
            if vr == "SQ":
                item = ET.SubElement(element, "Item", {"number": str(number)})
                _xml_dataset(item, value)
            else:
                child = ET.SubElement(element, "Value", {"number": str(number)})
                # A JSON null is an empty value (F.2.5): an empty Value element.
                if value is not None:
                    child.text = _xml_scalar(value)


def _xml_scalar(value: object) -> str:
    """Text of one ``Value`` element: strings as-is, integers (US) in decimal."""
    if isinstance(value, str):
        return _xml_safe(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(int(value))
    raise ValueError(f"cannot render {value!r} as a PS3.19 Value")


def _xml_safe(text: str) -> str:
    """Replace the characters XML 1.0 cannot represent with U+FFFD."""
    return _XML_INVALID_RE.sub("\ufffd", text)
