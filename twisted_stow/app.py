"""``StowService``: the Klein routes, header-time decisions and error mapping.

Two moments of a STOW request meet here.  ``begin_upload`` runs when the
headers are in (from ``StreamingRequest.gotLength``) and decides everything
that needs no body: route, method, target study, media types, size.  The
Klein route runs once the body is complete, waits for the upload's outcomes
and renders the Store Instances Response (PS3.18 10.5.3).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote_to_bytes

from klein import Klein
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.routing import RequestRedirect

from .auth.cred import KdfAllowance, KdfThreads, RunKdf
from .auth.guard import Guard, authorization_headers
from .auth.throttle import FailureThrottle, KdfBudget, Throttle
from .core.admission import (
    DCM4CHEE,
    MONAI,
    STANDARD,
    Admission,
    RawHeaders,
    Reached,
    Target,
    admit,
    check_request_headers,
    first_value,
    refuse_unwanted_body,
)
from .core.budget import MemoryBudget, upload_window_bytes
from .core.config import StowConfig
from .core.errors import (
    BodyTooLarge,
    InvalidRequestTarget,
    MethodNotAllowed,
    NoParts,
    RouteNotFound,
    ServiceUnavailable,
    StowError,
    WorkflowNotRecorded,
)
from .core.outcomes import Outcome, Stored
from .core.response import (
    PROBLEM_JSON,
    StoreResponse,
    build_store_response,
    name_failed_parts,
    name_kept_parts,
    problem_document,
    problem_json,
    render,
    warning_header_value,
)
from .core.validation import ValidationPolicy, default_sop_classes, default_transfer_syntaxes
from .deferreds import RunInThread, detached
from .ingest import IngestResult
from .interfaces import IStorage
from .limits import Release, Slots, UploadSlots
from .ops.drain import Drain
from .ops.health import ALIVE_BODY, FreeSpace, Readiness, readiness_answer
from .twisted_private import request_version
from .upload import Upload
from .workflow.trigger import Submission, WorkflowTrigger, new_correlation_id

if TYPE_CHECKING:
    from .workers.control import WorkerControl

log = Logger()

F = TypeVar("F", bound=Callable[..., Any])

_CORS_MAX_AGE_SECONDS = 600
_CORS_DEFAULT_ALLOW_HEADERS = "Accept, Authorization, Content-Type"
_CORS_EXPOSE_HEADERS = "Warning, Retry-After, WWW-Authenticate, X-Correlation-ID"
# Names the workflow request of a /dicomweb/ POST (docs/WORKFLOW.md).
CORRELATION_ID_HEADER = "X-Correlation-ID"
# From this many outcomes on, the Store Instances Response is built and
# rendered in a worker thread: for 5,000 instances that took 40 + 73 ms
# (JSON) and 58 + 317 ms (XML) of reactor time, 0.2 + 0.4 ms and 0.2 + 6 ms
# for 100.  Below it the work is shorter than the wait behind validation
# jobs on the pool could be.
RESPONSE_IN_THREAD_OUTCOMES = 50
# Retry-After of a 503 while the storage is down: a few of its health probes.
STORAGE_RETRY_AFTER_SECONDS = 5


# The routes of StowService; module-level so decorators in its body can use it.
_app = Klein()

# Every STOW-RS resource, with a name for its Klein endpoints.  Klein keys
# its executors by endpoint, and one name shared by several URLs would keep
# only the last one's data, so each path gets its own.
STOW_PATHS = (
    ("/studies", "studies"),
    ("/studies/<study>", "study"),
    ("/dicomweb/studies", "monai_studies"),
    ("/dicomweb/studies/<study>", "monai_study"),
    ("/dicomweb/<workflow_id>/studies", "monai_workflow_studies"),
    ("/dicomweb/<workflow_id>/studies/<study>", "monai_workflow_study"),
    ("/aets/<aet>/rs/studies", "aet_studies"),
    ("/aets/<aet>/rs/studies/<study>", "aet_study"),
)
# The route family of each STOW path, keyed by werkzeug's rule text: the
# family, like the workflow id and AE title, comes from the rule the request
# matched, never from the raw path ("//dicomweb/studies" matches the MONAI
# rule: werkzeug merges slashes).
_FAMILY_OF_RULE = {
    path: MONAI
    if path.startswith("/dicomweb/")
    else DCM4CHEE
    if path.startswith("/aets/")
    else STANDARD
    for path, _ in STOW_PATHS
}


def _on_stow_paths(method: str, name: str) -> Callable[[F], F]:
    """Route ``method`` on every STOW path to the decorated handler."""

    def register(f: F) -> F:
        for path, path_name in STOW_PATHS:
            f = _app.route(path, methods=[method], endpoint=f"{name}_{path_name}")(f)
        return f

    return register


def stow_upload(f: F) -> F:
    """Mark a route handler as one whose body is streamed into an Upload.

    Put it *below* ``@app.route``: Klein's route wrappers copy function
    attributes, so every route of the handler carries the mark.
    """
    f.stow_upload = True  # type: ignore[attr-defined]
    return f


class StowService:
    """The STOW-RS application: routes on a Klein app, state on the instance."""

    app = _app

    def __init__(
        self,
        config: StowConfig,
        storage: IStorage,
        reactor: Any,
        run_in_thread: RunInThread,
        workflows: WorkflowTrigger | None = None,
        run_kdf: RunKdf | None = None,
        control: WorkerControl | None = None,
    ) -> None:
        self.config = config
        # The MONAI routes' workflow requests; None: they trigger nothing.
        self.workflows = workflows
        self.storage = storage
        self.reactor = reactor
        self._run_in_thread = run_in_thread
        # The server-wide limits: this process's own, or, in a worker process
        # (``control``: its connection to the main process), the main
        # process's, so they hold across all workers (docs/DESIGN.md, "Shared
        # state across workers").  Without a cap there is nothing to share
        # and the slots stay local and synchronous in a worker too.
        self.slots: Slots
        self.throttle: Throttle
        self.kdf_budget: KdfAllowance
        capped = config.max_requests is not None or config.max_requests_per_peer is not None
        if control is not None and capped:
            self.slots = control.slots
        else:
            self.slots = UploadSlots(config.max_requests, config.max_requests_per_peer)
        if control is not None:
            self.throttle, self.kdf_budget = control.throttle, control.kdf_budget
        else:
            self.throttle = FailureThrottle(reactor.seconds)
            self.kdf_budget = KdfBudget(reactor.seconds)
        # The process's one memory budget: every upload buffers inside a window of it.
        self.budget = MemoryBudget(
            config.memory_budget_bytes,
            upload_window_bytes(config.memory_budget_bytes, s3=config.s3 is not None),
        )
        # Operations (twisted_stow/ops): the uploads in flight and the drain,
        # the free-space floor, the /readyz checks (set by site.make_site).
        self.drain = Drain(reactor, config.drain_timeout_seconds)
        self.space = FreeSpace(config.storage, config.min_free_bytes)
        self.readiness: Readiness | None = None
        self._validation = ValidationPolicy(
            allowed_sop_classes=config.sop_classes or default_sop_classes(),
            allowed_transfer_syntaxes=config.transfer_syntaxes or default_transfer_syntaxes(),
            accept_leading_zero_uids=config.accept_leading_zero_uids,
        )
        # None while authentication is off (no --users, --tokens, --jwt-key, --jwks).
        # Password checks run in their own thread (auth/cred.py, KDF_THREADS).
        self._run_kdf = run_kdf if run_kdf is not None else KdfThreads(reactor)
        self.guard = self._guard_from_config()

    def reload_credentials(self) -> bool:
        """SIGHUP: read the users, tokens and JWT key files again; False if one is unusable.

        The guard object stays (requests and the failure throttle keep it);
        only its portal changes, so connections and uploads in flight go on.
        A bad file keeps the previous credentials, in one log line.
        """
        if self.guard is None:
            return True
        try:
            fresh = self._guard_from_config()
        except ValueError as e:
            log.error(
                "SIGHUP: {error}; the previous credentials stay in use",
                error=str(e),
                stow_event="reload.failed",
            )
            return False
        assert fresh is not None  # the same options ask for a guard
        self.guard.take_credentials(fresh)
        log.info("SIGHUP: credentials reloaded", stow_event="reload.credentials")
        return True

    def _guard_from_config(self) -> Guard | None:
        # The throttle and the budget outlive a reload, as the counts they keep must.
        return Guard.from_config(
            self.config,
            self.reactor.seconds,
            self._run_kdf,
            throttle=self.throttle,
            kdf_budget=self.kdf_budget,
        )

    # Header time.

    def begin_upload(
        self, request: Any, method: bytes, target: bytes, length: int | None
    ) -> Upload | Deferred[Upload] | None:
        """Decide from the headers; an Upload for a STOW POST, else None.

        Raises ``StowError`` to refuse before any body byte is read.  Requests
        that are not STOW uploads and carry no body are left to Klein.  The
        steps, in the order of docs/CONFORMANCE.md §3.1: match the route,
        authorize, ``admit`` (pure), take the slot, open the upload; the
        framing and identity headers (``check_request_headers``) before all.
        While a password is checked in a thread, or a worker process asks
        the main process for the slot, a Deferred of the Upload (failing with
        the ``StowError``); the steps after it run when it answers, unless the
        request cancelled the Deferred meanwhile (a slot granted after that
        is freed at once).
        """
        self.drain.refuse_if_draining()
        headers = raw_headers(request)
        check_request_headers(headers, length, request_version(request.channel), self.config)
        stow_target = self._match(method, target, length)
        if stow_target is None:
            return None
        principal = self._authorize(request, stow_target)
        if isinstance(principal, Deferred):
            return principal.addCallback(
                lambda name: self._open_upload(request, stow_target, length, name)
            )
        return self._open_upload(request, stow_target, length, principal)

    def _open_upload(
        self, request: Any, stow_target: Target, length: int | None, principal: str | None
    ) -> Upload | Deferred[Upload]:
        """After authorization: ``admit``, take the slot, open the upload.

        A Deferred when the slot is the main process's (worker processes).
        """
        admission = admit(
            stow_target,
            raw_headers(request),
            length,
            _reached(request, self.config),
            self.config,
            self._validation,
        )
        self.space.check()
        down = self.storage.unavailable()
        if down is not None:
            # Refused from the headers: reading the body only to fail every
            # part with 0x0110 would cost the client the whole upload.
            raise ServiceUnavailable(down, STORAGE_RETRY_AFTER_SECONDS)
        # Last: a request refused for any other reason never holds a slot.
        taken = self.slots.acquire(self.peer_host(request))
        if isinstance(taken, Deferred):
            return taken.addCallback(
                lambda release: self._with_slot(request, admission, principal, release)
            )
        return self._with_slot(request, admission, principal, taken)

    def _with_slot(
        self, request: Any, admission: Admission, principal: str | None, release: Release
    ) -> Upload:
        """The upload of an admitted request holding its slot (``release`` frees it)."""
        if self.drain.draining:
            # The drain began while the password check or the main process's
            # answer was awaited: the request is refused as it would have been.
            release()
            self.drain.refuse_if_draining()
        tracked = self.drain.track(request, release)
        try:
            return Upload(
                admission,
                release=tracked,
                storage=self.storage,
                producer=request,
                principal=principal,
                budget=self.budget,
            )
        except BaseException:
            # No upload will ever release it: free it now.
            tracked()
            raise

    def _match(self, method: bytes, target: bytes, length: int | None) -> Target | None:
        """The STOW target of a request line; None when Klein should answer it.

        Raises ``MethodNotAllowed``, ``RouteNotFound`` (only for requests with a
        body: a bodiless one gets Klein's own answer) or ``InvalidRequestTarget``.
        """
        has_body = length is None or length > 0
        try:
            path = unquote_to_bytes(target.split(b"?", 1)[0]).decode("utf-8")
            rule, kwargs = self.app.url_map.bind("localhost", "").match(
                path, method=method.decode("ascii"), return_rule=True
            )
        except WerkzeugMethodNotAllowed as e:
            if not has_body:
                return None
            allowed = tuple(sorted(e.valid_methods or ()))
            raise MethodNotAllowed(
                f"{method.decode('ascii', 'replace')} is not allowed here", allowed
            ) from None
        except UnicodeDecodeError:
            raise InvalidRequestTarget("the request path is not UTF-8") from None
        except (HTTPException, RequestRedirect):
            if not has_body:
                return None
            raise RouteNotFound("no STOW-RS resource at this path") from None
        endpoint = self.app.endpoints[rule.endpoint]
        if not getattr(endpoint, "stow_upload", False):
            if has_body:
                # OPTIONS (or any handler that reads no body) with a body:
                # refused now, or the body would be read outside every limit.
                refuse_unwanted_body(length, self.config)
            return None
        return _target_for(rule.rule, kwargs)

    def _authorize(self, request: Any, target: Target) -> str | Deferred[str | None] | None:
        """The principal storing to ``target``; None while authentication is off.

        Right after the route: a client without a grant learns nothing more
        about the request (429/401/403, docs/CONFORMANCE.md §3.1).  A
        Deferred of it while a password is checked in a thread.
        """
        if self.guard is None:
            return None
        identity = self.guard.authorize(
            authorization_headers(request), self.peer_host(request), target
        )
        if isinstance(identity, Deferred):
            return identity.addCallback(lambda known: known.name)
        return identity.name

    def peer_host(self, request: Any) -> str:
        """The client's address for limits, the login throttle and the logs.

        The connection's own address, or behind a ``--trusted-proxy`` the one
        its forwarded header names (core/forwarded.py); worked out once per
        request and kept on it.
        """
        known: str | None = getattr(request, "stow_peer", None)
        if known is None:
            known = _connection_host(request)
            proxies = self.config.trusted_proxies
            if proxies.networks:  # else no header is read: skip building them
                known = proxies.client_address(known, raw_headers(request))
            request.stow_peer = known
        return known

    def refusal_headers(self, request: Any) -> list[tuple[bytes, bytes]]:
        """What a refusal written outside Klein adds to the error's own headers: CORS."""
        return [(k.encode(), v.encode()) for k, v in self._cors_headers(request)]

    @_on_stow_paths("POST", "store")
    @stow_upload
    async def store(self, request: Any, **_route: str) -> bytes:
        """POST a STOW-RS body; the Store Instances Response when all is in."""
        upload: Upload | None = request.upload
        if upload is None or upload.result is None:  # pragma: no cover - guarded in gotLength
            raise NoParts("the request body is empty")
        correlation_id: str | None = None
        submission: Deferred[Submission] | None = None
        if upload.target.route_family == MONAI:
            correlation_id = new_correlation_id()
            request.setHeader(CORRELATION_ID_HEADER, correlation_id)
            # Chained to the result, not to this handler: a client that
            # leaves after its whole body still gets its workflow triggered.
            submission = self._submit_workflow(request, upload, correlation_id)
        # A copy: Klein cancels this handler when the client goes away, and
        # that must not cancel the storing of parts already received whole
        # (DESIGN.md: they are committed whatever happens to the connection).
        result = await detached(upload.result)
        if isinstance(result.request_error, BodyTooLarge):
            # A limit met while a compressed body that was all in inflated:
            # the same 413 as mid-body, naming what was kept.
            name_kept_parts(result.request_error, result.outcomes)
            raise result.request_error
        if result.request_error is not None and not result.stored_any:
            # Nothing stored and the body itself was broken: a syntax error
            # of the request (PS3.18 Table 10.5.3-1, 400).
            name_failed_parts(result.request_error, result.outcomes)
            raise result.request_error
        if not result.outcomes:
            raise NoParts("the request body holds no part")
        outcomes = upload.outcomes(result)  # with a body Content-Digest mismatch
        if len(outcomes) < RESPONSE_IN_THREAD_OUTCOMES:
            response, body = build_and_render(outcomes, upload.base_url, upload.response_type)
        else:
            # Pure, and long for large studies: off the reactor (docs/DESIGN.md).
            response, body = await self._run_in_thread(
                build_and_render, outcomes, upload.base_url, upload.response_type
            )
        if submission is not None:
            # Answer only once the workflow request is durable (or known lost).
            spooled = await detached(submission)
            if spooled.error is not None and spooled.retry_after_seconds is not None:
                # The outbox is down for now (the index database): the client
                # sends again later, as for any refusal from the headers.
                raise ServiceUnavailable(
                    "the instances were stored, but their workflow request could not be "
                    f"recorded ({getattr(spooled.error, 'strerror', None) or 'outage'}); "
                    "send the request again (correlation id "
                    f"{correlation_id})",
                    spooled.retry_after_seconds,
                )
            if spooled.error is not None:
                raise WorkflowNotRecorded(
                    "the instances were stored, but their workflow request could not be "
                    "recorded; send the request again (correlation id "
                    f"{correlation_id})"
                )
        request.setResponseCode(response.status)
        request.setHeader("Content-Type", upload.response_type)
        if response.warning is not None:
            request.setHeader("Warning", warning_header_value(response.warning))
        response_digest = upload.response_digest_header(body)
        if response_digest is not None:
            request.setHeader("Content-Digest", response_digest)
        self._set_cors(request)
        log.info(
            "stored {stored} of {parts} parts, status {status}, principal {principal}, "
            "correlation {correlation_id}",
            stored=sum(1 for o in result.outcomes if isinstance(o, Stored)),
            parts=len(result.outcomes),
            status=response.status,
            principal=upload.principal,
            correlation_id=correlation_id or "-",
        )
        return _sized(request, body)

    def _submit_workflow(
        self, request: Any, upload: Upload, correlation_id: str
    ) -> Deferred[Submission]:
        """The workflow request of this POST, spooled once its outcomes are in.

        Fires with an empty ``Submission`` when nothing is to be triggered:
        nothing stored, or a body that was cut off or broken (a partial
        dataset must not start an AI workflow).  Never fails.
        """
        assert upload.result is not None
        workflows = self.workflows
        endpoint = bytes(request.path).decode("latin-1")
        peer = self.peer_host(request)

        def submit(result: IngestResult) -> Deferred[Submission]:
            if (
                workflows is None
                or result.request_error is not None
                or upload.body.body_digest_mismatch is not None
            ):
                return succeed(Submission())
            return workflows.submit(
                result.outcomes,
                correlation_id=correlation_id,
                workflow_id=upload.target.workflow_id,
                endpoint=endpoint,
                peer=peer,
                principal=upload.principal,
            )

        return detached(upload.result).addCallback(submit)

    @_on_stow_paths("OPTIONS", "preflight")
    def preflight(self, request: Any, **_route: str) -> bytes:
        """OPTIONS: the methods allowed, and a CORS preflight answer."""
        request.setResponseCode(204)
        request.setHeader("Allow", "OPTIONS, POST")
        headers = self._cors_headers(request)
        if any(name == "Access-Control-Allow-Origin" for name, _ in headers):
            # A list header: several field lines are one list (RFC 9110 §5.3).
            lines = request.requestHeaders.getRawHeaders(b"access-control-request-headers")
            requested = b", ".join(lines).decode("latin-1") if lines else None
            headers += [
                ("Access-Control-Allow-Methods", "POST, OPTIONS"),
                ("Access-Control-Allow-Headers", requested or _CORS_DEFAULT_ALLOW_HEADERS),
                ("Access-Control-Max-Age", str(_CORS_MAX_AGE_SECONDS)),
            ]
        for name, value in headers:
            request.setHeader(name, value)
        return b""

    # Operations: liveness and readiness, no authentication (docs/OPERATIONS.md).

    @_app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: Any) -> bytes:
        """200 while the process serves."""
        request.setHeader("Content-Type", "application/json")
        request.setHeader("Cache-Control", "no-store")
        return _sized(request, ALIVE_BODY)

    @_app.route("/readyz", methods=["GET", "HEAD"])
    async def readyz(self, request: Any) -> bytes:
        """200 when the server can store now, else 503 naming the failed checks."""
        results = await self.readiness.checks() if self.readiness is not None else {}
        status, body = readiness_answer(results)
        request.setResponseCode(status)
        request.setHeader("Content-Type", "application/json")
        request.setHeader("Cache-Control", "no-store")
        return _sized(request, body)

    # Errors.

    @app.handle_errors(StowError)
    def stow_error(self, request: Any, failure: Failure) -> bytes:
        """A request-level error: RFC 7807 problem document."""
        error = failure.value
        assert isinstance(error, StowError)
        return self._problem(
            request, error.status, problem_json(error, instance=_instance(request)), error.headers()
        )

    @app.handle_errors(HTTPException)
    def http_error(self, request: Any, failure: Failure) -> bytes:
        """Klein's own 404/405 (bodiless requests), as problem documents."""
        error = failure.value
        assert isinstance(error, HTTPException)
        status = error.code or 500
        headers: list[tuple[str, str]] = []
        if isinstance(error, WerkzeugMethodNotAllowed) and error.valid_methods:
            headers.append(("Allow", ", ".join(sorted(error.valid_methods))))
        body = problem_document(status, error.name, error.description or "", _instance(request))
        return self._problem(request, status, body, headers)

    @app.handle_errors(Exception)
    def internal_error(self, request: Any, failure: Failure) -> bytes:
        """Anything unforeseen: 500, logged with its traceback."""
        log.failure("unhandled error in {uri}", failure, uri=request.uri)
        body = problem_document(
            500,
            "Internal Server Error",
            "the server failed to process the request",
            _instance(request),
        )
        return self._problem(request, 500, body)

    def _problem(
        self,
        request: Any,
        status: int,
        body: bytes,
        headers: Sequence[tuple[str | bytes, str | bytes]] = (),
    ) -> bytes:
        """Answer with the problem document ``body``: the one shape of every error handler."""
        request.setResponseCode(status)
        request.setHeader("Content-Type", PROBLEM_JSON)
        for name, value in headers:
            request.setHeader(name, value)
        self._set_cors(request)
        return _sized(request, body)

    # URLs and CORS.

    def _cors_headers(self, request: Any) -> list[tuple[str, str]]:
        origins = self.config.cors_origins
        if not origins:
            return []
        # Vary on every answer, allowed or not: a shared cache must never
        # hand one origin's answer to another.
        headers = [("Vary", "Origin")]
        origin = first_value(request.requestHeaders.getRawHeaders(b"origin"))
        if origin is None or (origin not in origins and "*" not in origins):
            return headers
        return [
            *headers,
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Expose-Headers", _CORS_EXPOSE_HEADERS),
        ]

    def _set_cors(self, request: Any) -> None:
        for name, value in self._cors_headers(request):
            request.setHeader(name, value)


