"""``admit``: everything a STOW request's headers decide, as one pure function.

Once the route is matched and the client authorized (both need the server:
werkzeug's map, the credential portal), the rest of the header-time decision
needs only plain values: the target the URL names, the request headers, the
announced length, how the connection was reached and the configuration.
``admit`` returns what the request may do (an ``Admission``) or raises the
``StowError`` that refuses it, in the order docs/CONFORMANCE.md §3.1 lists.
Standard library only, like the rest of ``core/``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .config import StowConfig
from .contentcoding import request_coding
from .digests import DigestFieldError, ExpectedDigest, content_digests, wanted_algorithm
from .errors import (
    BodyTooLarge,
    InvalidDigestField,
    InvalidHeader,
    InvalidRequestTarget,
    InvalidStudyUID,
    LengthRequired,
    NoParts,
    UnexpectedContent,
    UnknownWorkflow,
    shorten,
)
from .hostport import split_host_port
from .identifiers import ae_title_problem, host_problem, workflow_id_problem
from .mediatype import negotiate, reader_for
from .multipart import BodyReader
from .policy import IngestPolicy, StudyMismatch
from .singlepart import SinglePartReader
from .uids import is_valid_uid
from .validation import ValidationPolicy

# Route families: the standard PS3.18 paths, the MONAI Informatics Gateway
# paths (which trigger a workflow per POST) and dcm4chee-arc's per-AE paths.
STANDARD, MONAI, DCM4CHEE = "standard", "monai", "dcm4chee"
_STUDY_MISMATCH_DEFAULT = {
    STANDARD: StudyMismatch.REJECT,
    DCM4CHEE: StudyMismatch.REJECT,
    # The MONAI seed documents WarningReason B007 with 202 for a mismatch.
    MONAI: StudyMismatch.WARN,
}
_DEFAULT_PORTS = {"http": 80, "https": 443}

# Request headers as plain data: lower-case name → raw values, in order.
RawHeaders = Mapping[bytes, Sequence[bytes]]

# Every header the server reads whose value is one item, not a list: two
# field lines of one are a broken or smuggled request (RFC 9110 §5.3), and
# which one a proxy in front of us used is anybody's guess.  Content-Length
# and Transfer-Encoding are policed by HTTPChannel itself (a second one is
# its framing 400); Host by RFC 9112 §3.2.
SINGLETON_FIELDS = (
    b"host",
    b"content-type",
    b"content-length",
    b"authorization",
    b"origin",
)
# RFC 9110 §8.6: a recipient must guard against Content-Length overflow.  No
# body is longer than a signed 64-bit count of bytes (what sendfile, lseek
# and every peer's length field hold); a longer one is a broken request.
MAX_CONTENT_LENGTH = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Target:
    """What the URL of a STOW request says."""

    base_path: str  # the path before "/studies": WADO-RS base of RetrieveURLs
    study_uid: str | None = None
    workflow_id: str | None = None
    ae_title: str | None = None
    route_family: str = STANDARD  # STANDARD, MONAI or DCM4CHEE


@dataclass(frozen=True, slots=True)
class Reached:
    """How the request reached us: TLS or not, and the local address."""

    secure: bool
    local_host: str
    local_port: int | None  # None on a UNIX socket
    # Whether forwarded headers (X-Forwarded-Host/Proto) may be believed on
    # this connection: from a --trusted-proxy, or from anyone without one.
    from_trusted_proxy: bool = True


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """The sizes the body must stay within; None: no limit."""

    max_body_bytes: int | None = None
    max_part_bytes: int | None = None
    max_parts: int | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """What an admitted request may do: how its body is read, stored and answered."""

    target: Target
    reader: BodyReader
    response_type: str  # the negotiated DICOM JSON or DICOM XML
    policy: IngestPolicy
    base_url: str  # RetrieveURL base, fixed from the headers
    limits: BodyLimits
    # Content-Encoding of the body (None: identity), decoded as it streams.
    coding: str | None = None
    # The body's Content-Digest (RFC 9530) claims we verify, and whether
    # commits wait for that check (--verify-body-digest).
    body_digests: tuple[ExpectedDigest, ...] = ()
    hold_commits: bool = False
    # Want-Content-Digest: the algorithm key for the response's Content-Digest.
    response_digest: str | None = None


def admit(
    target: Target,
    headers: RawHeaders,
    length: int | None,
    reached: Reached,
    config: StowConfig,
    validation: ValidationPolicy,
) -> Admission:
    """Decide from the headers what the request to ``target`` may do.

    ``length`` is the announced body length (None: chunked).  Raises, in
    this order: ``InvalidStudyUID``, ``UnknownWorkflow``, the reader's
    ``UnsupportedMediaType``/``MalformedMultipart``, ``NotAcceptable``,
    ``LengthRequired``/``NoParts`` for an empty body, ``BodyTooLarge``.
    """
    if target.study_uid is not None and not is_valid_uid(
        target.study_uid, accept_leading_zeros=config.accept_leading_zero_uids
    ):
        raise InvalidStudyUID(f"{target.study_uid!r} is not a valid UID")
    _check_route_segments(target)
    allowed_workflows = config.workflows
    if (
        allowed_workflows
        and target.workflow_id is not None
        and target.workflow_id not in allowed_workflows
    ):
        raise UnknownWorkflow(f"no workflow {target.workflow_id!r} on this server")
    reader = reader_for(first(headers, b"content-type"))
    # A content coding we cannot decode is as unreadable as an unknown media
    # type: 415, naming what we decode (RFC 9110 §15.5.16).
    coding = request_coding(headers.get(b"content-encoding"))
    # Accept is a list: several field lines are one list (RFC 9110 §5.3).
    accept = headers.get(b"accept")
    response_type = negotiate(b", ".join(accept).decode("latin-1") if accept else None)
    limits = BodyLimits(config.max_body_bytes, config.max_part_bytes, config.max_parts)
    _check_length(length, b"content-length" in headers, reader, limits)
    policy = IngestPolicy(
        validation=validation,
        expected_study_uid=target.study_uid,
        study_mismatch=config.study_mismatch or _STUDY_MISMATCH_DEFAULT[target.route_family],
        duplicates=config.duplicates,
    )
    try:
        body_digests = tuple(content_digests(_texts(headers.get(b"content-digest"))))
    except DigestFieldError as e:
        raise InvalidDigestField(f"Content-Digest: {e}") from None
    return Admission(
        target=target,
        reader=reader,
        response_type=response_type,
        policy=policy,
        base_url=base_url(target, headers, reached, config),
        limits=limits,
        coding=coding,
        body_digests=body_digests,
        hold_commits=config.verify_body_digest,
        response_digest=wanted_algorithm(_texts(headers.get(b"want-content-digest"))),
    )


def _texts(values: Sequence[bytes] | None) -> list[str]:
    return [value.decode("latin-1") for value in values or ()]


def check_request_headers(
    headers: RawHeaders, length: int | None, http_version: bytes, config: StowConfig
) -> None:
    """Refuse a request whose framing or identity headers are broken: 400.

    Runs for every request, before the route: repeated singletons, Host
    missing on HTTP/1.1, repeated or invalid (RFC 9112 §3.2), a
    Transfer-Encoding other than chunked or beside Content-Length (RFC 9112
    §6.1, §6.3: HTTPChannel ignores "identity"), a Content-Length no body can
    have, and, behind a trusted proxy, an invalid X-Forwarded-Host (it names
    RetrieveURLs as Host does).
    """
    for name in SINGLETON_FIELDS:
        values = headers.get(name)
        if values is not None and len(values) > 1:
            raise InvalidHeader(f"{name.decode()} appears {len(values)} times; it takes one value")
    host = headers.get(b"host")
    if host is None:
        if http_version == b"HTTP/1.1":
            raise InvalidHeader("an HTTP/1.1 request must carry Host (RFC 9112 §3.2)")
    else:
        problem = host_problem(host[0])
        if problem is not None:
            raise InvalidHeader(f"Host {_shown(host[0])} is invalid: {problem}")
    if config.trust_forwarded_headers:
        forwarded_host = first_token(headers, b"x-forwarded-host")
        if forwarded_host is not None:
            problem = host_problem(forwarded_host.encode("latin-1"))
            if problem is not None:
                raise InvalidHeader(f"X-Forwarded-Host {forwarded_host!r} is invalid: {problem}")
    codings = headers.get(b"transfer-encoding")
    if codings is not None:
        if b"content-length" in headers:
            raise InvalidHeader("Transfer-Encoding and Content-Length together (RFC 9112 §6.1)")
        if [coding.strip().lower() for coding in codings] != [b"chunked"]:
            raise InvalidHeader("the only transfer coding accepted is chunked (RFC 9112 §7)")
    if length is not None and length > MAX_CONTENT_LENGTH:
        raise InvalidHeader(f"Content-Length has {len(str(length))} digits; no body is that long")


def refuse_unwanted_body(length: int | None, config: StowConfig) -> None:
    """A request that announces a body its resource does not read: 413 or 400.

    Refused from the headers: such a body would otherwise be read and
    discarded outside the size, rate and idle limits of an upload.
    """
    limit = config.max_body_bytes
    if length is not None and limit is not None and length > limit:
        raise BodyTooLarge(f"Content-Length {length} exceeds this server's limit of {limit} bytes")
    raise UnexpectedContent("this resource takes no request content")


def _check_route_segments(target: Target) -> None:
    """The workflow id and AE title of the URL: the start-up rule, or 400."""
    if target.workflow_id is not None:
        problem = workflow_id_problem(target.workflow_id)
        if problem is not None:
            raise InvalidRequestTarget(f"workflow id {_shown(target.workflow_id)}: {problem}")
    if target.ae_title is not None:
        problem = ae_title_problem(target.ae_title)
        if problem is not None:
            raise InvalidRequestTarget(f"AE title {_shown(target.ae_title)}: {problem}")


def _shown(value: str | bytes) -> str:
    """A name quoted in a problem document: a 15,000-character id is not worth echoing."""
    return shorten(repr(value))


def _check_length(
    length: int | None, has_content_length: bool, reader: BodyReader, limits: BodyLimits
) -> None:
    """Refuse a body that is empty, or announced larger than a limit."""
    if length == 0:
        if not has_content_length:
            raise LengthRequired("send Content-Length or Transfer-Encoding: chunked")
        raise NoParts("the request body is empty")
    if length is None:
        return
    limit = limits.max_body_bytes
    if limit is not None and length > limit:
        raise BodyTooLarge(f"Content-Length {length} exceeds this server's limit of {limit} bytes")
    part_limit = limits.max_part_bytes
    if part_limit is not None and length > part_limit and isinstance(reader, SinglePartReader):
        # A bare application/dicom body is one instance: its size is known.
        raise BodyTooLarge(
            f"Content-Length {length} exceeds this server's limit of {part_limit} "
            "bytes per instance"
        )


def base_url(target: Target, headers: RawHeaders, reached: Reached, config: StowConfig) -> str:
    """The externally visible WADO-RS base for RetrieveURLs of ``target``.

    Worked out at header time, so whatever it meets in the headers can
    never fail a request after its instances are stored.
    """
    if config.public_url:
        return config.public_url.rstrip("/") + target.base_path
    scheme = "https" if reached.secure else "http"
    authority = first(headers, b"host") or ""
    forwarded = False
    if config.trust_forwarded_headers and reached.from_trusted_proxy:
        proto = (first_token(headers, b"x-forwarded-proto") or "").lower()
        if proto in _DEFAULT_PORTS:
            scheme, forwarded = proto, True
        forwarded_host = first_token(headers, b"x-forwarded-host")
        if forwarded_host:
            authority, forwarded = forwarded_host, True
    hostname, port = split_host(authority)
    if not hostname:
        hostname = reached.local_host or "localhost"
        if ":" in hostname:  # a bare IPv6 address
            hostname = f"[{hostname}]"
    if port is None and not forwarded and reached.local_port is not None:
        # Some clients send Host without the port (the Python
        # dicomweb-client does on its Content-Length path, docs/CLIENTS.md):
        # the port we were reached on is the truth then.  Behind a proxy
        # (forwarded headers) our own port means nothing to the client.
        if reached.local_port != _DEFAULT_PORTS[scheme]:
            port = str(reached.local_port)
    authority = hostname if port is None else f"{hostname}:{port}"
    return f"{scheme}://{authority}{target.base_path}"


def first_value(values: Sequence[bytes] | None) -> str | None:
    """The first of a header's raw values, as text; None if it is absent."""
    if not values:
        return None
    return values[0].decode("latin-1")


def first(headers: RawHeaders, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case), as text."""
    return first_value(headers.get(name))


def first_token(headers: RawHeaders, name: bytes) -> str | None:
    """The first comma-separated element of header ``name``'s first value."""
    value = first(headers, name)
    if value is None:
        return None
    token = value.split(",", 1)[0].strip()
    return token or None


def split_host(host: str) -> tuple[str, str | None]:
    """``"h:8080"`` → (h, "8080"); ``"[::1]:80"`` → ("[::1]", "80").

    A malformed port is dropped (the name stays): the URL is then built
    with the port the request was reached on.
    """
    split = split_host_port(host)
    return split.host, split.port
