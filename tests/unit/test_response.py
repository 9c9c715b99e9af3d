"""Tests for response.py: status table, module shape, JSON/XML renderers, problems."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.datadict import keyword_for_tag

from twisted_stow.core.errors import (
    BodyTooLarge,
    InvalidStudyUID,
    NoParts,
    ServiceUnavailable,
)
from twisted_stow.core.outcomes import (
    Failed,
    FailureReason,
    InstanceRef,
    Outcome,
    Stored,
    WarningReason,
)
from twisted_stow.core.response import (
    DICOM_JSON,
    DICOM_XML,
    PROBLEM_JSON,
    StoreResponse,
    build_store_response,
    failed_parts_without_uids,
    problem_document,
    problem_json,
    render,
    render_json,
    render_xml,
    response_status,
    warning_header_value,
)

GOLDEN = Path(__file__).parent / "golden"
BASE_URL = "https://pacs.example/dicomweb"
CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2.3"
SERIES = "1.2.3.4"

NS = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"
XML_DECLARATION = b'<?xml version="1.0" encoding="utf-8"?>\n'
# PS3.5 Table 6.2-1: every Value Representation a DicomAttribute may name.
PS35_VRS = frozenset(
    {
        "AE",
        "AS",
        "AT",
        "CS",
        "DA",
        "DS",
        "DT",
        "FD",
        "FL",
        "IS",
        "LO",
        "LT",
        "OB",
        "OD",
        "OF",
        "OL",
        "OV",
        "OW",
        "PN",
        "SH",
        "SL",
        "SQ",
        "SS",
        "ST",
        "SV",
        "TM",
        "UC",
        "UI",
        "UL",
        "UN",
        "UR",
        "US",
        "UT",
        "UV",
    }
)
INTEGER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})


def _stored(
    sop: str,
    *,
    study: str = STUDY,
    warning: WarningReason | None = None,
) -> Stored:
    return Stored(InstanceRef(CT, sop, study, SERIES), warning=warning)


def _mixed_outcomes() -> list[Outcome]:
    """The golden case: every kind of item the module can hold, in one request."""
    return [
        _stored("1.2.3.4.5.1"),
        _stored("1.2.3.4.5.2", warning=WarningReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
        Failed(
            FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "Study Instance UID does not match the URL",
            sop_class_uid=CT,
            sop_instance_uid="1.2.3.4.5.3",
        ),
        Failed(
            FailureReason.SOP_CLASS_NOT_SUPPORTED,
            "SOP Class not in the allow-list",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.481.99",
            sop_instance_uid="1.2.3.4.5.4",
        ),
        Failed(
            FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED,
            "SOP Class UID unreadable",
            sop_instance_uid="1.2.3.4.5.5",
        ),
        Failed(FailureReason.CANNOT_UNDERSTAND, "not a PS3.10 file"),
    ]


# --- PS3.19 structure checker and XML → JSON model reader -------------------


def check_ps319(body: bytes) -> None:
    """Assert ``body`` has the structure of a PS3.19 Native DICOM Model document."""
    assert body.startswith(XML_DECLARATION)
    root = ET.fromstring(body)
    assert root.tag == f"{NS}NativeDicomModel"
    assert not root.attrib
    _check_dataset(root)


def _check_dataset(parent: ET.Element) -> None:
    tags = []
    for attribute in parent:
        assert attribute.tag == f"{NS}DicomAttribute"
        assert set(attribute.attrib) <= {"tag", "vr", "keyword"}
        tag = attribute.attrib["tag"]
        assert re.fullmatch(r"[0-9A-F]{8}", tag)
        tags.append(tag)
        vr = attribute.attrib["vr"]
        assert vr in PS35_VRS
        keyword = keyword_for_tag(int(tag, 16))
        if keyword:
            assert attribute.attrib.get("keyword") == keyword
        else:
            assert "keyword" not in attribute.attrib
        assert not (attribute.text or "").strip()
        children = list(attribute)
        if vr == "SQ":
            _check_numbered(children, "Item")
            for item in children:
                _check_dataset(item)
        else:
            _check_numbered(children, "Value")
            assert all(len(value) == 0 for value in children)
    assert tags == sorted(tags)
    assert len(tags) == len(set(tags))


def _check_numbered(children: list[ET.Element], name: str) -> None:
    assert all(child.tag == f"{NS}{name}" for child in children)
    numbers = [child.attrib["number"] for child in children]
    assert numbers == [str(n) for n in range(1, len(children) + 1)]


def model_from_xml(body: bytes) -> dict[str, Any]:
    """Read a PS3.19 document back into a DICOM JSON model dict (for comparison)."""
    return _dataset_from_xml(ET.fromstring(body))


def _dataset_from_xml(parent: ET.Element) -> dict[str, Any]:
    dataset: dict[str, Any] = {}
    for attribute in parent:
        vr = attribute.attrib["vr"]
        entry: dict[str, Any] = {"vr": vr}
        children = list(attribute)
        if vr == "SQ":
            values: list[Any] = [_dataset_from_xml(item) for item in children]
        else:
            values = [_scalar_from_xml(vr, value.text) for value in children]
        if values:
            entry["Value"] = values
        dataset[attribute.attrib["tag"]] = entry
    return dataset


def _scalar_from_xml(vr: str, text: str | None) -> Any:
    if text is None:
        return None
    if vr in INTEGER_VRS:
        return int(text)
    return text


# --- golden mixed result ----------------------------------------------------


def test_mixed_result_is_202() -> None:
    """A mix of stored, warned and failed instances answers 202 with a warning."""
    response = build_store_response(_mixed_outcomes(), base_url=BASE_URL)
    assert response.status == 202
    assert response.warning == (
        "4 of 6 instances not stored: 0122 (1), A900 (1), C000 (1), C122 (1); "
        "1 of 6 instances stored with warnings: B007 (1)"
    )


def test_mixed_json_matches_golden() -> None:
    """The DICOM JSON body of the mixed result equals the hand-checked golden file."""
    response = build_store_response(_mixed_outcomes(), base_url=BASE_URL)
    assert render_json(response.model) == (GOLDEN / "mixed_response.json").read_bytes()


def test_mixed_xml_matches_golden() -> None:
    """The PS3.19 XML body of the mixed result equals the hand-checked golden file."""
    response = build_store_response(_mixed_outcomes(), base_url=BASE_URL)
    assert render_xml(response.model) == (GOLDEN / "mixed_response.xml").read_bytes()


def test_golden_files_pass_the_ps319_checker_and_agree() -> None:
    """The golden XML is valid PS3.19 and carries exactly the golden JSON's content."""
    xml_body = (GOLDEN / "mixed_response.xml").read_bytes()
    check_ps319(xml_body)
    json_model = json.loads((GOLDEN / "mixed_response.json").read_bytes())
    assert model_from_xml(xml_body) == json_model


