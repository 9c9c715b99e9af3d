"""Conformance over real HTTP: response formats, policies, URLs, errors, CORS, statuses.

Each test starts its own in-process server (``stow_server``); a test that needs
options parametrizes ``stow_config`` indirectly.  Uploads use the small files
pydicom bundles, or modified copies written with pydicom into ``tmp_path``.
Requests the server must refuse from the headers alone go over raw sockets,
so that what the server sends (and when) is seen byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import pytest_twisted
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
    generate_uid,
)
from twisted.internet.threads import deferToThread

from tests.dicom_files import MR, NO_META, SR, TEST_FILES, read, stored_path, uids
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.conftest import Server
from tests.integration.observe import stored_files
from tests.integration.streaming import (
    ChunkedProducer,
    fixed_length,
    raw_exchange,
    split,
)
from twisted_stow.core.config import StowConfig
from twisted_stow.core.policy import Duplicates, StudyMismatch

BOUNDARY = "conformance-boundary-0123456789"
# MR_small as Implicit VR Little Endian: same UIDs as MR, another transfer syntax.
MR_IMPLICIT = TEST_FILES / "MR_small_implicit.dcm"

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
PROBLEM_JSON = "application/problem+json"

# Store Instances Response Module (PS3.18 Annex I).
RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
OTHER_FAILURES_SEQUENCE = "0008119A"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
WARNING_REASON = "00081196"
FAILURE_REASON = "00081197"

# Reason codes, decimal as they appear in the module.
DUPLICATE_SOP_INSTANCE = 0x0111  # 273
SOP_CLASS_NOT_SUPPORTED = 0x0122  # 290
DATA_SET_DOES_NOT_MATCH = 0xA900  # 43264
CANNOT_UNDERSTAND = 0xC000  # 49152
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122  # 49442
WARNING_DOES_NOT_MATCH = 0xB007  # 45063

NATIVE_DICOM = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"
WARNING_299 = re.compile(r'^299 \S+ "(.*)"$')

CORS_ORIGIN = "https://viewer.example"
CORS_CONFIG = StowConfig(cors_origins=(CORS_ORIGIN,))
SMALL_LIMIT_BYTES = 4096  # below the size of MR_small (9,830 bytes)

# Every STOW route, one per family and per study-ness.
ALL_ROUTES = [
    "/studies",
    "/studies/{study}",
    "/dicomweb/studies",
    "/dicomweb/studies/{study}",
    "/dicomweb/wf-1/studies",
    "/dicomweb/wf-1/studies/{study}",
    "/aets/STOWAE/rs/studies",
    "/aets/STOWAE/rs/studies/{study}",
]
REJECTING_STUDY_ROUTES = ["/studies/{study}", "/aets/STOWAE/rs/studies/{study}"]
WARNING_STUDY_ROUTES = ["/dicomweb/studies/{study}", "/dicomweb/wf-1/studies/{study}"]


@pytest.fixture
def stow_config(request: pytest.FixtureRequest) -> StowConfig:
    """The default configuration, or the one a test parametrizes indirectly."""
    return getattr(request, "param", StowConfig())


def with_config(*configs: StowConfig, ids: list[str] | None = None) -> Any:
    """Run the test against a server started with each of ``configs``."""
    return pytest.mark.parametrize("stow_config", list(configs), indirect=True, ids=ids)


# --- requests and replies --------------------------------------------------


@dataclass
class Reply:
    """One HTTP response: status, headers (lower-case names) and body."""

    code: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


async def request(
    client: Any,
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, list[str]] | None = None,
) -> Reply:
    """Send one request with treq; the whole response."""
    response = await client.request(method, url, data=body, headers=headers or {})
    content = await response.content()
    names: dict[str, list[str]] = {}
    for name, values in response.headers.getAllRawHeaders():
        names.setdefault(name.decode("latin-1").lower(), []).extend(
            v.decode("latin-1") for v in values
        )
    return Reply(response.code, names, content)


async def post_multipart(
    client: Any,
    url: str,
    parts: list[bytes],
    headers: dict[str, list[str]] | None = None,
) -> Reply:
    """POST ``parts`` as multipart/related with Content-Length."""
    body = build_multipart(parts, BOUNDARY)
    all_headers = {"Content-Type": [multipart_content_type(BOUNDARY)], **(headers or {})}
    return await request(client, "POST", url, fixed_length(body), all_headers)


async def post_single(
    client: Any, url: str, part: bytes, headers: dict[str, list[str]] | None = None
) -> Reply:
    """POST one bare application/dicom instance."""
    all_headers = {"Content-Type": ["application/dicom"], **(headers or {})}
    return await request(client, "POST", url, fixed_length(part), all_headers)


def parse_raw(raw: bytes) -> Reply:
    """The first final response in raw HTTP bytes (Content-Length, chunked or close framed)."""
    head, separator, rest = raw.partition(b"\r\n\r\n")
    assert separator, f"no complete response head in {raw[:200]!r}"
    while head.startswith(b"HTTP/1.1 1"):  # interim 1xx responses carry no body
        head, separator, rest = rest.partition(b"\r\n\r\n")
        assert separator, f"no final response in {raw[:200]!r}"
    lines = head.split(b"\r\n")
    code = int(lines[0].split(b" ", 2)[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.decode("latin-1").strip().lower(), []).append(
            value.decode("latin-1").strip()
        )
    if "content-length" in headers:
        body = rest[: int(headers["content-length"][0])]
    elif headers.get("transfer-encoding", [""])[0].lower() == "chunked":
        body = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
    else:
        body = rest
    return Reply(code, headers, body)


async def raw_request(
    port: int, data: bytes, *, shutdown_write: bool = False
) -> tuple[bytes, Reply]:
    """Send raw bytes on a fresh socket; everything received, and the first response."""
    raw = await deferToThread(raw_exchange, port, data, shutdown_write=shutdown_write)
    return raw, parse_raw(raw)


def head(method: str, path: str, *lines: str) -> bytes:
    """A request head: request line, Host and ``lines``, ending with the empty line."""
    text = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    text += "".join(f"{line}\r\n" for line in lines)
    return (text + "\r\n").encode("latin-1")


# --- assertions --------------------------------------------------------------


def module_of(reply: Reply, status: int, media_type: str = DICOM_JSON) -> dict[str, Any]:
    """Assert a Store Instances Response with ``status``; return it as a JSON model."""
    assert reply.code == status, (reply.code, reply.body[:500])
    assert reply.headers.get("content-type") == [media_type]
    if media_type == DICOM_XML:
        return xml_model(reply.body)
    model: dict[str, Any] = reply.json()
    return model


def assert_problem(reply: Reply, status: int) -> dict[str, Any]:
    """Assert an RFC 7807 problem document for ``status``; return it."""
    assert reply.code == status, (reply.code, reply.body[:500])
    assert reply.headers.get("content-type") == [PROBLEM_JSON]
    document: dict[str, Any] = reply.json()
    assert document["status"] == status
    assert document["type"] == "about:blank"
    assert document["title"] and document["detail"]
    return document


def warning_text(reply: Reply) -> str:
    """The text of the response's ``Warning: 299 <agent> "<text>"`` header."""
    values = reply.headers.get("warning")
    assert values and len(values) == 1, reply.headers
    match = WARNING_299.match(values[0])
    assert match, values[0]
    return match.group(1)


