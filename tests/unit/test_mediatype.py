"""Content-Type parsing, the reader table and Accept negotiation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import build_multipart, coalesce, multipart_content_type
from twisted_stow.core.errors import MalformedMultipart, NotAcceptable, UnsupportedMediaType
from twisted_stow.core.mediatype import (
    DICOM_JSON,
    DICOM_XML,
    MediaType,
    negotiate,
    parse_media_type,
    reader_for,
    split_list,
)
from twisted_stow.core.multipart import BodyEnded, MultipartParser, PartData, PartEnded
from twisted_stow.core.singlepart import SinglePartReader

ORTHANC_BOUNDARY = "o" * 73


@pytest.mark.parametrize(
    "value",
    [
        'multipart/related; type="application/dicom"; boundary=abc',
        "multipart/related; type=application/dicom; boundary=abc",
        'Multipart/Related;BOUNDARY="abc";Type="application/dicom"',
        ' multipart/related ;  type = "application/dicom" ;boundary="abc" ; ',
        'multipart/related;; boundary="abc";type="application/dicom"',
    ],
)
def test_parse_quoted_unquoted_case_order(value: str) -> None:
    """Quoting, case, order and whitespace do not change the parsed media type."""
    media_type = parse_media_type(value)
    assert media_type.essence == "multipart/related"
    assert dict(media_type.params) == {"type": "application/dicom", "boundary": "abc"}


def test_quoted_string_escapes_and_value_case() -> None:
    """Backslash escapes are removed from quoted values; values keep their case."""
    media_type = parse_media_type(r'application/dicom; x="a\"b\\c;d"; Y=MiXeD')
    assert media_type == MediaType("application", "dicom", {"x": 'a"b\\c;d', "y": "MiXeD"})


def test_transfer_syntax_parameter_is_exposed() -> None:
    """The transfer-syntax parameter is available as a hint (PS3.18 8.7.9)."""
    media_type = parse_media_type(
        'multipart/related; type="application/dicom"; '
        "transfer-syntax=1.2.840.10008.1.2.1; boundary=x"
    )
    assert media_type.params.get("transfer-syntax") == "1.2.840.10008.1.2.1"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "dicom",
        "application/",
        "/dicom",
        "a/b c",
        "a/b; x",
        'a/b; x="open',
        "a/b; x=1; X=2",
    ],
)
def test_garbage_is_unsupported(value: str) -> None:
    """Strings that are not one media type raise UnsupportedMediaType."""
    with pytest.raises(UnsupportedMediaType):
        parse_media_type(value)


@pytest.mark.parametrize(
    "content_type",
    [
        multipart_content_type(ORTHANC_BOUNDARY),
        multipart_content_type(ORTHANC_BOUNDARY, quote_type=False, quote_boundary=True),
        f"multipart/related; boundary={ORTHANC_BOUNDARY}",
        f'multipart/related; type="APPLICATION/DICOM"; boundary="{ORTHANC_BOUNDARY}"',
    ],
)
def test_reader_for_multipart(content_type: str) -> None:
    """multipart/related with type absent or application/dicom gets a parser for its boundary."""
    reader = reader_for(content_type)
    assert isinstance(reader, MultipartParser)
    events = coalesce(reader.feed(build_multipart([b"p"], ORTHANC_BOUNDARY)) + reader.close())
    assert events[1:] == [PartData(b"p"), PartEnded(), BodyEnded()]


def test_reader_for_passes_header_cap() -> None:
    """The header cap given to reader_for reaches the multipart parser."""
    reader = reader_for(multipart_content_type("b"), max_header_bytes=4)
    with pytest.raises(MalformedMultipart):
        reader.feed(b"--b\r\nContent-Type: application/dicom\r\n\r\n")


def test_reader_for_single_part() -> None:
    """application/dicom (with or without parameters) gets the single-part reader."""
    assert isinstance(reader_for("application/dicom"), SinglePartReader)
    assert isinstance(reader_for("Application/DICOM; transfer-syntax=*"), SinglePartReader)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "  ",
        "text/plain",
        "application/json",
        "application/octet-stream",
        "multipart/form-data; boundary=x",
        'multipart/related; type="application/dicom+json"; boundary=x',
        'multipart/related; type="application/dicom+xml"; boundary=x',
        "not a media type",
    ],
)
def test_unsupported_content_type_is_415(content_type: str | None) -> None:
    """Missing, foreign or metadata (dicom+json/xml) Content-Types: 415 naming what is supported."""
    with pytest.raises(UnsupportedMediaType) as caught:
        reader_for(content_type)
    assert caught.value.status == 415
    if content_type and content_type.strip() and "/" in content_type:
        assert 'multipart/related; type="application/dicom"' in caught.value.detail


@pytest.mark.parametrize(
    "content_type",
    [
        'multipart/related; type="application/dicom"',
        'multipart/related; type="application/dicom"; boundary=""',
        f'multipart/related; boundary="{"x" * 201}"',
        'multipart/related; boundary="\u0100"',
    ],
)
def test_bad_boundary_is_400(content_type: str) -> None:
    """A missing, empty, over-long or non-Latin-1 boundary is MalformedMultipart (400)."""
    with pytest.raises(MalformedMultipart) as caught:
        reader_for(content_type)
    assert caught.value.status == 400


def test_200_character_boundary_is_accepted() -> None:
    """Boundaries up to 200 characters are accepted (RFC 2046 says 70; Orthanc sends 73)."""
    assert isinstance(reader_for(f"multipart/related; boundary={'x' * 200}"), MultipartParser)


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, DICOM_JSON),
        ("", DICOM_JSON),
        ("*/*", DICOM_JSON),
        ("application/*", DICOM_JSON),
        ("application/dicom+json", DICOM_JSON),
        ("application/json", DICOM_JSON),
        ("application/dicom+xml", DICOM_XML),
        ("Application/DICOM+XML", DICOM_XML),
        ("application/xml", DICOM_XML),
        ("text/xml", DICOM_XML),
        ('multipart/related; type="application/dicom+xml"', DICOM_XML),
        ("multipart/related; type=application/dicom+xml; q=0.5", DICOM_XML),
        ("application/dicom+xml, application/dicom+json", DICOM_JSON),
        ("application/dicom+xml, application/dicom+json;q=0.9", DICOM_XML),
        ("application/dicom+json;q=0.5, application/dicom+xml;q=0.8", DICOM_XML),
        ("application/dicom+json;q=0.8, application/dicom+xml;q=0.8", DICOM_JSON),
        ("application/dicom+xml;q=0.1, */*;q=0.5", DICOM_JSON),
        ("application/dicom+json;q=0, */*", DICOM_XML),
        ("*/*;q=0.1, application/dicom+xml;q=0.2", DICOM_XML),
        ("application/*;q=0.5, application/dicom+xml;q=0", DICOM_JSON),
        ("text/html, application/xhtml+xml, */*;q=0.8", DICOM_JSON),
        ("garbage, application/dicom+xml", DICOM_XML),
        ("application/dicom+json;q=2, application/dicom+xml", DICOM_XML),
        ("*/json, application/dicom+xml;q=0.3", DICOM_XML),
        (
            'multipart/related; type="application/dicom+xml"; x="a, b", */*;q=0.1',
            DICOM_XML,
        ),
        ('multipart/related; type="application/dicom+xml, x", */*;q=0.1', DICOM_JSON),
        ("not a type", DICOM_JSON),
        (
            "application/xml;q=0.9, application/dicom+xml;q=0.1, application/json;q=0.5",
            DICOM_JSON,
        ),
    ],
)
def test_negotiate(accept: str | None, chosen: str) -> None:
    """Accept picks JSON or XML by q, the most specific range deciding; ties go to JSON."""
    assert negotiate(accept) == chosen


@pytest.mark.parametrize(
    "accept",
    [
        "image/png",
        "text/html",
        "text/*",
        "application/*;q=0, text/*",
        "application/dicom",
        'multipart/related; type="application/dicom"',
        "application/dicom+json;q=0, application/dicom+xml;q=0",
        "*/*;q=0",
        "*/*;q=0.5, application/dicom+json;q=0, application/dicom+xml;q=0",
        "application/dicom+json;q=0, application/json, text/xml, application/dicom+xml;q=0",
    ],
)
def test_negotiate_not_acceptable(accept: str) -> None:
    """An Accept that rules out both DICOM JSON and XML is 406 naming both."""
    with pytest.raises(NotAcceptable) as caught:
        negotiate(accept)
    assert caught.value.status == 406
    assert DICOM_JSON in caught.value.detail and DICOM_XML in caught.value.detail


def _reference_split(value: str) -> list[str]:
    """A character-by-character RFC 9110 list splitter, to compare split_list with."""
    elements, current, quoted, escaped = [], "", False, False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            elements.append(current)
            current = ""
            continue
        current += char
    return [*elements, current]


@given(st.text(alphabet=st.sampled_from(list('ab ,"\\;=/*')), max_size=60))
def test_split_list_matches_a_character_scanner(value: str) -> None:
    """split_list splits exactly where a plain quoted-string-aware scan does."""
    assert split_list(value) == _reference_split(value)


def test_accept_of_escaped_quotes_is_ignored_not_backtracked() -> None:
    """An unterminated quote followed by 8,000 escaped quotes is an invalid Accept: JSON.

    The old list regex backtracked quadratically on it (2.4 s per request).
    """
    assert negotiate('"' + '\\"' * 8000) == DICOM_JSON
    assert split_list('a, "b,\\"c", d') == ["a", ' "b,\\"c"', " d"]