def test_mixed_json_and_xml_carry_the_same_model() -> None:
    """Both renderings parse back to the builder's model, tag for tag and value."""
    model = build_store_response(_mixed_outcomes(), base_url=BASE_URL).model
    assert json.loads(render_json(model)) == model
    assert model_from_xml(render_xml(model)) == model


# --- status table -----------------------------------------------------------


def test_all_stored_without_warning_is_200() -> None:
    """Every instance stored cleanly answers 200 with no Warning text."""
    response = build_store_response(
        [_stored("1.2.3.4.5.1"), _stored("1.2.3.4.5.2")], base_url=BASE_URL
    )
    assert response.status == 200
    assert response.warning is None


def test_warning_only_is_202() -> None:
    """All stored but one with a WarningReason answers 202, not 200."""
    outcomes = [
        _stored("1.2.3.4.5.1"),
        _stored("1.2.3.4.5.2", warning=WarningReason.COERCION_OF_DATA_ELEMENTS),
    ]
    response = build_store_response(outcomes, base_url=BASE_URL)
    assert response.status == 202
    assert response.warning == "1 of 2 instances stored with warnings: B000 (1)"
    assert set(response.model) == {"00081190", "00081199"}


def test_stored_and_failed_is_202() -> None:
    """Some stored and some failed answers 202."""
    outcomes: list[Outcome] = [
        _stored("1.2.3.4.5.1"),
        Failed(FailureReason.PROCESSING_FAILURE, "disk error", CT, "1.2.3.4.5.2"),
    ]
    assert build_store_response(outcomes, base_url=BASE_URL).status == 202