def items(model: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    """The items of a sequence of a DICOM JSON model ([] when absent)."""
    result: list[dict[str, Any]] = model.get(tag, {}).get("Value", [])
    return result


def value(item: dict[str, Any], tag: str) -> Any:
    """The single value of an attribute (None when absent)."""
    return item[tag]["Value"][0] if tag in item else None


def failed(model: dict[str, Any]) -> list[tuple[str | None, str, int]]:
    """FailedSOPSequence as (SOP Class, SOP Instance, FailureReason) triples."""
    return [
        (
            value(item, REFERENCED_SOP_CLASS_UID),
            value(item, REFERENCED_SOP_INSTANCE_UID),
            value(item, FAILURE_REASON),
        )
        for item in items(model, FAILED_SOP_SEQUENCE)
    ]


def other_failures(model: dict[str, Any]) -> list[int]:
    """FailureReason values of OtherFailuresSequence."""
    return [value(item, FAILURE_REASON) for item in items(model, OTHER_FAILURES_SEQUENCE)]


def referenced(model: dict[str, Any]) -> list[tuple[str, str, int | None]]:
    """ReferencedSOPSequence as (SOP Class, SOP Instance, WarningReason or None)."""
    return [
        (
            value(item, REFERENCED_SOP_CLASS_UID),
            value(item, REFERENCED_SOP_INSTANCE_UID),
            value(item, WARNING_REASON),
        )
        for item in items(model, REFERENCED_SOP_SEQUENCE)
    ]


def xml_model(body: bytes) -> dict[str, Any]:
    """Read a PS3.19 NativeDicomModel back into the DICOM JSON model it renders."""
    root = ET.fromstring(body)
    assert root.tag == NATIVE_DICOM + "NativeDicomModel"
    return _xml_dataset(root)


def _numbered(element: ET.Element, child: str) -> list[ET.Element]:
    children = element.findall(NATIVE_DICOM + child)
    assert [int(c.get("number", "0")) for c in children] == list(range(1, len(children) + 1))
    return children


def _xml_dataset(element: ET.Element) -> dict[str, Any]:
    model: dict[str, Any] = {}
    for attribute in element.findall(NATIVE_DICOM + "DicomAttribute"):
        tag, vr = attribute.get("tag"), attribute.get("vr")
        assert tag and vr
        entry: dict[str, Any] = {"vr": vr}
        if vr == "SQ":
            values: list[Any] = [_xml_dataset(i) for i in _numbered(attribute, "Item")]
        else:
            texts = [v.text or "" for v in _numbered(attribute, "Value")]
            values = [int(t) for t in texts] if vr == "US" else texts
        if values:
            entry["Value"] = values
        model[tag] = entry
    return model


# --- files and storage ---------------------------------------------------------


def write_copy(source: Path, target: Path, change: Callable[[pydicom.Dataset], None]) -> bytes:
    """Write ``source`` changed by ``change`` to ``target`` with pydicom; its bytes."""
    ds = pydicom.dcmread(source)
    change(ds)
    ds.save_as(target)
    return target.read_bytes()


def study_url(server: Server, path: str) -> str:
    """``path`` on the server, with {study} the Study Instance UID of CT_small."""
    return server.url + path.format(study=CT_STUDY)


CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"  # CT_small's study, not MR's
MR_CLASS, MR_SOP, MR_STUDY, MR_SERIES = uids(MR)
SR_CLASS, SR_SOP, SR_STUDY, SR_SERIES = uids(SR)


def test_fixture_uids() -> None:
    """The constants above match the bundled files (MR and SR are other studies than CT)."""
    assert CT_STUDY == uids(TEST_FILES / "CT_small.dcm")[2]
    assert len({CT_STUDY, MR_STUDY, SR_STUDY}) == 3
    assert MR_CLASS == MRImageStorage
    assert uids(MR_IMPLICIT) == uids(MR)
    assert pydicom.dcmread(MR_IMPLICIT).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert pydicom.dcmread(MR).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


# --- 1. JSON and XML responses, Accept negotiation ---------------------------


@pytest.mark.parametrize(
    ("path", "expected_referenced", "expected_failed"),
    [
        # Standard route: MR's other study is refused (FailedSOPSequence).
        (
            "/studies/{study}",
            [(SR_CLASS, SR_SOP, None)],
            [(MR_CLASS, MR_SOP, DATA_SET_DOES_NOT_MATCH)],
        ),
        # MONAI route: MR is stored with WarningReason B007.
        (
            "/dicomweb/studies/{study}",
            [(SR_CLASS, SR_SOP, None), (MR_CLASS, MR_SOP, WARNING_DOES_NOT_MATCH)],
            [],
        ),
    ],
    ids=["standard", "monai"],
)
@pytest_twisted.ensureDeferred
async def test_json_and_xml_carry_the_same_module(
    stow_server: Server,
    client: Any,
    path: str,
    expected_referenced: list[Any],
    expected_failed: list[Any],
) -> None:
    """One upload answered as DICOM JSON and as PS3.19 XML: the same model, UIDs and reasons."""
    # {study} is SR's study here, so SR is the instance that matches it.
    url = stow_server.url + path.format(study=SR_STUDY)
    parts = [read(SR), read(MR), read(NO_META)]
    as_json = await post_multipart(client, url, parts, {"Accept": [DICOM_JSON]})
    # The re-send is idempotent (identical duplicates succeed): same outcomes.
    as_xml = await post_multipart(client, url, parts, {"Accept": [DICOM_XML]})

    json_model = module_of(as_json, 202)
    assert module_of(as_xml, 202, DICOM_XML) == json_model
    assert referenced(json_model) == expected_referenced
    assert failed(json_model) == expected_failed
    assert other_failures(json_model) == [CANNOT_UNDERSTAND]
    # One study stored: the top-level RetrieveURL names it; two: it is absent.
    studies_stored = {uid for _, uid, _ in expected_referenced}
    expected_top = url if len(studies_stored) == 1 else None
    assert value(json_model, RETRIEVE_URL) == expected_top
    assert b'keyword="FailureReason"' in as_xml.body
    assert as_json.header("warning") == as_xml.header("warning")


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (None, DICOM_JSON),
        ("*/*", DICOM_JSON),
        ("application/*", DICOM_JSON),
        (DICOM_JSON, DICOM_JSON),
        (DICOM_XML, DICOM_XML),
        ("application/dicom+json;q=0.5, application/dicom+xml", DICOM_XML),
        ("application/dicom+xml;q=0.4, application/dicom+json;q=0.9", DICOM_JSON),
        ("*/*;q=0.1, application/dicom+xml;q=0.8", DICOM_XML),
        ("text/html, application/dicom+xml;q=0.2", DICOM_XML),
    ],
)
@pytest_twisted.ensureDeferred
async def test_accept_negotiation_picks_json_or_xml(
    stow_server: Server, client: Any, accept: str | None, media_type: str
) -> None:
    """Accept with q-values chooses the format; JSON unless XML is preferred; Content-Type set."""
    headers = {} if accept is None else {"Accept": [accept]}
    reply = await post_single(client, stow_server.url + "/studies", read(SR), headers)
    model = module_of(reply, 200, media_type)
    assert referenced(model) == [(SR_CLASS, SR_SOP, None)]


