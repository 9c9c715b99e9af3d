"""``admit``: the header-time decision, on plain values (no server, no sockets)."""

from __future__ import annotations

import pytest

from twisted_stow.core.admission import (
    DCM4CHEE,
    MONAI,
    STANDARD,
    Admission,
    RawHeaders,
    Reached,
    Target,
    admit,
    base_url,
    check_request_headers,
    first_token,
    refuse_unwanted_body,
    split_host,
)
from twisted_stow.core.config import StowConfig
from twisted_stow.core.errors import (
    DETAIL_TEXT_CHARS,
    BodyTooLarge,
    InvalidHeader,
    InvalidRequestTarget,
    InvalidStudyUID,
    LengthRequired,
    MalformedMultipart,
    NoParts,
    NotAcceptable,
    StowError,
    UnexpectedContent,
    UnknownWorkflow,
    UnsupportedMediaType,
)
from twisted_stow.core.mediatype import DICOM_JSON, DICOM_XML
from twisted_stow.core.multipart import MultipartParser
from twisted_stow.core.policy import Duplicates, StudyMismatch
from twisted_stow.core.singlepart import SinglePartReader
from twisted_stow.core.validation import DEFAULT_POLICY

MULTIPART = b'multipart/related; type="application/dicom"; boundary=b0undary'
HEADERS: RawHeaders = {b"host": [b"stow.example:8443"], b"content-type": [MULTIPART]}
REACHED = Reached(secure=False, local_host="127.0.0.1", local_port=8080)
STUDIES = Target(base_path="")


def run(
    target: Target = STUDIES,
    headers: RawHeaders = HEADERS,
    length: int | None = None,
    config: StowConfig | None = None,
    reached: Reached = REACHED,
) -> Admission:
    return admit(target, headers, length, reached, config or StowConfig(), DEFAULT_POLICY)


def with_headers(**extra: bytes) -> RawHeaders:
    return {**HEADERS, **{name.replace("_", "-").encode(): [v] for name, v in extra.items()}}


def test_a_multipart_post_is_admitted() -> None:
    """The defaults: a multipart reader, DICOM JSON, reject mismatches, the Host as base."""
    admission = run()
    assert isinstance(admission.reader, MultipartParser)
    assert admission.response_type == DICOM_JSON
    assert admission.policy.study_mismatch is StudyMismatch.REJECT
    assert admission.policy.duplicates is Duplicates.REJECT
    assert admission.policy.validation is DEFAULT_POLICY
    assert admission.base_url == "http://stow.example:8443"
    assert (admission.limits.max_body_bytes, admission.limits.max_part_bytes) == (None, None)


def test_the_target_study_and_options_reach_the_policy_and_limits() -> None:
    """The URL's study is expected of every instance; config's choices and limits are kept."""
    config = StowConfig(
        study_mismatch=StudyMismatch.WARN,
        duplicates=Duplicates.OVERWRITE,
        max_body_bytes=10_000,
        max_part_bytes=5_000,
    )
    admission = run(Target(base_path="", study_uid="1.2.3"), config=config, length=100)
    assert admission.policy.expected_study_uid == "1.2.3"
    assert admission.policy.study_mismatch is StudyMismatch.WARN
    assert admission.policy.duplicates is Duplicates.OVERWRITE
    assert (admission.limits.max_body_bytes, admission.limits.max_part_bytes) == (10_000, 5_000)


@pytest.mark.parametrize(
    ("family", "mismatch"),
    [
        (STANDARD, StudyMismatch.REJECT),
        (DCM4CHEE, StudyMismatch.REJECT),
        (MONAI, StudyMismatch.WARN),
    ],
)
def test_study_mismatch_defaults_by_route_family(family: str, mismatch: StudyMismatch) -> None:
    """Without --study-mismatch the MONAI routes warn, the others reject."""
    assert run(Target(base_path="", route_family=family)).policy.study_mismatch is mismatch


def test_a_bare_dicom_body_gets_the_single_part_reader() -> None:
    """Content-Type application/dicom: one instance, read by SinglePartReader."""
    admission = run(headers=with_headers(content_type=b"application/dicom"))
    assert isinstance(admission.reader, SinglePartReader)