def test_nothing_stored_is_409() -> None:
    """No instance stored answers 409 with the failures in the module."""
    outcomes = [
        Failed(FailureReason.SOP_CLASS_NOT_SUPPORTED, "no", CT, "1.2.3.4.5.1"),
        Failed(FailureReason.CANNOT_UNDERSTAND, "garbage"),
    ]
    response = build_store_response(outcomes, base_url=BASE_URL)
    assert response.status == 409
    assert set(response.model) == {"00081198", "0008119A"}
    assert response.warning == "2 of 2 instances not stored: 0122 (1), C000 (1)"


def test_no_outcomes_raises_no_parts() -> None:
    """An empty outcome list is NoParts (400), never a 200 without instances."""
    with pytest.raises(NoParts) as caught:
        build_store_response([], base_url=BASE_URL)
    assert caught.value.status == 400
    with pytest.raises(NoParts):
        response_status([])


# --- module content ---------------------------------------------------------


def test_top_level_retrieve_url_only_for_exactly_one_study() -> None:
    """The study RetrieveURL is set for one stored study and omitted for two or none."""
    one = build_store_response(
        [_stored("1.1"), _stored("1.2"), Failed(FailureReason.CANNOT_UNDERSTAND, "x")],
        base_url=BASE_URL,
    )
    assert one.model["00081190"] == {
        "vr": "UR",
        "Value": [f"{BASE_URL}/studies/{STUDY}"],
    }
    two = build_store_response(
        [_stored("1.1", study="1.2.3"), _stored("1.2", study="1.2.4")],
        base_url=BASE_URL,
    )
    assert "00081190" not in two.model
    none = build_store_response(
        [Failed(FailureReason.OUT_OF_RESOURCES, "full", CT, "1.1")], base_url=BASE_URL
    )
    assert "00081190" not in none.model


def test_empty_sequences_are_omitted() -> None:
    """Type 1C sequences without items are left out rather than sent empty."""
    response = build_store_response([_stored("1.2.3.4.5.1")], base_url=BASE_URL)
    assert list(response.model) == ["00081190", "00081199"]
    assert b"00081198" not in render_json(response.model)
    assert b"0008119A" not in render_xml(response.model)


def test_instance_retrieve_url_and_trailing_slash() -> None:
    """The instance RetrieveURL is the WADO-RS path under base_url, slash or not."""
    response = build_store_response([_stored("1.2.3.4.5.1")], base_url=BASE_URL + "/")
    (item,) = response.model["00081199"]["Value"]
    assert item["00081190"]["Value"] == [
        f"{BASE_URL}/studies/{STUDY}/series/{SERIES}/instances/1.2.3.4.5.1"
    ]
    assert "00081196" not in item


def test_failed_without_instance_uid_goes_to_other_failures() -> None:
    """A failure without an instance UID goes to OtherFailuresSequence, reason only."""
    outcomes = [
        Failed(FailureReason.CANNOT_UNDERSTAND, "x", sop_class_uid=CT),
        Failed(FailureReason.PROCESSING_FAILURE, "y", sop_class_uid=CT, sop_instance_uid=""),
    ]
    model = build_store_response(outcomes, base_url=BASE_URL).model
    assert model == {
        "0008119A": {
            "vr": "SQ",
            "Value": [
                {"00081197": {"vr": "US", "Value": [0xC000]}},
                {"00081197": {"vr": "US", "Value": [0x0110]}},
            ],
        }
    }