@pytest.mark.parametrize(
    "accept",
    [
        "text/html",
        "image/jpeg",
        "text/*",
        "application/dicom+json;q=0, application/dicom+xml;q=0",
        "*/*;q=0",
    ],
)
@pytest_twisted.ensureDeferred
async def test_accept_allowing_neither_format_is_406(stow_server: Server, accept: str) -> None:
    """An Accept that rules out both DICOM JSON and XML: 406 problem+json before the body."""
    raw, reply = await raw_request(
        stow_server.port,
        head(
            "POST",
            "/studies",
            "Content-Type: application/dicom",
            f"Content-Length: {len(read(SR))}",
            f"Accept: {accept}",
            "Expect: 100-continue",
            "Connection: close",
        )
        + read(SR),
    )
    assert_problem(reply, 406)
    assert b"100 Continue" not in raw
    assert stored_files(stow_server.storage) == []


# --- 2. the Study Instance UID of the target URL -------------------------------


@pytest.mark.parametrize("path", REJECTING_STUDY_ROUTES)
@pytest_twisted.ensureDeferred
async def test_study_mismatch_rejected_on_standard_and_dcm4chee_routes(
    stow_server: Server, client: Any, path: str
) -> None:
    """An instance of another study than /studies/{study}: not stored, 0xA900, 409."""
    reply = await post_multipart(client, study_url(stow_server, path), [read(MR)])
    model = module_of(reply, 409)
    assert failed(model) == [(MR_CLASS, MR_SOP, DATA_SET_DOES_NOT_MATCH)]
    assert REFERENCED_SOP_SEQUENCE not in model
    assert "A900" in warning_text(reply)
    assert stored_files(stow_server.storage) == []


@pytest.mark.parametrize("path", WARNING_STUDY_ROUTES)
@pytest_twisted.ensureDeferred
async def test_study_mismatch_warned_on_monai_routes(
    stow_server: Server, client: Any, path: str
) -> None:
    """On the MONAI routes an instance of another study is stored with WarningReason 0xB007, 202."""
    reply = await post_multipart(client, study_url(stow_server, path), [read(MR)])
    model = module_of(reply, 202)
    assert referenced(model) == [(MR_CLASS, MR_SOP, WARNING_DOES_NOT_MATCH)]
    assert FAILED_SOP_SEQUENCE not in model
    assert "B007" in warning_text(reply)
    assert stored_path(stow_server.storage, MR).read_bytes() == read(MR)


@with_config(StowConfig(study_mismatch=StudyMismatch.REJECT), ids=["reject"])
@pytest.mark.parametrize("path", WARNING_STUDY_ROUTES)
@pytest_twisted.ensureDeferred
async def test_study_mismatch_reject_option_overrides_monai_default(
    stow_server: Server, client: Any, path: str
) -> None:
    """study_mismatch=REJECT: the MONAI routes refuse another study too (0xA900, 409)."""
    reply = await post_multipart(client, study_url(stow_server, path), [read(MR)])
    model = module_of(reply, 409)
    assert failed(model) == [(MR_CLASS, MR_SOP, DATA_SET_DOES_NOT_MATCH)]
    assert stored_files(stow_server.storage) == []


@with_config(StowConfig(study_mismatch=StudyMismatch.WARN), ids=["warn"])
@pytest.mark.parametrize("path", REJECTING_STUDY_ROUTES)
@pytest_twisted.ensureDeferred
async def test_study_mismatch_warn_option_overrides_standard_default(
    stow_server: Server, client: Any, path: str
) -> None:
    """study_mismatch=WARN: standard and dcm4chee routes store another study with 0xB007, 202."""
    reply = await post_multipart(client, study_url(stow_server, path), [read(MR)])
    model = module_of(reply, 202)
    assert referenced(model) == [(MR_CLASS, MR_SOP, WARNING_DOES_NOT_MATCH)]
    assert stored_path(stow_server.storage, MR).read_bytes() == read(MR)


