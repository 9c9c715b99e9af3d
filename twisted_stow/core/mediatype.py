"""Content-Type and Accept: which body reader to use, which response format.

``reader_for`` picks the body reader from a small table keyed by media type,
as h11 picks its body readers (``h11/_readers.py``, ``READERS``).
``negotiate`` chooses between DICOM JSON and DICOM XML for the response.
Pure: standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .errors import MalformedMultipart, NotAcceptable, UnsupportedMediaType, shorten
from .multipart import (
    MAX_BOUNDARY_BYTES,
    MAX_HEADER_BLOCK_BYTES,
    BodyReader,
    MultipartParser,
)
from .singlepart import SinglePartReader

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
MULTIPART_RELATED = "multipart/related"

SUPPORTED_REQUEST_TYPES = f'{MULTIPART_RELATED}; type="{DICOM}", {DICOM}'

# RFC 9110 §5.6.2 token; media type and parameter names are tokens.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_OWS = r"[ \t]*"
_TYPE = re.compile(rf"{_OWS}({_TOKEN})/({_TOKEN}){_OWS}")
# RFC 9110 §5.6.6 parameters: empty ones (";;") are allowed.  Values may be a
# quoted-string or, leniently, any unquoted run: clients send
# type=application/dicom unquoted although "/" is not a token character.
_PARAMETER = re.compile(
    rf';{_OWS}(?:({_TOKEN}){_OWS}={_OWS}(?:"((?:[^"\\]|\\.)*)"|([^;"\s]*)))?{_OWS}'
)
_QUOTED_PAIR = re.compile(r"\\(.)")
# Where a comma, a quote or a backslash may change the list splitter's state.
_LIST_SPECIAL = re.compile(r'[,"\\]')
# RFC 9110 §12.4.2 qvalue.
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")


@dataclass(frozen=True, slots=True)
class MediaType:
    """A parsed media type: lower-cased type, subtype and parameter names."""

    type: str
    subtype: str
    params: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def essence(self) -> str:
        """``type/subtype`` in lower case, without parameters."""
        return f"{self.type}/{self.subtype}".lower()


def parse_media_type(value: str) -> MediaType:
    """Parse ``type/subtype; name=value; ...`` (RFC 9110 §8.3.1).

    Parameter names are lower-cased; values are unquoted (backslash escapes
    removed) and keep their case.  Raises ``UnsupportedMediaType`` when
    ``value`` is not a media type or repeats a parameter.
    """
    match = _TYPE.match(value)
    if match is None:
        raise UnsupportedMediaType(f"cannot parse media type {shorten(value)!r}")
    params: dict[str, str] = {}
    pos = match.end()
    while pos < len(value):
        parameter = _PARAMETER.match(value, pos)
        if parameter is None:
            raise UnsupportedMediaType(f"cannot parse media type {shorten(value)!r}")
        pos = parameter.end()
        name, quoted, bare = parameter.groups()
        if name is None:
            continue
        name = name.lower()
        if name in params:
            raise UnsupportedMediaType(f"parameter {name!r} repeated in {shorten(value)!r}")
        params[name] = bare if quoted is None else _QUOTED_PAIR.sub(r"\1", quoted)
    return MediaType(match[1].lower(), match[2].lower(), MappingProxyType(params))


def _multipart_reader(media_type: MediaType, max_header_bytes: int) -> BodyReader:
    # PS3.18 8.6.1.2: metadata requests (type=application/dicom+json or +xml,
    # with bulk data parts) are not supported; only PS3.10 files are.
    root_type = media_type.params.get("type")
    if root_type is not None and root_type.strip().lower() != DICOM:
        raise UnsupportedMediaType(
            f"{MULTIPART_RELATED} with type={shorten(root_type)!r} is not supported; "
            f"supported media types: {SUPPORTED_REQUEST_TYPES}"
        )
    boundary = media_type.params.get("boundary")
    if boundary is None:
        raise MalformedMultipart(
            f"the {MULTIPART_RELATED} Content-Type has no boundary parameter (RFC 2046 §5.1.1)"
        )
    try:
        raw = boundary.encode("latin-1")  # header bytes arrive decoded as latin-1
    except UnicodeEncodeError:
        raw = b""
    if not 1 <= len(raw) <= MAX_BOUNDARY_BYTES or b"\r" in raw or b"\n" in raw:
        raise MalformedMultipart(
            f"the boundary must be 1-{MAX_BOUNDARY_BYTES} characters (RFC 2046 §5.1.1)"
        )
    return MultipartParser(raw, max_header_bytes=max_header_bytes)


def _single_part_reader(media_type: MediaType, max_header_bytes: int) -> BodyReader:
    return SinglePartReader()


# Media type essence → reader factory.  Anything else is a 415.
READERS: Mapping[str, Callable[[MediaType, int], BodyReader]] = MappingProxyType(
    {MULTIPART_RELATED: _multipart_reader, DICOM: _single_part_reader}
)


def reader_for(
    content_type: str | None, *, max_header_bytes: int = MAX_HEADER_BLOCK_BYTES
) -> BodyReader:
    """Return the body reader for a request's Content-Type.

    Raises ``UnsupportedMediaType`` (415) for a missing or unsupported type,
    ``MalformedMultipart`` (400) for a multipart/related type without a usable
    boundary.  A ``transfer-syntax`` parameter is only a hint (PS3.18 8.7.9:
    the file meta information wins) and is left in ``MediaType.params``.
    """
    if content_type is None or not content_type.strip():
        raise UnsupportedMediaType(
            f"the request has no Content-Type; supported media types: {SUPPORTED_REQUEST_TYPES}"
        )
    media_type = parse_media_type(content_type)
    factory = READERS.get(media_type.essence)
    if factory is None:
        raise UnsupportedMediaType(
            f"{media_type.essence} is not supported; supported media types: "
            f"{SUPPORTED_REQUEST_TYPES}"
        )
    return factory(media_type, max_header_bytes)


# Each response format and the media types an Accept may name to get it, as
# (essence, required ``type`` parameter).  application/json, application/xml
# and text/xml follow Orthanc (Plugin/Configuration.cpp, IsXmlExpected);
# multipart/related; type="application/dicom+xml" is PS3.18 Table 10.5.4-1.
_RESPONSE_TYPES: Mapping[str, tuple[tuple[str, str | None], ...]] = MappingProxyType(
    {
        DICOM_JSON: ((DICOM_JSON, None), ("application/json", None)),
        DICOM_XML: (
            (DICOM_XML, None),
            ("application/xml", None),
            ("text/xml", None),
            (MULTIPART_RELATED, DICOM_XML),
        ),
    }
)


def negotiate(accept: str | None) -> str:
    """Choose the response media type: ``DICOM_JSON`` or ``DICOM_XML``.

    RFC 9110 §12.5.1: for each format the most specific media range naming it
    gives its q; the higher q wins and a tie goes to JSON, the PS3.18 default.
    No Accept, or none that parses, means JSON: real clients often send none.
    Raises ``NotAcceptable`` when the Accept rules out both formats.
    """
    ranges = _parse_accept(accept or "")
    if not ranges:
        return DICOM_JSON
    json_q = _quality(ranges, _RESPONSE_TYPES[DICOM_JSON])
    xml_q = _quality(ranges, _RESPONSE_TYPES[DICOM_XML])
    if json_q <= 0 and xml_q <= 0:
        raise NotAcceptable(f"the Accept header allows neither {DICOM_JSON} nor {DICOM_XML}")
    return DICOM_XML if xml_q > json_q else DICOM_JSON


def split_list(value: str) -> list[str]:
    """The elements of a comma-separated field value (RFC 9110 §5.6.1), in linear time.

    Commas inside a quoted-string (RFC 9110 §5.6.4, backslash escapes
    included) do not split.  An unterminated quoted-string runs to the end of
    the value; the element it starts is then invalid and ignored by the
    caller.  One scan over the special characters only: a regular expression
    with nested repetition backtracked quadratically on ``"`` followed by
    thousands of ``\\"`` (2.4 s of reactor time for an 8,000-pair Accept).
    """
    elements: list[str] = []
    start = 0
    quoted = False
    escaped_at = -1
    for match in _LIST_SPECIAL.finditer(value):
        at = match.start()
        if at == escaped_at:
            continue
        char = match.group()
        if char == "\\":
            if quoted:
                escaped_at = at + 1
        elif char == '"':
            quoted = not quoted
        elif not quoted:
            elements.append(value[start:at])
            start = at + 1
    elements.append(value[start:])
    return elements


def _parse_accept(accept: str) -> list[tuple[MediaType, float]]:
    """Return the valid media ranges of an Accept value with their q; drop the rest."""
    ranges: list[tuple[MediaType, float]] = []
    for element in split_list(accept):
        if not element.strip():
            continue
        try:
            media_range = parse_media_type(element)
        except UnsupportedMediaType:
            continue  # PS3.18 8.7.5: invalid Accept values are ignored
        q = media_range.params.get("q", "1")
        if media_range.type == "*" and media_range.subtype != "*":
            continue
        if not _QVALUE.fullmatch(q):
            continue
        ranges.append((media_range, float(q)))
    return ranges


def _quality(
    ranges: list[tuple[MediaType, float]], names: tuple[tuple[str, str | None], ...]
) -> float:
    """The q of a response format: that of the most specific range naming it.

    Among equally specific ranges, one naming the format's own media type (the
    first name) beats an alias: ``application/dicom+json;q=0`` excludes JSON
    even though ``*/*`` would allow ``application/json``.
    """
    best: tuple[int, bool, float] | None = None
    for index, (essence, root_type) in enumerate(names):
        main = essence.split("/", 1)[0]
        for media_range, q in ranges:
            if media_range.type == "*" or media_range.subtype == "*":
                # A wildcard admits the format's own media type only: text/*
                # does not make application/dicom+xml acceptable through the
                # text/xml alias.
                if index != 0:
                    continue
                if media_range.type == "*":
                    specificity = 0
                elif media_range.type == main:
                    specificity = 1
                else:
                    continue
            elif media_range.essence != essence:
                continue
            elif root_type is None or "type" not in media_range.params:
                specificity = 2
            elif media_range.params["type"].strip().lower() == root_type:
                specificity = 3
            else:
                continue
            rank = (specificity, index == 0, q)
            if best is None or rank > best:
                best = rank
    return 0.0 if best is None else best[2]