def test_us_values_are_decimal_numbers() -> None:
    """Reason codes are plain ints rendered as decimal numbers, never hex strings."""
    outcomes: list[Outcome] = [
        _stored("1.1", warning=WarningReason.ELEMENTS_DISCARDED),
        Failed(FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED, "x", CT, "1.2"),
    ]
    model = build_store_response(outcomes, base_url=BASE_URL).model
    warning = model["00081199"]["Value"][0]["00081196"]["Value"][0]
    failure = model["00081198"]["Value"][0]["00081197"]["Value"][0]
    assert (type(warning), warning, type(failure), failure) == (int, 45062, int, 49442)
    assert b'"00081196":{"vr":"US","Value":[45062]}' in render_json(model)
    assert b'"00081197":{"vr":"US","Value":[49442]}' in render_json(model)
    assert b'<Value number="1">49442</Value>' in render_xml(model)


# --- renderers --------------------------------------------------------------


def test_json_keys_sorted_with_0008119A_after_00081199() -> None:
    """render_json orders tags ascending at every level, and puts vr before Value."""
    model = {
        "0008119A": {"vr": "SQ", "Value": [{"00081197": {"Value": [272], "vr": "US"}}]},
        "00081199": {
            "vr": "SQ",
            "Value": [
                {
                    "00081190": {"vr": "UR", "Value": ["u"]},
                    "00081150": {"vr": "UI", "Value": ["1.2"]},
                }
            ],
        },
        "00081190": {"vr": "UR", "Value": ["s"]},
    }
    assert render_json(model) == (
        b'{"00081190":{"vr":"UR","Value":["s"]},'
        b'"00081199":{"vr":"SQ","Value":[{"00081150":{"vr":"UI","Value":["1.2"]},'
        b'"00081190":{"vr":"UR","Value":["u"]}}]},'
        b'"0008119A":{"vr":"SQ","Value":[{"00081197":{"vr":"US","Value":[272]}}]}}'
    )
    tags = [element.attrib["tag"] for element in ET.fromstring(render_xml(model))]
    assert tags == ["00081190", "00081199", "0008119A"]


def test_json_is_utf8_not_ascii_escaped() -> None:
    """Non-ASCII text is emitted as UTF-8 bytes; an empty attribute keeps only vr."""
    model = {"00100020": {"vr": "LO", "Value": ["Zoë"]}, "00100030": {"vr": "DA"}}
    assert render_json(model) == (
        '{"00100020":{"vr":"LO","Value":["Zoë"]},"00100030":{"vr":"DA"}}'.encode()
    )


def test_xml_escapes_markup_and_unrepresentable_characters() -> None:
    """Markup survives the XML round trip; XML-invalid controls become U+FFFD."""
    model = {
        "00100020": {"vr": "LO", "Value": ["a<b>&\"c'", "x\x01y"]},
        "00081190": {"vr": "UR", "Value": ["https://h/?a=1&b=2"]},
    }
    body = render_xml(model)
    check_ps319(body)
    assert b"a&lt;b&gt;&amp;" in body
    assert model_from_xml(body) == {
        "00081190": {"vr": "UR", "Value": ["https://h/?a=1&b=2"]},
        "00100020": {"vr": "LO", "Value": ["a<b>&\"c'", "x\ufffdy"]},
    }


def test_xml_keyword_omitted_for_unknown_tags() -> None:
    """Private and unknown tags get no keyword attribute (optional in PS3.19)."""
    body = render_xml({"00091010": {"vr": "LO", "Value": ["v"]}})
    check_ps319(body)
    (attribute,) = ET.fromstring(body)
    assert attribute.attrib == {"tag": "00091010", "vr": "LO"}