# --- 3. allow-lists, the transfer-syntax hint, SOP Class consistency -----------


@with_config(StowConfig(sop_classes=frozenset({MRImageStorage})), ids=["mr-only"])
@pytest_twisted.ensureDeferred
async def test_refused_sop_class_is_0122(stow_server: Server, client: Any) -> None:
    """A SOP Class outside the allow-list: FailureReason 0x0122 (290), the allowed one stored."""
    reply = await post_multipart(client, stow_server.url + "/studies", [read(SR), read(MR)])
    model = module_of(reply, 202)
    assert failed(model) == [(SR_CLASS, SR_SOP, SOP_CLASS_NOT_SUPPORTED)]
    assert referenced(model) == [(MR_CLASS, MR_SOP, None)]
    assert stored_files(stow_server.storage) == [stored_path(stow_server.storage, MR)]


@with_config(StowConfig(transfer_syntaxes=frozenset({ExplicitVRLittleEndian})), ids=["explicit-le"])
@pytest_twisted.ensureDeferred
async def test_refused_transfer_syntax_is_c122(stow_server: Server, client: Any) -> None:
    """A transfer syntax outside the allow-list: FailureReason 0xC122 (49442), 409."""
    reply = await post_multipart(client, stow_server.url + "/studies", [read(MR_IMPLICIT)])
    model = module_of(reply, 409)
    assert failed(model) == [(MR_CLASS, MR_SOP, TRANSFER_SYNTAX_NOT_SUPPORTED)]
    assert stored_files(stow_server.storage) == []


def _hinted_request(part: bytes, placement: str, hint: str) -> tuple[bytes, dict[str, list[str]]]:
    """A body carrying ``part`` with ``transfer-syntax=hint`` at ``placement``."""
    if placement == "single-part":
        return part, {"Content-Type": [f"application/dicom; transfer-syntax={hint}"]}
    if placement == "multipart-root":
        content_type = multipart_content_type(BOUNDARY) + f"; transfer-syntax={hint}"
        return build_multipart([part], BOUNDARY), {"Content-Type": [content_type]}
    body = build_multipart(
        [part],
        BOUNDARY,
        part_headers=[[("Content-Type", f"application/dicom; transfer-syntax={hint}")]],
    )
    return body, {"Content-Type": [multipart_content_type(BOUNDARY)]}


HINT_PLACEMENTS = ["single-part", "multipart-root", "part-header"]


@pytest.mark.parametrize("placement", HINT_PLACEMENTS)
@pytest_twisted.ensureDeferred
async def test_transfer_syntax_parameter_is_only_a_hint(
    stow_server: Server, client: Any, placement: str
) -> None:
    """transfer-syntax=JPEG Baseline on an Explicit VR LE file: stored as sent (file meta wins)."""
    body, headers = _hinted_request(read(MR), placement, JPEGBaseline8Bit)
    reply = await request(client, "POST", stow_server.url + "/studies", fixed_length(body), headers)
    assert referenced(module_of(reply, 200)) == [(MR_CLASS, MR_SOP, None)]
    assert stored_path(stow_server.storage, MR).read_bytes() == read(MR)


@with_config(StowConfig(transfer_syntaxes=frozenset({ExplicitVRLittleEndian})), ids=["explicit-le"])
@pytest.mark.parametrize("placement", HINT_PLACEMENTS)
@pytest_twisted.ensureDeferred
async def test_transfer_syntax_allow_list_judges_the_file_meta(
    stow_server: Server, client: Any, placement: str
) -> None:
    """An allowed hint on a refused file is 0xC122; a refused hint on an allowed file is stored."""
    url = stow_server.url + "/studies"
    body, headers = _hinted_request(read(MR_IMPLICIT), placement, ExplicitVRLittleEndian)
    reply = await request(client, "POST", url, fixed_length(body), headers)
    assert failed(module_of(reply, 409)) == [(MR_CLASS, MR_SOP, TRANSFER_SYNTAX_NOT_SUPPORTED)]
    assert stored_files(stow_server.storage) == []

    body, headers = _hinted_request(read(MR), placement, ImplicitVRLittleEndian)
    reply = await request(client, "POST", url, fixed_length(body), headers)
    assert referenced(module_of(reply, 200)) == [(MR_CLASS, MR_SOP, None)]
    assert stored_path(stow_server.storage, MR).read_bytes() == read(MR)


@pytest_twisted.ensureDeferred
async def test_sop_class_differing_from_media_storage_sop_class_is_a900(
    stow_server: Server, client: Any, tmp_path: Path
) -> None:
    """SOP Class UID (0008,0016) ≠ MediaStorageSOPClassUID (0002,0002): 0xA900, not stored."""

    def claim_ct(ds: pydicom.Dataset) -> None:
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage

    part = write_copy(MR, tmp_path / "mr-claims-ct.dcm", claim_ct)
    reply = await post_multipart(client, stow_server.url + "/studies", [part])
    assert failed(module_of(reply, 409)) == [(MR_CLASS, MR_SOP, DATA_SET_DOES_NOT_MATCH)]
    assert stored_files(stow_server.storage) == []


# --- 4. duplicates --------------------------------------------------------------


def _rename_patient(ds: pydicom.Dataset) -> None:
    ds.PatientName = "Other^Bytes"


@pytest_twisted.ensureDeferred
async def test_identical_duplicate_succeeds_without_rewriting(
    stow_server: Server, client: Any
) -> None:
    """The same bytes sent again: 200 success, the stored file untouched (inode, mtime)."""
    first = await post_single(client, stow_server.url + "/studies", read(MR))
    module_of(first, 200)
    path = stored_path(stow_server.storage, MR)
    before = path.stat()

    again = await post_single(client, stow_server.url + "/studies", read(MR))
    model = module_of(again, 200)
    assert referenced(model) == [(MR_CLASS, MR_SOP, None)]
    assert FAILED_SOP_SEQUENCE not in model
    assert again.header("warning") is None
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_nlink) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_nlink,
    )
    assert path.read_bytes() == read(MR)


