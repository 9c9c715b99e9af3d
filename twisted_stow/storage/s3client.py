"""A small S3 client on the reactor: botocore signs, treq sends.

botocore gives the standard credential chain and SigV4; the HTTP goes
through treq on one persistent ``HTTPConnectionPool`` per endpoint, so no
request takes a thread and connections are kept alive (txaws is unmaintained,
aiobotocore needs the asyncio reactor, boto3 blocks a thread per call).
Requests are path-style (``ENDPOINT/BUCKET/KEY``), which every S3-compatible
store accepts.  Each request's payload SHA-256 is computed by the caller (the
same digest that is the part's checksum) and signed as is, never re-hashed.

``check_bucket`` is the one blocking call of the server: the start-up check,
run before the reactor serves anything (``tap.makeService``), over the
standard library's ``http.client`` with the same signer (``BlockingS3``, which
``stow-verify`` uses too).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.session import Session
from twisted.internet.defer import CancelledError, Deferred
from twisted.web._newclient import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseNeverReceived,
)
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# Every S3 request gives up after this long (no hang when the store stops
# answering mid-request); the largest request is one part of
# 8-16 MiB (``s3.PART_BYTES`` and what filled meanwhile) at a few MiB/s.
REQUEST_TIMEOUT_SECONDS = 60.0
# Connections kept open per endpoint: one per part in flight is enough, the
# rest of the requests are small.
POOL_CONNECTIONS_PER_HOST = 32
# Start-up check: how long to wait for the endpoint.
CHECK_TIMEOUT_SECONDS = 10.0
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# S3 error codes that mean "no room" (FailureReason 0xA700), not a fault.
QUOTA_CODES = frozenset({"QuotaExceeded", "EntityTooLarge", "InsufficientStorage"})
# The HTTP status of "no room" whatever the code (WebDAV's Insufficient Storage).
QUOTA_STATUS = 507
# Answers that mean the store cannot serve now (500 InternalError, 503
# SlowDown or Service Unavailable, a gateway's 502/504): they count towards
# "down" like no answer.  Not 501 (one operation unsupported) nor 507 (full:
# each part fails 0xA700, the store itself works).
UNAVAILABLE_STATUSES = frozenset({500, 502, 503, 504})


class S3Error(OSError):
    """An S3 request failed: the store answered an error, or could not be reached.

    An ``OSError`` so that ingest treats it as any other storage fault
    (FailureReason 0x0110); ``code`` is S3's error code (``""`` when the
    store was not reached), ``status`` the HTTP status (0 likewise).
    """

    def __init__(self, operation: str, status: int, code: str, message: str) -> None:
        text = f"S3 {operation}: {status or 'unreachable'} {code} {message}".strip()
        super().__init__(text)
        self.strerror = text
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class S3Location:
    """Where ``--storage s3://BUCKET[/PREFIX]`` and ``--s3-endpoint`` point."""

    bucket: str
    prefix: str  # "" or "a/b/" (always ends in "/")
    endpoint: str  # scheme://host[:port], no path
    region: str

    def key(self, name: str) -> str:
        return self.prefix + name

    def url(self, key: str = "", query: Mapping[str, str] | None = None) -> str:
        path = "/" + quote(self.bucket, safe="")
        if key:
            path += "/" + quote(key, safe="/~")
        if query:
            # SigV4 wants the query sorted and %20-quoted; urlencode + sorted does both.
            path += "?" + urlencode(sorted(query.items()), quote_via=quote, safe="~")
        return self.endpoint + path

    def uri(self, key: str) -> str:
        """``s3://BUCKET/KEY``: how workflow requests and logs name an object."""
        return f"s3://{self.bucket}/{key}"


def default_endpoint(region: str) -> str:
    return f"https://s3.{region}.amazonaws.com"


def load_credentials(*, custom_endpoint: bool) -> Credentials | None:
    """The standard chain (environment, ``AWS_PROFILE``, shared files, ...).

    With a custom endpoint the instance-metadata and container providers are
    dropped: they would send a request to an address the operator did not
    configure (and are meaningless for a store that is not AWS).
    """
    session = Session()
    resolver = session.get_component("credential_provider")
    if custom_endpoint:
        for name in ("iam-role", "container-role"):
            try:
                resolver.remove(name)
            except Exception:  # botocore versions differ in the names
                pass
    credentials: Credentials | None = resolver.load_credentials()
    return credentials