@pytest.mark.parametrize(
    "model",
    [
        {"0008119a": {"vr": "SQ", "Value": []}},
        {"(0008,1190)": {"vr": "UR", "Value": ["u"]}},
        {"00081190": {"Value": ["u"]}},
        {"00081190": {"vr": "UR", "BulkDataURI": "u"}},
        {"00081190": {"vr": "UR", "Values": ["u"]}},
    ],
    ids=["lowercase-hex", "not-a-tag", "no-vr", "bulk-data-uri", "unknown-member"],
)
def test_renderers_reject_malformed_models(model: dict[str, Any]) -> None:
    """Both renderers refuse a model that is not DICOM JSON instead of emitting it."""
    with pytest.raises(ValueError):
        render_json(model)
    with pytest.raises(ValueError):
        render_xml(model)


@pytest.mark.parametrize(
    "model",
    [
        {"00280030": {"vr": "FD", "Value": [0.25]}},
        {"00100020": {"vr": "LO", "Value": [["nested"]]}},
        {"00100020": {"vr": "LO", "Value": [True]}},
    ],
    ids=["float", "list-value", "bool-value"],
)
def test_render_xml_rejects_values_without_a_ps319_form(model: dict[str, Any]) -> None:
    """Values the response never holds (floats, lists, booleans) raise ValueError."""
    with pytest.raises(ValueError):
        render_xml(model)


def test_render_json_rejects_nan() -> None:
    """NaN is not JSON, so render_json raises instead of writing it."""
    with pytest.raises(ValueError):
        render_json({"00280030": {"vr": "FD", "Value": [math.nan]}})


def test_render_dispatches_by_media_type() -> None:
    """render() picks the renderer from the negotiated media type and refuses others."""
    model = build_store_response([_stored("1.1")], base_url=BASE_URL).model
    assert render(model, DICOM_JSON) == render_json(model)
    assert render(model, DICOM_XML) == render_xml(model)
    with pytest.raises(ValueError, match="application/json"):
        render(model, "application/json")


# --- Warning header ---------------------------------------------------------


def test_warning_text_counts_and_hex_codes() -> None:
    """The Warning text counts failures per code in hex, in ascending code order."""
    outcomes: list[Outcome] = [
        _stored("1.1"),
        Failed(FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "x", CT, "1.2"),
        _stored("1.3"),
        Failed(FailureReason.CANNOT_UNDERSTAND, "y"),
        _stored("1.4"),
    ]
    response = build_store_response(outcomes, base_url=BASE_URL)
    assert response.warning == "2 of 5 instances not stored: A900 (1), C000 (1)"
    assert warning_header_value(response.warning) == (
        '299 twisted-stow "2 of 5 instances not stored: A900 (1), C000 (1)"'
    )


def test_warning_text_counts_repeated_codes() -> None:
    """Repeated codes are counted, and codes below 0x1000 keep four hex digits."""
    outcomes = [
        Failed(FailureReason.PROCESSING_FAILURE, "a", CT, "1.1"),
        Failed(FailureReason.PROCESSING_FAILURE, "b", CT, "1.2"),
        Failed(FailureReason.DUPLICATE_SOP_INSTANCE, "c", CT, "1.3"),
    ]
    response = build_store_response(outcomes, base_url=BASE_URL)
    assert response.warning == "3 of 3 instances not stored: 0110 (2), 0111 (1)"


def test_warning_header_value_escapes_quotes_and_backslashes() -> None:
    """Quotes and backslashes become quoted-pairs; CR, LF and non-ASCII become '?'."""
    value = warning_header_value('say "hi" \\ now\r\nZoë\tok')
    assert value == '299 twisted-stow "say \\"hi\\" \\\\ now??Zo?\tok"'
    quoted = value.removeprefix("299 twisted-stow ")
    # RFC 9110 §5.6.4: the whole rest is one quoted-string.
    assert re.fullmatch(r'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e]|\\[\t\x20-\x7e])*"', quoted)


# --- problem+json -----------------------------------------------------------