@pytest_twisted.ensureDeferred
async def test_conflicting_duplicate_rejected_with_0111(
    stow_server: Server, client: Any, tmp_path: Path
) -> None:
    """Other bytes under a stored SOP Instance UID: FailureReason 0x0111 (273), old file kept."""
    module_of(await post_single(client, stow_server.url + "/studies", read(MR)), 200)
    path = stored_path(stow_server.storage, MR)
    before = path.stat()
    changed = write_copy(MR, tmp_path / "mr-changed.dcm", _rename_patient)
    assert changed != read(MR)

    reply = await post_single(client, stow_server.url + "/studies", changed)
    model = module_of(reply, 409)
    assert failed(model) == [(MR_CLASS, MR_SOP, DUPLICATE_SOP_INSTANCE)]
    assert "0111" in warning_text(reply)
    assert path.read_bytes() == read(MR)
    assert path.stat().st_ino == before.st_ino


@with_config(StowConfig(duplicates=Duplicates.OVERWRITE), ids=["overwrite"])
@pytest_twisted.ensureDeferred
async def test_overwrite_option_replaces_conflicting_duplicate(
    stow_server: Server, client: Any, tmp_path: Path
) -> None:
    """duplicates=OVERWRITE: other bytes under a stored SOP Instance UID replace the file."""
    module_of(await post_single(client, stow_server.url + "/studies", read(MR)), 200)
    changed = write_copy(MR, tmp_path / "mr-changed.dcm", _rename_patient)

    reply = await post_single(client, stow_server.url + "/studies", changed)
    assert referenced(module_of(reply, 200)) == [(MR_CLASS, MR_SOP, None)]
    assert stored_path(stow_server.storage, MR).read_bytes() == changed
    assert stored_files(stow_server.storage) == [stored_path(stow_server.storage, MR)]


# --- 5. RetrieveURL --------------------------------------------------------------


def instance_path(study: str, series: str, sop: str) -> str:
    return f"/studies/{study}/series/{series}/instances/{sop}"


MR_INSTANCE_PATH = instance_path(MR_STUDY, MR_SERIES, MR_SOP)


def retrieve_urls(model: dict[str, Any]) -> tuple[str | None, list[str]]:
    """(top-level RetrieveURL or None, per-instance RetrieveURLs)."""
    per_instance = [value(item, RETRIEVE_URL) for item in items(model, REFERENCED_SOP_SEQUENCE)]
    return value(model, RETRIEVE_URL), per_instance


@with_config(StowConfig(public_url="https://pacs.example.org/dicom-web/"), ids=["public-url"])
@pytest.mark.parametrize("path", ["/studies", "/aets/STOWAE/rs/studies"])
@pytest_twisted.ensureDeferred
async def test_retrieve_url_from_public_url(stow_server: Server, client: Any, path: str) -> None:
    """With public_url set, RetrieveURLs start with it (plus the route base), whatever the Host."""
    reply = await post_single(
        client, stow_server.url + path, read(MR), {"Host": ["ignored.example:1234"]}
    )
    base = "https://pacs.example.org/dicom-web" + path.removesuffix("/studies")
    top, per_instance = retrieve_urls(module_of(reply, 200))
    assert top == f"{base}/studies/{MR_STUDY}"
    assert per_instance == [base + MR_INSTANCE_PATH]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("stow.example:8443", "http://stow.example:8443"),
        ("stow.example", "http://stow.example:{port}"),
    ],
    ids=["host-with-port", "host-without-port"],
)
@pytest_twisted.ensureDeferred
async def test_retrieve_url_from_host_header(
    stow_server: Server, client: Any, host: str, expected: str
) -> None:
    """Without public_url the Host header names the server; a Host without port gets ours."""
    reply = await post_single(client, stow_server.url + "/studies", read(MR), {"Host": [host]})
    base = expected.format(port=stow_server.port)
    top, per_instance = retrieve_urls(module_of(reply, 200))
    assert top == f"{base}/studies/{MR_STUDY}"
    assert per_instance == [base + MR_INSTANCE_PATH]


FORWARDED = {"X-Forwarded-Proto": ["https"], "X-Forwarded-Host": ["proxy.example"]}


@with_config(StowConfig(trust_forwarded_headers=True), ids=["trusted"])
@pytest_twisted.ensureDeferred
async def test_retrieve_url_honours_forwarded_headers_when_trusted(
    stow_server: Server, client: Any
) -> None:
    """trust_forwarded_headers=True: X-Forwarded-Proto/Host build the RetrieveURLs."""
    reply = await post_single(client, stow_server.url + "/studies", read(MR), FORWARDED)
    top, per_instance = retrieve_urls(module_of(reply, 200))
    assert top == f"https://proxy.example/studies/{MR_STUDY}"
    assert per_instance == ["https://proxy.example" + MR_INSTANCE_PATH]


@pytest_twisted.ensureDeferred
async def test_retrieve_url_ignores_forwarded_headers_by_default(
    stow_server: Server, client: Any
) -> None:
    """By default X-Forwarded-Proto/Host are ignored: the URLs name the server as reached."""
    reply = await post_single(client, stow_server.url + "/studies", read(MR), FORWARDED)
    top, per_instance = retrieve_urls(module_of(reply, 200))
    assert top == f"{stow_server.url}/studies/{MR_STUDY}"
    assert per_instance == [stow_server.url + MR_INSTANCE_PATH]


