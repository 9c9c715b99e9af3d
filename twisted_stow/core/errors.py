"""Errors about a request as a whole.

A problem with one instance is never an exception: it is an outcome
(``outcomes.py``) carrying a Failure/Warning Reason.  A ``StowError`` means the
request itself cannot be served as sent; each carries the HTTP status it maps
to (like h11's ``ProtocolError(msg, error_status_hint)``) and a short title for
the RFC 7807 problem document.
"""

from __future__ import annotations

# Client-supplied text quoted in an error detail is cut to this many
# characters: enough to recognise it, never a header's worth in a log line.
DETAIL_TEXT_CHARS = 80


def shorten(text: str) -> str:
    """Cut client-supplied text for an error detail (``...`` marks the cut)."""
    if len(text) <= DETAIL_TEXT_CHARS:
        return text
    return text[:DETAIL_TEXT_CHARS] + "..."


class StowError(Exception):
    """Base class: the request as a whole is refused or broken."""

    status: int = 400
    title: str = "Bad Request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
        # RFC 9457 §3.2 extension members of the problem document (a 413
        # mid-body names the instances it kept here).
        self.extensions: dict[str, object] = {}

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Response headers this answer needs besides the problem document."""
        return []


class MalformedMultipart(StowError):
    """The multipart/related framing is broken (RFC 2046 §5.1.1).

    Damage in the body, not a limit: the parts complete before it are stored
    and the answer, after the body, lists them (``upload.BodyPipeline``).
    """

    title = "Malformed multipart body"


class HeaderBlockTooLarge(MalformedMultipart):
    """A part's header block exceeds the parser's cap."""

    title = "Part header block too large"


class TruncatedBody(MalformedMultipart):
    """The body ended before the closing delimiter."""

    title = "Truncated body"


class NoParts(StowError):
    """The body holds no part at all (PS3.18 10.5.1.4: one or more are required)."""

    title = "No instances in request"


class InvalidRequestTarget(StowError):
    """The request path cannot be decoded (not UTF-8 after percent-decoding), or a
    workflow id or AE title in it breaks its rule (``core/identifiers.py``)."""

    title = "Invalid request target"


class InvalidStudyUID(StowError):
    """The ``{study}`` path segment is not a valid UID."""

    title = "Invalid Study Instance UID"


class BodyTooLarge(StowError):
    """The body is larger than the configured limit."""

    status = 413
    title = "Payload Too Large"


class LengthRequired(StowError):
    """A POST body with neither Content-Length nor chunked framing."""

    status = 411
    title = "Length Required"


class UnsupportedMediaType(StowError):
    """The request Content-Type is not one the server accepts."""

    status = 415
    title = "Unsupported Media Type"


class UnsupportedContentCoding(UnsupportedMediaType):
    """The request's Content-Encoding is not one we decode (RFC 9110 §15.5.16).

    The answer names what is decoded in ``Accept-Encoding`` (RFC 9110 §12.5.3).
    """

    def __init__(self, detail: str, supported: tuple[str, ...]) -> None:
        super().__init__(detail)
        self.supported = supported

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"Accept-Encoding", ", ".join(self.supported).encode("ascii"))]


class InvalidContentCoding(MalformedMultipart):
    """The gzip or deflate stream of the body is damaged or cut short.

    Damage in the body like broken framing: the parts decoded whole before
    it are stored (``upload.BodyPipeline``).
    """

    title = "Invalid content coding"


class InvalidDigestField(StowError):
    """A Content-Digest (or Want-Content-Digest) field is not RFC 9530 syntax."""

    title = "Invalid digest field"


class NotAcceptable(StowError):
    """The Accept header allows neither DICOM JSON nor DICOM XML."""

    status = 406
    title = "Not Acceptable"


class RetryLater(StowError):
    """A refusal the client may send again after ``retry_after_seconds``."""

    def __init__(self, detail: str, retry_after_seconds: int = 5) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"Retry-After", b"%d" % self.retry_after_seconds)]


class ServiceUnavailable(RetryLater):
    """The server is over a limit; the client should retry later."""

    status = 503
    title = "Service Unavailable"


class InternalError(StowError):
    """A bug surfaced while reading the request; details go to the log only."""

    status = 500
    title = "Internal Server Error"


class RouteNotFound(StowError):
    """No STOW route at this path (answered early only when a body follows)."""

    status = 404
    title = "Not Found"


class MethodNotAllowed(StowError):
    """A STOW path with another method; ``allowed`` feeds the Allow header."""

    status = 405
    title = "Method Not Allowed"

    def __init__(self, detail: str, allowed: tuple[str, ...]) -> None:
        super().__init__(detail)
        self.allowed = allowed

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"Allow", ", ".join(self.allowed).encode())]


class RequestTimeout(StowError):
    """The client was too slow: headers past their deadline, or a body below
    the minimum rate (RFC 9110 §15.5.9)."""

    status = 408
    title = "Request Timeout"


class InvalidChunkSize(StowError):
    """A chunk-size no body could have (RFC 9112 §7.1: guard against overflow)."""


class Unauthorized(StowError):
    """No usable credentials (RFC 9110 §15.5.2); ``challenges`` feed WWW-Authenticate."""

    status = 401
    title = "Unauthorized"

    def __init__(self, detail: str, challenges: tuple[str, ...]) -> None:
        super().__init__(detail)
        self.challenges = challenges

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"WWW-Authenticate", challenge.encode()) for challenge in self.challenges]


class Forbidden(StowError):
    """An authenticated principal outside its grant (RFC 9110 §15.5.4)."""

    status = 403
    title = "Forbidden"


class TooManyRequests(RetryLater):
    """A peer blocked after repeated authentication failures (RFC 6585 §4)."""

    status = 429
    title = "Too Many Requests"


class UnknownWorkflow(RouteNotFound):
    """A ``/dicomweb/{workflow-id}/`` route naming a workflow not in the
    ``--workflow`` allow-list (answered from the headers: nothing is stored)."""

    title = "Unknown workflow"


class WorkflowNotRecorded(StowError):
    """The instances are stored, but their workflow request could not be
    written to the spool (docs/WORKFLOW.md): the client should send again."""

    status = 500
    title = "Workflow request not recorded"


class MalformedRequest(StowError):
    """The request is not valid HTTP/1.1: its line, a header or the chunked
    framing (RFC 9112 §2.2, found by HTTPChannel itself)."""


class RequestHeadTooLarge(StowError):
    """A request head past Twisted's limits: its request line (414, RFC 9112 §3:
    "a server ... MUST respond with a 414") or its header fields (431, RFC 6585 §5)."""

    def __init__(self, detail: str, *, in_request_line: bool) -> None:
        super().__init__(detail)
        self.status, self.title = (
            (414, "URI Too Long") if in_request_line else (431, "Request Header Fields Too Large")
        )


class InvalidHeader(StowError):
    """A header field the server reads is repeated, conflicting or invalid
    (RFC 9110 §5.3 singletons, §7.2 Host, §8.6 Content-Length; RFC 9112 §6.1)."""

    title = "Invalid request header"


class UnexpectedContent(StowError):
    """A body on a request whose resource takes none (OPTIONS): refused from
    the headers, so that no body escapes the size, rate and idle limits."""