def test_accept_chooses_dicom_xml() -> None:
    """Accept: application/dicom+xml negotiates the XML response."""
    assert run(headers=with_headers(accept=b"application/dicom+xml")).response_type == DICOM_XML


# Every refusal admit makes, with what provokes it.
REFUSALS = [
    ("bad-study-uid", {"target": Target(base_path="", study_uid="1..2")}, InvalidStudyUID),
    (
        "unknown-workflow",
        {
            "target": Target(base_path="/dicomweb/x", workflow_id="x", route_family=MONAI),
            "config": StowConfig(workflows=("wf",)),
        },
        UnknownWorkflow,
    ),
    ("no-content-type", {"headers": {b"host": [b"h"]}}, UnsupportedMediaType),
    ("text-plain", {"headers": with_headers(content_type=b"text/plain")}, UnsupportedMediaType),
    (
        "no-boundary",
        {"headers": with_headers(content_type=b'multipart/related; type="application/dicom"')},
        MalformedMultipart,
    ),
    ("not-acceptable", {"headers": with_headers(accept=b"image/png")}, NotAcceptable),
    ("no-length", {"length": 0}, LengthRequired),
    ("empty", {"length": 0, "headers": with_headers(content_length=b"0")}, NoParts),
    (
        "body-too-large",
        {"length": 1001, "config": StowConfig(max_body_bytes=1000)},
        BodyTooLarge,
    ),
    (
        "single-part-too-large",
        {
            "length": 1001,
            "headers": with_headers(content_type=b"application/dicom"),
            "config": StowConfig(max_part_bytes=1000),
        },
        BodyTooLarge,
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "error"), [(k, e) for _, k, e in REFUSALS], ids=[n for n, _, _ in REFUSALS]
)
def test_every_refusal(kwargs: dict[str, object], error: type[StowError]) -> None:
    """Each header-time refusal raises its own StowError."""
    with pytest.raises(error):
        run(**kwargs)  # type: ignore[arg-type]


def test_a_multipart_body_larger_than_the_part_limit_is_admitted() -> None:
    """--max-part-size refuses by Content-Length only a bare DICOM body (one instance)."""
    assert run(length=1001, config=StowConfig(max_part_bytes=1000)).limits.max_part_bytes == 1000


def test_chunked_bodies_are_not_refused_by_length() -> None:
    """length None (chunked): the limits wait for the bytes."""
    assert run(length=None, config=StowConfig(max_body_bytes=1)).limits.max_body_bytes == 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        # The URL is checked before the media type, the media type before
        # Accept, both before the length (docs/CONFORMANCE.md §3.1).
        (
            {"target": Target(base_path="", study_uid="x"), "headers": {b"host": [b"h"]}},
            InvalidStudyUID,
        ),
        (
            {"headers": {b"content-type": [b"text/plain"], b"accept": [b"image/png"]}},
            UnsupportedMediaType,
        ),
        ({"headers": with_headers(accept=b"image/png"), "length": 0}, NotAcceptable),
        (
            {
                "headers": with_headers(content_type=b"application/dicom"),
                "length": 2000,
                "config": StowConfig(max_body_bytes=1000, max_part_bytes=10),
            },
            BodyTooLarge,
        ),
    ],
    ids=["uid-before-type", "type-before-accept", "accept-before-length", "body-limit-first"],
)
def test_refusal_order(kwargs: dict[str, object], error: type[StowError]) -> None:
    """With several faults, the first in the documented order is the one refused."""
    with pytest.raises(error) as caught:
        run(**kwargs)  # type: ignore[arg-type]
    assert type(caught.value) is error
    if error is BodyTooLarge:
        assert "per instance" not in caught.value.detail