@pytest_twisted.ensureDeferred
async def test_top_level_retrieve_url_only_for_a_single_study(
    stow_server: Server, client: Any, tmp_path: Path
) -> None:
    """Top-level RetrieveURL is the study URL for one study stored, absent for two."""
    sibling_uid = generate_uid()

    def sibling(ds: pydicom.Dataset) -> None:
        ds.SOPInstanceUID = sibling_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sibling_uid

    same_study = write_copy(MR, tmp_path / "mr-sibling.dcm", sibling)
    one = await post_multipart(client, stow_server.url + "/studies", [read(MR), same_study])
    top, per_instance = retrieve_urls(module_of(one, 200))
    assert top == f"{stow_server.url}/studies/{MR_STUDY}"
    assert per_instance == [
        stow_server.url + MR_INSTANCE_PATH,
        stow_server.url + instance_path(MR_STUDY, MR_SERIES, sibling_uid),
    ]

    two = await post_multipart(client, stow_server.url + "/studies", [read(SR), read(MR)])
    model = module_of(two, 200)
    top, per_instance = retrieve_urls(model)
    assert top is None
    assert RETRIEVE_URL not in model
    assert per_instance == [
        stow_server.url + instance_path(SR_STUDY, SR_SERIES, SR_SOP),
        stow_server.url + MR_INSTANCE_PATH,
    ]


# --- 6. request-level errors: RFC 7807 problem documents, Warning header -----------


@pytest_twisted.ensureDeferred
async def test_400_problem_for_multipart_without_boundary(stow_server: Server) -> None:
    """multipart/related without boundary: 400 problem+json, answered before the body."""
    raw, reply = await raw_request(
        stow_server.port,
        head(
            "POST",
            "/studies",
            'Content-Type: multipart/related; type="application/dicom"',
            "Content-Length: 100000",
            "Expect: 100-continue",
        ),
    )
    assert_problem(reply, 400)
    assert b"100 Continue" not in raw


@pytest_twisted.ensureDeferred
async def test_404_problem_for_post_with_body_to_unknown_path(stow_server: Server) -> None:
    """POST with a body to a path that is no STOW route: 404 problem+json, body not read."""
    raw, reply = await raw_request(
        stow_server.port,
        head(
            "POST",
            "/no/such/resource",
            "Content-Type: application/dicom",
            "Content-Length: 100000",
            "Expect: 100-continue",
        ),
    )
    document = assert_problem(reply, 404)
    assert document["instance"] == "/no/such/resource"
    assert b"100 Continue" not in raw


@pytest_twisted.ensureDeferred
async def test_411_problem_for_post_without_length(stow_server: Server) -> None:
    """POST with neither Content-Length nor chunked framing: 411 problem+json."""
    _, reply = await raw_request(
        stow_server.port,
        head("POST", "/studies", "Content-Type: application/dicom") + read(SR)[:200],
    )
    assert_problem(reply, 411)
    assert stored_files(stow_server.storage) == []


@with_config(StowConfig(max_body_bytes=SMALL_LIMIT_BYTES), ids=["limit"])
@pytest_twisted.ensureDeferred
async def test_413_problem_from_content_length_before_the_body(stow_server: Server) -> None:
    """Content-Length over max_body_bytes: 413 problem+json at once, no 100 Continue sent."""
    raw, reply = await raw_request(
        stow_server.port,
        head(
            "POST",
            "/studies",
            "Content-Type: application/dicom",
            f"Content-Length: {len(read(MR))}",
            "Expect: 100-continue",
        ),
    )
    assert_problem(reply, 413)
    assert b"100 Continue" not in raw
    assert stored_files(stow_server.storage) == []


@with_config(StowConfig(max_body_bytes=SMALL_LIMIT_BYTES), ids=["limit"])
@pytest_twisted.ensureDeferred
async def test_413_problem_mid_stream_for_chunked_body(stow_server: Server) -> None:
    """A chunked body growing past max_body_bytes: 413 problem+json mid-stream, nothing stored."""
    body = build_multipart([read(MR)], BOUNDARY)
    # About 6 KiB of chunks, past the limit; the terminating chunk is never sent.
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in split(body[:6000], 1000))
    raw, reply = await raw_request(
        stow_server.port,
        head(
            "POST",
            "/studies",
            f"Content-Type: {multipart_content_type(BOUNDARY)}",
            "Transfer-Encoding: chunked",
        )
        + chunks,
    )
    assert_problem(reply, 413)
    assert raw.count(b"HTTP/1.1 ") == 1
    assert stored_files(stow_server.storage) == []


@pytest_twisted.ensureDeferred
async def test_415_problem_lists_supported_types(stow_server: Server) -> None:
    """An unsupported request Content-Type: 415 problem+json naming the supported types."""
    raw, reply = await raw_request(
        stow_server.port,
        head(
            "POST",
            "/studies",
            "Content-Type: application/dicom+json",
            "Content-Length: 100000",
            "Expect: 100-continue",
        ),
    )
    document = assert_problem(reply, 415)
    assert "multipart/related" in document["detail"]
    assert "application/dicom" in document["detail"]
    assert b"100 Continue" not in raw


@pytest_twisted.ensureDeferred
async def test_warning_header_only_when_something_failed(stow_server: Server, client: Any) -> None:
    """Failures bring a Warning: 299 header citing their codes; a clean success has none."""
    clean = await post_multipart(client, stow_server.url + "/studies", [read(MR)])
    module_of(clean, 200)
    assert clean.header("warning") is None

    mixed = await post_multipart(client, stow_server.url + "/studies", [read(SR), read(NO_META)])
    module_of(mixed, 202)
    assert "C000" in warning_text(mixed)


# --- 7. broken framing mid-body ----------------------------------------------------


def _broken_after_first_part(parts: list[bytes]) -> bytes:
    """A multipart body whose second part has a malformed header line, then more parts."""
    dash = b"--" + BOUNDARY.encode()
    good = b"\r\n" + dash + b"\r\nContent-Type: application/dicom\r\n\r\n" + parts[0] + b"\r\n"
    broken = dash + b"\r\nthis is no header line\r\n\r\n" + b"x" * 100 + b"\r\n"
    rest = build_multipart(parts[1:], BOUNDARY, leading_crlf=False)
    return good + broken + rest