def test_problem_json_shape() -> None:
    """A StowError renders as an RFC 7807 document with its status, title and detail."""
    body = problem_json(InvalidStudyUID("'1.02' has a leading zero"), instance="/studies/1.02")
    assert PROBLEM_JSON == "application/problem+json"
    assert json.loads(body) == {
        "type": "about:blank",
        "title": "Invalid Study Instance UID",
        "status": 400,
        "detail": "'1.02' has a leading zero",
        "instance": "/studies/1.02",
    }
    assert body.startswith(b'{"type":"about:blank","title":')


def test_problem_json_without_instance() -> None:
    """Without an instance argument it is left out; subclass statuses are used."""
    body = json.loads(problem_json(BodyTooLarge("body exceeds 2147483648 bytes")))
    assert body == {
        "type": "about:blank",
        "title": "Payload Too Large",
        "status": 413,
        "detail": "body exceeds 2147483648 bytes",
    }
    assert json.loads(problem_json(ServiceUnavailable("busy")))["status"] == 503


def test_problem_document_for_non_stow_errors() -> None:
    """problem_document serves non-StowError statuses (404/405/500), in UTF-8."""
    body = problem_document(404, "Not Found", "no route for /stüdies", "/stüdies")
    assert (
        body
        == (
            '{"type":"about:blank","title":"Not Found","status":404,'
            '"detail":"no route for /stüdies","instance":"/stüdies"}'
        ).encode()
    )


# --- properties -------------------------------------------------------------

_uids = st.lists(st.integers(1, 999), min_size=2, max_size=4).map(
    lambda parts: ".".join(map(str, parts))
)
_stored_outcomes = st.builds(
    Stored,
    instance=st.builds(
        InstanceRef,
        sop_class_uid=st.sampled_from([CT, "1.2.840.10008.5.1.4.1.1.4"]),
        sop_instance_uid=_uids,
        study_instance_uid=st.sampled_from(["1.2.3", "1.2.4"]),
        series_instance_uid=_uids,
    ),
    warning=st.none() | st.sampled_from(WarningReason),
)
_failed_outcomes = st.builds(
    Failed,
    reason=st.sampled_from(FailureReason),
    detail=st.text(max_size=5),
    sop_class_uid=st.none() | _uids,
    sop_instance_uid=st.none() | _uids,
)


def _expected_status(outcomes: Sequence[Outcome]) -> int:
    stored = [o for o in outcomes if isinstance(o, Stored)]
    if not stored:
        return 409
    clean = len(stored) == len(outcomes) and all(o.warning is None for o in stored)
    return 200 if clean else 202


def _items(model: Mapping[str, Any], tag: str) -> list[Any]:
    return list(model.get(tag, {}).get("Value", []))


@given(st.lists(_stored_outcomes | _failed_outcomes, min_size=1, max_size=8))
def test_any_outcomes_give_consistent_status_module_and_renderings(
    outcomes: list[Outcome],
) -> None:
    """Any outcomes: Table 10.5.3-1 status, one item each, valid PS3.19, JSON == XML."""
    response = build_store_response(outcomes, base_url=BASE_URL)
    assert isinstance(response, StoreResponse)
    assert response.status == _expected_status(outcomes)
    assert (response.warning is None) == (response.status == 200)
    stored = [o for o in outcomes if isinstance(o, Stored)]
    with_uid = [o for o in outcomes if isinstance(o, Failed) and o.sop_instance_uid]
    assert len(_items(response.model, "00081199")) == len(stored)
    assert len(_items(response.model, "00081198")) == len(with_uid)
    assert len(_items(response.model, "0008119A")) == (len(outcomes) - len(stored) - len(with_uid))
    studies = {o.instance.study_instance_uid for o in stored}
    assert ("00081190" in response.model) == (len(studies) == 1)
    xml_body = render_xml(response.model)
    check_ps319(xml_body)
    assert model_from_xml(xml_body) == json.loads(render_json(response.model))
    assert json.loads(render_json(response.model)) == response.model


_GOOD_ATTRIBUTE = '<DicomAttribute tag="00081197" vr="US" keyword="FailureReason">'