# RetrieveURL bases: name, config, headers, reached, target base path, expected.
TLS = Reached(secure=True, local_host="10.0.0.1", local_port=443)
BASES = [
    (
        "host-with-port",
        StowConfig(),
        {b"host": [b"stow.example:8443"]},
        REACHED,
        "",
        "http://stow.example:8443",
    ),
    # A Host without port gets the port we were reached on.
    (
        "host-without-port",
        StowConfig(),
        {b"host": [b"stow.example"]},
        REACHED,
        "",
        "http://stow.example:8080",
    ),
    (
        "default-port-dropped",
        StowConfig(),
        {b"host": [b"stow.example"]},
        TLS,
        "",
        "https://stow.example",
    ),
    ("no-host", StowConfig(), {}, REACHED, "", "http://127.0.0.1:8080"),
    ("ipv6-local", StowConfig(), {}, Reached(False, "::1", 8080), "", "http://[::1]:8080"),
    ("ipv6-host", StowConfig(), {b"host": [b"[::1]:9000"]}, REACHED, "", "http://[::1]:9000"),
    (
        "unix-socket",
        StowConfig(),
        {b"host": [b"stow"]},
        Reached(False, "", None),
        "",
        "http://stow",
    ),
    (
        "public-url",
        StowConfig(public_url="https://pacs.example.org/dicom-web/"),
        {b"host": [b"ignored.example:1234"]},
        REACHED,
        "/aets/STOWAE/rs",
        "https://pacs.example.org/dicom-web/aets/STOWAE/rs",
    ),
    (
        "forwarded-trusted",
        StowConfig(trust_forwarded_headers=True),
        {
            b"host": [b"stow.example"],
            b"x-forwarded-proto": [b"HTTPS, http"],
            b"x-forwarded-host": [b"proxy.example, inner"],
        },
        REACHED,
        "",
        "https://proxy.example",
    ),
    (
        "forwarded-ignored",
        StowConfig(),
        {b"host": [b"127.0.0.1:8080"], b"x-forwarded-proto": [b"https"]},
        REACHED,
        "",
        "http://127.0.0.1:8080",
    ),
    (
        "forwarded-odd-proto",
        StowConfig(trust_forwarded_headers=True),
        {b"host": [b"stow.example"], b"x-forwarded-proto": [b"gopher"]},
        REACHED,
        "",
        "http://stow.example:8080",
    ),
]


@pytest.mark.parametrize(
    ("config", "headers", "reached", "base_path", "expected"),
    [case[1:] for case in BASES],
    ids=[case[0] for case in BASES],
)
def test_retrieve_url_base(
    config: StowConfig, headers: RawHeaders, reached: Reached, base_path: str, expected: str
) -> None:
    """The RetrieveURL base from public_url, forwarded headers, Host or the local address."""
    assert base_url(Target(base_path=base_path), headers, reached, config) == expected


def test_admission_carries_the_base_url_of_its_target() -> None:
    """The route's base path (before /studies) ends the admitted RetrieveURL base."""
    admission = run(Target(base_path="/dicomweb/wf", workflow_id="wf", route_family=MONAI))
    assert admission.base_url == "http://stow.example:8443/dicomweb/wf"


@pytest.mark.parametrize(
    ("host", "split"),
    [
        ("h:8080", ("h", "8080")),
        ("h", ("h", None)),
        ("[::1]:80", ("[::1]", "80")),
        ("[::1]", ("[::1]", None)),
        ("[::1]:x", ("[::1]", None)),
        ("h:port", ("h", None)),
        ("::1", ("::1", None)),
        (" h:1 ", ("h", "1")),
    ],
)
def test_split_host(host: str, split: tuple[str, str | None]) -> None:
    """Host values split into name and port, IPv6 literals kept in brackets."""
    assert split_host(host) == split


def test_first_token_takes_the_first_list_element() -> None:
    """X-Forwarded-* may list every hop: the first one is the client's."""
    assert first_token({b"x": [b" a , b", b"c"]}, b"x") == "a"
    assert first_token({b"x": [b" , b"]}, b"x") is None
    assert first_token({}, b"x") is None


# check_request_headers: framing and identity, before the route.

BASE_HEADERS: dict[bytes, list[bytes]] = {b"host": [b"h"], b"content-type": [MULTIPART]}