@pytest.mark.parametrize(
    "damage_in_same_chunk",
    [False, True],
    ids=["damage-in-next-chunk", "damage-in-same-chunk"],
)
@pytest_twisted.ensureDeferred
async def test_broken_framing_keeps_parts_before_the_damage(
    stow_server: Server, client: Any, damage_in_same_chunk: bool
) -> None:
    """Framing broken after a complete part: it is stored, the rest is one 0xC000 failure, 202."""
    body = _broken_after_first_part([read(SR), read(MR)])
    damage = body.index(b"this is no header line")
    # One HTTP chunk reaches the parser as one feed.  The first part's closing
    # delimiter either ends a chunk or shares its chunk with the damage (as in
    # any read of a real socket that holds both).
    cut = damage - 500 if damage_in_same_chunk else damage
    chunks = [body[:cut], body[cut:]]
    reply = await request(
        client,
        "POST",
        stow_server.url + "/studies",
        ChunkedProducer(chunks),
        {"Content-Type": [multipart_content_type(BOUNDARY)]},
    )
    model = module_of(reply, 202)
    assert referenced(model) == [(SR_CLASS, SR_SOP, None)]
    assert other_failures(model) == [CANNOT_UNDERSTAND]
    assert FAILED_SOP_SEQUENCE not in model
    assert "C000" in warning_text(reply)
    assert stored_files(stow_server.storage) == [stored_path(stow_server.storage, SR)]


@pytest_twisted.ensureDeferred
async def test_broken_framing_before_any_part_is_400(stow_server: Server, client: Any) -> None:
    """Framing broken in the first part's headers: nothing stored, 400 problem+json."""
    dash = b"--" + BOUNDARY.encode()
    body = b"\r\n" + dash + b"\r\nno header here\r\n\r\n" + read(SR) + b"\r\n" + dash + b"--\r\n"
    reply = await request(
        client,
        "POST",
        stow_server.url + "/studies",
        fixed_length(body),
        {"Content-Type": [multipart_content_type(BOUNDARY)]},
    )
    assert_problem(reply, 400)
    assert stored_files(stow_server.storage) == []


@pytest_twisted.ensureDeferred
async def test_truncated_body_keeps_completed_parts(stow_server: Server, client: Any) -> None:
    """A Content-Length body ending inside the second part: the first is stored, 0xC000, 202."""
    whole = build_multipart([read(SR), read(MR)], BOUNDARY)
    body = whole[: whole.index(read(MR)) + 1000]
    reply = await post_body(client, stow_server, body)
    model = module_of(reply, 202)
    assert referenced(model) == [(SR_CLASS, SR_SOP, None)]
    assert other_failures(model) == [CANNOT_UNDERSTAND]
    assert stored_files(stow_server.storage) == [stored_path(stow_server.storage, SR)]


@pytest_twisted.ensureDeferred
async def test_truncated_body_without_close_delimiter(stow_server: Server, client: Any) -> None:
    """A body that simply ends without --boundary--: completed parts stored, 0xC000, 202."""
    whole = build_multipart([read(SR), read(MR)], BOUNDARY)
    body = whole[: whole.rindex(b"--" + BOUNDARY.encode() + b"--")]
    reply = await post_body(client, stow_server, body)
    model = module_of(reply, 202)
    # MR's part ended with its CRLF, but no delimiter followed: only SR was complete.
    assert referenced(model) == [(SR_CLASS, SR_SOP, None)]
    assert other_failures(model) == [CANNOT_UNDERSTAND]
    assert stored_files(stow_server.storage) == [stored_path(stow_server.storage, SR)]