def _native(inner: str) -> str:
    return (
        '<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">'
        f"{inner}</NativeDicomModel>"
    )


@pytest.mark.parametrize(
    "document",
    [
        (
            f'<NativeDicomModel>{_GOOD_ATTRIBUTE}<Value number="1">1</Value>'
            "</DicomAttribute></NativeDicomModel>"
        ),
        (f'<NativeDicomModel xmlns="urn:x">{_GOOD_ATTRIBUTE}</DicomAttribute></NativeDicomModel>'),
        (
            '<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM"'
            ' xml:space="preserve" />'
        ),
        _native('<Attribute tag="00081197" vr="US" keyword="FailureReason" />'),
        _native('<DicomAttribute tag="0008119a" vr="SQ" keyword="OtherFailuresSequence" />'),
        _native('<DicomAttribute tag="00081197" vr="XX" keyword="FailureReason" />'),
        _native('<DicomAttribute tag="00081197" vr="US" keyword="WarningReason" />'),
        _native('<DicomAttribute tag="00081197" vr="US" />'),
        _native('<DicomAttribute tag="00091010" vr="LO" keyword="PatientName" />'),
        _native(
            f'{_GOOD_ATTRIBUTE}<Value number="1">1</Value><Value number="3">2</Value>'
            "</DicomAttribute>"
        ),
        _native(
            f'{_GOOD_ATTRIBUTE}<Value number="1"><Value number="1" /></Value></DicomAttribute>'
        ),
        _native(f'{_GOOD_ATTRIBUTE}<Item number="1" /></DicomAttribute>'),
        _native(
            '<DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence">'
            '<Value number="1">x</Value></DicomAttribute>'
        ),
        _native(
            '<DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence">'
            '<Item number="2" /></DicomAttribute>'
        ),
        _native(
            '<DicomAttribute tag="0008119A" vr="SQ" keyword="OtherFailuresSequence" />'
            '<DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence" />'
        ),
    ],
    ids=[
        "no-namespace",
        "wrong-namespace",
        "extra-root-attribute",
        "not-a-dicom-attribute",
        "lowercase-tag",
        "unknown-vr",
        "wrong-keyword",
        "missing-keyword",
        "keyword-on-private-tag",
        "value-number-gap",
        "nested-value",
        "item-in-non-sq",
        "value-in-sq",
        "item-number-gap",
        "tags-descending",
    ],
)
def test_ps319_checker_rejects_broken_documents(document: str) -> None:
    """The PS3.19 checker used above is not vacuous: each structural defect fails it."""
    with pytest.raises(AssertionError):
        check_ps319(XML_DECLARATION + document.encode())


def test_warning_names_parts_failed_without_uids() -> None:
    """Failures without UIDs are listed by part number in the Warning text; a body failure
    (no part) and a failure with a UID are not."""
    outcomes: list[Outcome] = [
        Failed(FailureReason.CANNOT_UNDERSTAND, "not DICOM", part=2),
        Failed(FailureReason.CANNOT_UNDERSTAND, "framing"),
        Failed(FailureReason.CANNOT_UNDERSTAND, "bad", "1.2.3", "1.2.3.4", part=4),
    ]
    response = build_store_response(outcomes, base_url="http://h")
    assert response.warning is not None
    assert response.warning.endswith("; parts failed without UIDs: 2 (C000)")
    assert failed_parts_without_uids(outcomes) == [{"part": 2, "failureReason": "C000"}]


def test_warning_names_at_most_ten_parts() -> None:
    """Thousands of parts without UIDs: the Warning names the first ten and counts the rest."""
    outcomes: list[Outcome] = [
        Failed(FailureReason.CANNOT_UNDERSTAND, "empty part", part=n) for n in range(1, 3001)
    ]
    warning = build_store_response(outcomes, base_url="http://h").warning
    assert warning is not None and len(warning) < 300
    assert warning.endswith("9 (C000), 10 (C000) and 2990 more")