@pytest.mark.parametrize(
    ("changes", "length", "version"),
    [
        ({b"content-type": [MULTIPART, b"text/plain"]}, 10, b"HTTP/1.1"),
        ({b"host": [b"a", b"b"]}, 10, b"HTTP/1.1"),
        ({b"authorization": [b"Basic x", b"Bearer y"]}, 10, b"HTTP/1.1"),
        ({b"origin": [b"https://a", b"https://b"]}, 10, b"HTTP/1.1"),
        ({b"host": [b"a..b"]}, 10, b"HTTP/1.1"),
        ({b"transfer-encoding": [b"identity"], b"content-length": [b"10"]}, 10, b"HTTP/1.1"),
        ({b"transfer-encoding": [b"gzip"]}, 0, b"HTTP/1.1"),
        ({}, 10**30, b"HTTP/1.1"),
    ],
)
def test_broken_framing_or_identity_is_400(
    changes: dict[bytes, list[bytes]], length: int, version: bytes
) -> None:
    """Repeated singletons, a bad Host, odd transfer codings, a 30-digit length: InvalidHeader."""
    headers = {**BASE_HEADERS, **changes}
    with pytest.raises(InvalidHeader) as raised:
        check_request_headers(headers, length, version, StowConfig())
    assert raised.value.status == 400


def test_host_is_required_on_http_1_1_only() -> None:
    """RFC 9112 §3.2: HTTP/1.1 without Host is 400; HTTP/1.0 without it is fine."""
    headers = {b"content-type": [MULTIPART]}
    with pytest.raises(InvalidHeader):
        check_request_headers(headers, 10, b"HTTP/1.1", StowConfig())
    check_request_headers(headers, 10, b"HTTP/1.0", StowConfig())


def test_forwarded_host_is_checked_only_when_trusted() -> None:
    """An invalid X-Forwarded-Host is 400 behind a trusted proxy, ignored otherwise."""
    headers = {**BASE_HEADERS, b"x-forwarded-host": [b"a..b"]}
    check_request_headers(headers, 10, b"HTTP/1.1", StowConfig())
    with pytest.raises(InvalidHeader):
        check_request_headers(headers, 10, b"HTTP/1.1", StowConfig(trust_forwarded_headers=True))


def test_several_accept_lines_are_one_list() -> None:
    """Accept on two field lines is one list (RFC 9110 §5.3): XML from the second line."""
    headers = {**HEADERS, b"accept": [b"text/html", b"application/dicom+xml"]}
    admission = admit(Target("/"), headers, 10, REACHED, StowConfig(), DEFAULT_POLICY)
    assert admission.response_type == DICOM_XML


@pytest.mark.parametrize(
    "target",
    [
        Target("/x", workflow_id=".."),
        Target("/x", workflow_id="a\r\nb"),
        Target("/x", ae_title="A\\B"),
    ],
)
def test_bad_route_segments_are_400(target: Target) -> None:
    """A workflow id or AE title outside its rule: InvalidRequestTarget (400)."""
    with pytest.raises(InvalidRequestTarget):
        admit(target, HEADERS, 10, REACHED, StowConfig(), DEFAULT_POLICY)


def test_a_long_route_name_is_cut_in_the_detail() -> None:
    """A 15,000-character workflow id is quoted cut to errors.shorten's length, not echoed."""
    target = Target("/x", workflow_id="w" * 15_000)
    with pytest.raises(InvalidRequestTarget) as raised:
        admit(target, HEADERS, 10, REACHED, StowConfig(), DEFAULT_POLICY)
    quoted = "'" + "w" * (DETAIL_TEXT_CHARS - 1) + "..."
    assert raised.value.detail == f"workflow id {quoted}: a workflow id has 1 to 64 characters"


def test_leading_zero_study_needs_the_option() -> None:
    """{study} 1.02.3: 400 by default, a target with --accept-leading-zero-uids."""
    target = Target("/studies", study_uid="1.02.3")
    with pytest.raises(InvalidStudyUID):
        admit(target, HEADERS, 10, REACHED, StowConfig(), DEFAULT_POLICY)
    lenient = StowConfig(accept_leading_zero_uids=True)
    assert admit(target, HEADERS, 10, REACHED, lenient, DEFAULT_POLICY).target == target


def test_unwanted_body_is_413_over_the_limit_else_400() -> None:
    """A body on OPTIONS: 413 over --max-body-size, else 400, both from the headers."""
    with pytest.raises(BodyTooLarge):
        refuse_unwanted_body(10**9, StowConfig(max_body_bytes=1024))
    with pytest.raises(UnexpectedContent):
        refuse_unwanted_body(100, StowConfig(max_body_bytes=1024))
    with pytest.raises(UnexpectedContent):
        refuse_unwanted_body(None, StowConfig())