def build_and_render(
    outcomes: list[Outcome], base_url: str, media_type: str
) -> tuple[StoreResponse, bytes]:
    """The Store Instances Response of ``outcomes`` and its body (pure: runs in any thread)."""
    response = build_store_response(outcomes, base_url=base_url)
    return response, render(response.model, media_type)


def _target_for(rule: str, kwargs: Mapping[str, Any]) -> Target:
    """The target named by the werkzeug ``rule`` a request matched, with its values.

    The base path is rebuilt from the rule, not cut from the request path, so
    a path werkzeug normalised ("//dicomweb/studies") yields the canonical
    base; each value is re-quoted as one segment, since it was
    percent-decoded for matching.
    """
    base = rule[: rule.rfind("/studies")]
    for name, value in kwargs.items():
        base = base.replace(f"<{name}>", quote(str(value), safe=""))
    return Target(
        base_path=base,
        study_uid=kwargs.get("study"),
        workflow_id=kwargs.get("workflow_id"),
        ae_title=kwargs.get("aet"),
        route_family=_FAMILY_OF_RULE[rule],
    )


def _sized(request: Any, body: bytes) -> bytes:
    """Send ``body`` with a Content-Length rather than chunked: simpler for
    clients, and every body here is small and complete before it is sent."""
    request.setHeader("Content-Length", str(len(body)))
    return body


def _connection_host(request: Any) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", peer))


def raw_headers(request: Any) -> RawHeaders:
    """The request headers as plain data, for ``admit``: lower-case names."""
    return {name.lower(): values for name, values in request.requestHeaders.getAllRawHeaders()}


def _reached(request: Any, config: StowConfig) -> Reached:
    local = request.getHost()
    proxies = config.trusted_proxies
    return Reached(
        secure=bool(request.isSecure()),
        local_host=str(getattr(local, "host", "") or ""),
        local_port=getattr(local, "port", None),  # None on a UNIX socket
        # Without --trusted-proxy, --trust-forwarded-headers believes anyone
        # (its old meaning); with it, only the named balancers.
        from_trusted_proxy=not proxies.networks or proxies.trusts(_connection_host(request)),
    )


def _instance(request: Any) -> str | None:
    uri = getattr(request, "uri", None)
    if isinstance(uri, bytes) and uri.startswith(b"/"):
        return uri.decode("latin-1")
    return None