class _PresignedPayload(S3SigV4Auth):
    """SigV4 for S3 with the payload hash the caller already computed."""

    def __init__(self, credentials: Any, region: str, payload_sha256: str) -> None:
        super().__init__(credentials, "s3", region)
        self._payload_sha256 = payload_sha256

    def payload(self, request: Any) -> str:
        return self._payload_sha256


def signed_headers(
    credentials: Credentials,
    region: str,
    method: str,
    url: str,
    headers: Mapping[str, str],
    payload_sha256: str,
) -> dict[str, str]:
    """``headers`` plus the SigV4 ones (Authorization, X-Amz-Date, ...)."""
    request = AWSRequest(method=method, url=url, headers=dict(headers))
    _PresignedPayload(credentials.get_frozen_credentials(), region, payload_sha256).add_auth(
        request
    )
    return {str(k): str(v) for k, v in request.headers.items()}


def error_code(body: bytes) -> tuple[str, str]:
    """S3's ``<Error><Code>`` and ``<Message>`` of an error body, or ``("", "")``."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", ""
    code = root.findtext("Code") or root.findtext(f"{_S3_NS}Code") or ""
    message = root.findtext("Message") or root.findtext(f"{_S3_NS}Message") or ""
    return code, message


def find_all(body: bytes, path: str) -> list[ET.Element]:
    """Elements of an S3 XML answer, with or without the S3 namespace."""
    root = ET.fromstring(body)
    found = root.findall(path)
    if not found:
        found = root.findall("/".join(f"{_S3_NS}{p}" for p in path.split("/")))
    return found


def text_of(element: ET.Element, name: str) -> str:
    return element.findtext(name) or element.findtext(f"{_S3_NS}{name}") or ""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    # Sent a second time (``retryable``): an answer of 412 or 404 may be the
    # store's view of what the first, unanswered, attempt already did.
    retried: bool = False


def retryable(error: BaseException) -> bool:
    """Whether a request that failed with ``error`` may be sent once more, on a
    fresh connection.

    Only a failure before any byte of an answer: the request was not sent,
    failed while it was sent, or its connection closed before the status line
    (a pooled keep-alive connection the store closed as we sent on it).  Not
    a timeout or a cancellation (the store is slow or the caller gave up), not
    a refused connection (the store is down; the health check counts it), and
    never once an answer began.  Twisted's pool retries such failures only
    for body-less idempotent methods; every request here has a body it can
    send again (bytes, or a part's chunks, ``ChunksProducer``) and is
    idempotent for our use, the conditional claim write included
    (``S3PartWriter._put_claim`` reads a retried refusal back).
    """
    if not isinstance(error, (RequestNotSent, RequestTransmissionFailed, ResponseNeverReceived)):
        return False
    return not any(reason.check(CancelledError) for reason in getattr(error, "reasons", ()))


@implementer(IBodyProducer)
class ChunksProducer:
    """A request body made of the chunks a part was received in, sent as they are.

    The part is never joined: each chunk goes to the transport as it is (a
    ``memoryview`` of a socket read is copied to ``bytes`` one chunk at a
    time, as Twisted's transports take only ``bytes``), and only while the
    transport wants more (it pauses this producer above its buffer size), so
    sending a part adds one chunk to memory, not a part.  It may be started
    again (a retried request sends it from its first chunk) until
    ``release``, which ``S3Client.request`` calls once the request is over:
    the HTTP client keeps a pooled connection's last request (and so this
    producer) until its next one.
    """

    def __init__(self, chunks: list[bytes | memoryview], length: int) -> None:
        self._chunks = chunks
        self.length = length  # the writer's count of the chunks' bytes
        self._next = 0
        self._paused = False
        self._consumer: Any = None
        self._done: Deferred[None] | None = None

    @property
    def held_chunks(self) -> int:
        """Chunks still referenced (none once released)."""
        return len(self._chunks)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self._consumer = consumer
        self._next = 0
        self._paused = False
        self._done = Deferred()
        done = self._done
        self._produce()
        return done

    def _produce(self) -> None:
        chunks = self._chunks
        while not self._paused and self._next < len(chunks) and self._done is not None:
            chunk = chunks[self._next]
            self._next += 1
            self._consumer.write(chunk if isinstance(chunk, bytes) else bytes(chunk))
        if self._next >= len(chunks) and self._done is not None:
            done, self._done = self._done, None
            done.callback(None)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            self._produce()

    def stopProducing(self) -> None:
        # The request was cancelled or its connection lost: Twisted expects
        # no more writes and no firing of the Deferred.  The chunks stay: a
        # retry sends them again.
        self._done = None

    def release(self) -> None:
        self._chunks = []


class S3Client:
    """Signed S3 requests over treq on ``reactor``, one keep-alive pool."""

    def __init__(self, location: S3Location, credentials: Credentials, reactor: Any) -> None:
        import treq.client  # twisted-side import; the module stays importable without a reactor

        self.location = location
        self._credentials = credentials
        self._reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = POOL_CONNECTIONS_PER_HOST
        # Connections idle longer than this are closed (SeaweedFS keeps them ~2 min).
        self.pool.cachedConnectionTimeout = 50
        self._http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        # A retry (``retryable``) goes on a connection of its own, opened for
        # it and closed after: the pool may hold more connections the store
        # closed meanwhile.
        self._fresh = treq.client.HTTPClient(
            Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        )
        self.retries = 0  # requests sent a second time (a stale pooled connection)
        # Requests in a row that got no answer at all (connection refused,
        # reset, timed out) or a server error (``UNAVAILABLE_STATUSES``), and
        # the last one's reason: the storage's health.
        self.failures_in_a_row = 0
        self.last_failure = ""

    async def request(
        self,
        operation: str,
        method: str,
        key: str = "",
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | IBodyProducer = b"",
        payload_sha256: str | None = None,
        ok: tuple[int, ...] = (200,),
        timeout: float = REQUEST_TIMEOUT_SECONDS,
        idempotent: bool = True,
    ) -> Response:
        """Send one request; an answer outside ``ok`` raises ``S3Error``.

        ``body`` may be a body producer (an S3 part sent from the chunks it
        was received in, never joined); its ``payload_sha256`` is then required.
        A request that failed before any answer (``retryable``) is sent once
        more on a fresh connection.  Not one that is not ``idempotent``
        (CreateMultipartUpload: a replay after a lost answer would leave the
        first upload open, unknown to the sweep's markers): it goes on a fresh
        connection of its own, which no store closed while it sat idle.
        """
        import treq

        url = self.location.url(key, query)
        if isinstance(body, bytes):
            sha = payload_sha256 or (hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256)
        else:
            assert payload_sha256 is not None, "a streamed body needs its SHA-256"
            sha = payload_sha256
        sent = signed_headers(
            self._credentials, self.location.region, method, url, headers or {}, sha
        )
        retried = False
        try:
            while True:
                http = self._fresh if retried or not idempotent else self._http
                try:
                    response = await http.request(
                        method,
                        url,
                        headers=Headers({k: [v] for k, v in sent.items()}),
                        data=body if body or method in ("PUT", "POST") else None,
                        timeout=timeout,
                    )
                    content: bytes = await treq.content(response)
                    break
                except Exception as e:  # any transport failure is a storage fault
                    if idempotent and not retried and retryable(e):
                        # Not counted towards "down": the retry's outcome is.
                        retried = True
                        self.retries += 1
                        continue
                    reason = _reason(e)
                    self.failures_in_a_row += 1
                    self.last_failure = f"does not answer ({type(e).__name__}: {reason})"
                    raise S3Error(operation, 0, type(e).__name__, reason) from e
        finally:
            if isinstance(body, ChunksProducer):
                body.release()
        answer = Response(
            response.code,
            {
                k.decode().lower(): v[-1].decode(errors="replace")
                for k, v in response.headers.getAllRawHeaders()
            },
            content,
            retried,
        )
        code, message = error_code(content) if answer.status >= 300 else ("", "")
        if answer.status in UNAVAILABLE_STATUSES:
            # Reachable but failing (a 500 on every request, SlowDown): as
            # down as a store that does not answer, for the health check.
            self.failures_in_a_row += 1
            self.last_failure = f"answers HTTP {answer.status} {code}".rstrip()
        else:
            # Any other answer, even a refusal (403, 404, 412), is a working store.
            self.failures_in_a_row = 0
        if answer.status not in ok:
            raise S3Error(operation, answer.status, code, message)
        return answer

    def close(self) -> Any:
        return self.pool.closeCachedConnections()


def _reason(error: Exception) -> str:
    text = str(error)
    # Twisted's ResponseNeverReceived wraps the real reason in a list of Failures.
    reasons = getattr(error, "reasons", None)
    if reasons:
        text = "; ".join(str(r.value) for r in reasons)
    return text.replace("\n", " ")[:200]


def check_bucket(location: S3Location, credentials: Credentials | None) -> str | None:
    """Blocking start-up check: None, or one line saying what is wrong.

    The bucket must exist and the credentials must be able to write to it
    (a small probe object under the prefix is put and deleted).
    """
    where = f"s3://{location.bucket}/{location.prefix} at {location.endpoint}"
    if credentials is None:
        return (
            f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE or a shared credentials file"
        )
    probe = location.key(f".stow/probe-{os.getpid()}-{uuid.uuid4().hex}")
    body = b"stow start-up probe\n"
    # Duplicate detection claims each SOP Instance UID with conditional
    # PutObjects (s3.S3PartWriter._claim): a store that ignores the
    # conditions would let two uploads of one UID both win, so it is
    # refused here.  This sees a store that ignores them always; one that
    # honours them only sequentially, not under races, it cannot see.
    wrong_etag = '"' + "0" * 32 + '"'
    steps: list[tuple[str, str, str, bytes, dict[str, str]]] = [
        ("bucket check", "HEAD", "", b"", {}),
        ("write check", "PUT", probe, body, {"If-None-Match": "*"}),
        ("conditional write check", "PUT", probe, body, {"If-None-Match": "*"}),
        ("conditional write check", "PUT", probe, body, {"If-Match": wrong_etag}),
        ("write check", "DELETE", probe, b"", {}),
    ]
    for what, method, key, content, headers in steps:
        try:
            status, answer = _blocking_request(location, credentials, method, key, content, headers)
        except OSError as e:
            return f"S3 endpoint {location.endpoint} unreachable ({e}) for {where}"
        if what == "bucket check" and status == 404:
            return f"S3 bucket {location.bucket!r} does not exist at {location.endpoint}"
        if status in (401, 403):
            code, message = error_code(answer)
            detail = code or f"HTTP {status}"
            return f"S3 credentials refused for {where} ({what}: {detail} {message})".strip()
        if what == "conditional write check":
            if status < 300:
                _blocking_request(location, credentials, "DELETE", probe, b"", {})
                condition = next(iter(headers))
                return (
                    f"S3 store at {location.endpoint} ignores {condition} on PutObject "
                    f"(HTTP {status} where 412 was due), which duplicate detection needs"
                )
            if status in (409, 412):
                continue
        if status >= 300:
            code, message = error_code(answer)
            return f"S3 {what} failed for {where}: HTTP {status} {code} {message}".strip()
    return None


class BlockingS3:
    """Signed S3 requests that block, over one kept-alive ``http.client`` connection.

    For what runs without a reactor: the start-up check and ``stow-verify``.
    Each answer must be read to its end before the next request (``http.client``
    reuses the connection then).
    """

    def __init__(
        self,
        location: S3Location,
        credentials: Credentials,
        timeout: float = CHECK_TIMEOUT_SECONDS,
    ) -> None:
        self.location = location
        self._credentials = credentials
        parts = urlsplit(location.endpoint)
        connection_type = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        self._connection = connection_type(parts.netloc, timeout=timeout)

    def open(
        self,
        method: str,
        key: str = "",
        *,
        query: Mapping[str, str] | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> http.client.HTTPResponse:
        """Send one request; the caller reads the answer (and may stream it)."""
        url = self.location.url(key, query)
        sha = hashlib.sha256(body).hexdigest()
        headers = signed_headers(
            self._credentials, self.location.region, method, url, headers or {}, sha
        )
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        self._connection.request(method, target, body=body or None, headers=headers)
        return self._connection.getresponse()

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (ListObjectsV2, all pages); ``S3Error`` on a refusal."""
        keys: list[str] = []
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            status, body = answer_of(self.open("GET", query=query))
            if status != 200:
                code, message = error_code(body)
                raise S3Error("ListObjectsV2", status, code, message)
            keys.extend(text_of(item, "Key") for item in find_all(body, "Contents"))
            tokens = find_all(body, "NextContinuationToken")
            token = tokens[0].text if tokens else None
            if not token:
                return keys

    def close(self) -> None:
        self._connection.close()


def answer_of(response: http.client.HTTPResponse) -> tuple[int, bytes]:
    """A blocking answer read to its end (so the connection can be reused): status and body."""
    return response.status, response.read()


def _blocking_request(
    location: S3Location,
    credentials: Credentials,
    method: str,
    key: str,
    body: bytes,
    headers: Mapping[str, str],
) -> tuple[int, bytes]:
    client = BlockingS3(location, credentials)
    try:
        return answer_of(client.open(method, key, body=body, headers=headers))
    finally:
        client.close()