@pytest_twisted.ensureDeferred
async def test_truncated_first_part_is_400(stow_server: Server, client: Any) -> None:
    """A body that ends inside its first part stores nothing: 400 problem+json."""
    whole = build_multipart([read(SR)], BOUNDARY)
    reply = await post_body(client, stow_server, whole[: len(whole) // 2])
    assert_problem(reply, 400)
    assert stored_files(stow_server.storage) == []


async def post_body(client: Any, server: Server, body: bytes) -> Reply:
    """POST raw multipart bytes (framed with BOUNDARY) with Content-Length."""
    return await request(
        client,
        "POST",
        server.url + "/studies",
        fixed_length(body),
        {"Content-Type": [multipart_content_type(BOUNDARY)]},
    )


# --- 8. CORS -------------------------------------------------------------------------


def preflight_headers(origin: str) -> dict[str, list[str]]:
    return {
        "Origin": [origin],
        "Access-Control-Request-Method": ["POST"],
        "Access-Control-Request-Headers": ["Authorization, Content-Type"],
    }


def cors_headers(reply: Reply) -> dict[str, list[str]]:
    return {k: v for k, v in reply.headers.items() if k.startswith("access-control-")}


@with_config(CORS_CONFIG, ids=["cors"])
@pytest.mark.parametrize("path", ALL_ROUTES)
@pytest_twisted.ensureDeferred
async def test_cors_preflight_on_every_route(stow_server: Server, client: Any, path: str) -> None:
    """Preflight from a listed origin: 204, origin echoed, POST and Authorization allowed."""
    reply = await request(
        client, "OPTIONS", study_url(stow_server, path), headers=preflight_headers(CORS_ORIGIN)
    )
    assert reply.code == 204
    assert reply.header("access-control-allow-origin") == CORS_ORIGIN
    methods = reply.header("access-control-allow-methods") or ""
    assert "POST" in [m.strip() for m in methods.split(",")]
    allowed = [
        h.strip().lower() for h in (reply.header("access-control-allow-headers") or "").split(",")
    ]
    assert "authorization" in allowed
    assert "content-type" in allowed


@with_config(CORS_CONFIG, ids=["cors"])
@pytest_twisted.ensureDeferred
async def test_cors_post_response_carries_allow_origin(stow_server: Server, client: Any) -> None:
    """A POST from a listed origin gets Access-Control-Allow-Origin on its response."""
    reply = await post_single(
        client, stow_server.url + "/studies", read(MR), {"Origin": [CORS_ORIGIN]}
    )
    module_of(reply, 200)
    assert reply.header("access-control-allow-origin") == CORS_ORIGIN


@with_config(CORS_CONFIG, ids=["cors"])
@pytest_twisted.ensureDeferred
async def test_cors_unlisted_origin_gets_no_cors_headers(stow_server: Server, client: Any) -> None:
    """An origin not in cors_origins: no CORS headers on the preflight nor on the POST."""
    other = "https://evil.example"
    preflight = await request(
        client, "OPTIONS", stow_server.url + "/studies", headers=preflight_headers(other)
    )
    assert cors_headers(preflight) == {}
    reply = await post_single(client, stow_server.url + "/studies", read(MR), {"Origin": [other]})
    module_of(reply, 200)
    assert cors_headers(reply) == {}


@pytest_twisted.ensureDeferred
async def test_cors_off_by_default(stow_server: Server, client: Any) -> None:
    """Without cors_origins no response carries CORS headers, whatever the Origin."""
    preflight = await request(
        client, "OPTIONS", stow_server.url + "/studies", headers=preflight_headers(CORS_ORIGIN)
    )
    assert cors_headers(preflight) == {}
    reply = await post_single(
        client, stow_server.url + "/studies", read(MR), {"Origin": [CORS_ORIGIN]}
    )
    module_of(reply, 200)
    assert cors_headers(reply) == {}


# --- one test per status code ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_status_200_all_stored(stow_server: Server, client: Any) -> None:
    """200: every instance stored, no warning; the module lists them all."""
    reply = await post_multipart(client, stow_server.url + "/studies", [read(SR), read(MR)])
    model = module_of(reply, 200)
    assert referenced(model) == [(SR_CLASS, SR_SOP, None), (MR_CLASS, MR_SOP, None)]
    assert FAILED_SOP_SEQUENCE not in model and OTHER_FAILURES_SEQUENCE not in model


@pytest_twisted.ensureDeferred
async def test_status_202_some_stored(stow_server: Server, client: Any) -> None:
    """202: one instance stored, one part unreadable (OtherFailuresSequence 0xC000)."""
    reply = await post_multipart(client, stow_server.url + "/studies", [read(MR), os.urandom(500)])
    model = module_of(reply, 202)
    assert referenced(model) == [(MR_CLASS, MR_SOP, None)]
    assert other_failures(model) == [CANNOT_UNDERSTAND]


@pytest_twisted.ensureDeferred
async def test_status_400_invalid_study_uid(stow_server: Server, client: Any) -> None:
    """400: a {study} segment that is not a UID, problem+json."""
    reply = await post_multipart(client, stow_server.url + "/studies/1.2..3", [read(MR)])
    assert_problem(reply, 400)
    assert stored_files(stow_server.storage) == []


@pytest_twisted.ensureDeferred
async def test_status_404_unknown_path(stow_server: Server, client: Any) -> None:
    """404: POST to a path that is no STOW route, problem+json."""
    reply = await post_multipart(client, stow_server.url + "/dicomweb/wf-1/series", [read(MR)])
    assert_problem(reply, 404)
    assert stored_files(stow_server.storage) == []


@pytest_twisted.ensureDeferred
async def test_status_405_other_method(stow_server: Server, client: Any) -> None:
    """405: GET on a STOW route, Allow names POST, problem+json."""
    reply = await request(client, "GET", study_url(stow_server, "/dicomweb/wf-1/studies/{study}"))
    assert_problem(reply, 405)
    allow = [m.strip() for m in (reply.header("allow") or "").split(",")]
    assert "POST" in allow


@pytest_twisted.ensureDeferred
async def test_status_406_not_acceptable(stow_server: Server) -> None:
    """406: Accept: text/html only, problem+json."""
    _, reply = await raw_request(
        stow_server.port,
        head(
            "POST",
            "/studies",
            "Content-Type: application/dicom",
            f"Content-Length: {len(read(SR))}",
            "Accept: text/html",
            "Connection: close",
        )
        + read(SR),
    )
    assert_problem(reply, 406)
    assert stored_files(stow_server.storage) == []


@pytest_twisted.ensureDeferred
async def test_status_409_nothing_stored(stow_server: Server, client: Any) -> None:
    """409: no instance stored (study mismatch and unreadable part), the module lists why."""
    reply = await post_multipart(
        client, study_url(stow_server, "/studies/{study}"), [read(MR), read(NO_META)]
    )
    model = module_of(reply, 409)
    assert failed(model) == [(MR_CLASS, MR_SOP, DATA_SET_DOES_NOT_MATCH)]
    assert other_failures(model) == [CANNOT_UNDERSTAND]
    assert REFERENCED_SOP_SEQUENCE not in model and RETRIEVE_URL not in model
    assert warning_text(reply)


@pytest_twisted.ensureDeferred
async def test_status_411_length_required(stow_server: Server) -> None:
    """411: POST with neither Content-Length nor Transfer-Encoding, problem+json."""
    _, reply = await raw_request(
        stow_server.port,
        head("POST", "/dicomweb/studies", "Content-Type: application/dicom", "Connection: close"),
    )
    assert_problem(reply, 411)


@with_config(StowConfig(max_body_bytes=SMALL_LIMIT_BYTES), ids=["limit"])
@pytest_twisted.ensureDeferred
async def test_status_413_payload_too_large(stow_server: Server) -> None:
    """413: a body over max_body_bytes, problem+json."""
    _, reply = await raw_request(
        stow_server.port,
        head(
            "POST",
            "/studies",
            "Content-Type: application/dicom",
            f"Content-Length: {len(read(MR))}",
            "Connection: close",
        )
        + read(MR),
    )
    assert_problem(reply, 413)
    assert stored_files(stow_server.storage) == []


@pytest_twisted.ensureDeferred
async def test_status_415_unsupported_media_type(stow_server: Server, client: Any) -> None:
    """415: multipart/related of DICOM JSON metadata is not supported, problem+json."""
    body = build_multipart([b"[]"], BOUNDARY, content_type=DICOM_JSON)
    content_type = f'multipart/related; type="{DICOM_JSON}"; boundary={BOUNDARY}'
    reply = await request(
        client,
        "POST",
        stow_server.url + "/studies",
        fixed_length(body),
        {"Content-Type": [content_type]},
    )
    assert_problem(reply, 415)
