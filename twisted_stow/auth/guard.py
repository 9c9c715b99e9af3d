"""The header-time decision: who is this, and may they store here?

``Guard.authorize`` runs in ``StowService.begin_upload`` once the route is
known, before the media type, size and slot checks: an unauthenticated
client learns nothing but 401 (or 429 while throttled), an authenticated one
outside its grant 403.  It raises ``StowError`` subclasses, which
``StreamingRequest`` answers before any ``100 Continue`` and any body byte.
Only a password that misses the login cache takes time (the KDF, in a
thread): then the answer is a Deferred, and the request waits for it with
its socket paused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from twisted.cred.error import LoginFailed
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import ICredentialFactory

from ..core.admission import Target
from ..core.config import StowConfig
from ..core.errors import Forbidden, ServiceUnavailable, TooManyRequests, Unauthorized
from ..deferreds import now_or_later
from .cred import (
    CheckerBusy,
    IPrincipal,
    KdfAllowance,
    RunKdf,
    build_portal,
    credential_factories,
    run_here,
)
from .files import load_tokens, load_users
from .grants import Identity
from .jwt_verify import JWTVerifier
from .throttle import FailureThrottle, Throttle

log = Logger()

REALM = "twisted-stow"


class Guard:
    """Authentication (twisted.cred portal), grants and failure throttling."""

    def __init__(
        self,
        portal: Portal,
        factories: Sequence[ICredentialFactory],
        throttle: Throttle,
        realm: str = REALM,
    ) -> None:
        self._portal = portal
        self._factories = {f.scheme.lower(): f for f in factories}
        self._schemes = [f.scheme.lower() for f in factories]
        self.throttle = throttle
        self.realm = realm

    @classmethod
    def from_config(
        cls,
        config: StowConfig,
        clock: Callable[[], float],
        run_kdf: RunKdf = run_here,
        *,
        throttle: Throttle | None = None,
        kdf_budget: KdfAllowance | None = None,
    ) -> Guard | None:
        """The guard ``config`` asks for, or None when authentication is off.

        Reads the users, tokens and key files; raises ``ValueError``
        subclasses (``BadCredentialsFile``, ``BadJWTConfig``) when one is unusable.
        ``run_kdf`` runs password checks: the server passes ``KdfThreads``;
        the default, in the calling thread, is for the files check at start-up.
        ``throttle`` and ``kdf_budget``: the failure throttle and the password
        budget to use (a worker process passes the main process's, through
        ``workers.control``); new local ones by default.
        """
        users = tokens = verifier = None
        # Each message already names the file; the option is prefixed so the
        # one start-up line (and a failed SIGHUP's) says which one.
        with _naming("--users"):
            users = load_users(config.users_file) if config.users_file else None
        with _naming("--tokens"):
            tokens = load_tokens(config.tokens_file) if config.tokens_file else None
        if config.jwt_key_file or config.jwks_file:
            with _naming("--jwt-key" if config.jwt_key_file else "--jwks"):
                verifier = JWTVerifier.from_files(
                    key_file=config.jwt_key_file,
                    jwks_file=config.jwks_file,
                    audience=config.jwt_audience or "",
                    issuer=config.jwt_issuer or "",
                    algorithms=config.jwt_algorithms,
                )
        if users is None and tokens is None and verifier is None:
            return None
        portal = build_portal(
            users=users,
            tokens=tokens,
            jwt=verifier,
            clock=clock,
            run_kdf=run_kdf,
            kdf_budget=kdf_budget,
        )
        factories = credential_factories(
            REALM.encode(),
            basic=users is not None,
            bearer=tokens is not None,
            jwt=verifier is not None,
        )
        return cls(portal, factories, throttle if throttle is not None else FailureThrottle(clock))

    def take_credentials(self, fresh: Guard) -> None:
        """Use ``fresh``'s portal and schemes (files reloaded); the throttle stays."""
        self._portal = fresh._portal
        self._factories = fresh._factories
        self._schemes = fresh._schemes

    def challenges(self, bearer_error: bool = False) -> tuple[str, ...]:
        """WWW-Authenticate values, one per offered scheme (RFC 9110 §11.6.1)."""
        out = []
        for scheme in self._schemes:
            if scheme == b"basic":
                out.append(f'Basic realm="{self.realm}", charset="UTF-8"')
            else:
                error = ', error="invalid_token"' if bearer_error else ""
                out.append(f'Bearer realm="{self.realm}"{error}')
        return tuple(out)

    def authorize(
        self, authorization: list[bytes] | None, peer: str, target: Target
    ) -> Identity | Deferred[Identity]:
        """The principal allowed to store to ``target``; raises 429, 401 or 403 (or 503).

        At once when the answer is at hand: no credentials, a throttled peer,
        a cached login, a static token, a JWT, a password check over the
        budget.  A password that misses the cache is checked in a thread:
        then a Deferred that fires with the principal or fails with the same
        errors.  Cancelling it (the client went away) does not stop the
        check, whose failure still counts against ``peer``.  In a worker
        process the budget is the main process's: asking it is part of that
        wait, so over budget is then a Deferred failing with 503 too.
        """
        retry_after = self.throttle.retry_after(peer)
        if retry_after is not None:
            raise TooManyRequests(
                "too many failed authentication attempts from this address", retry_after
            )
        if not authorization:
            raise Unauthorized("this server requires authentication", self.challenges())
        scheme = b""
        try:
            if len(authorization) > 1:
                raise LoginFailed("more than one Authorization header")
            scheme, _, response = authorization[0].strip().partition(b" ")
            scheme = scheme.lower()
            factory = self._factories.get(scheme)
            if factory is None:
                raise LoginFailed(
                    f"authentication scheme {scheme.decode('latin-1')[:20]!r} not offered"
                )
            credentials = factory.decode(response.strip(), None)
        except LoginFailed as e:
            refusal = self._refused(peer, scheme, e)
            if isinstance(refusal, Unauthorized):
                raise refusal from None
            return refusal
        login: Deferred[Any] = self._portal.login(credentials, None, IPrincipal)

        def granted(avatar: tuple[Any, Identity, Callable[[], None]]) -> Identity:
            return self._granted(avatar[1], target)

        def refused(failure: Failure) -> Identity | Deferred[Identity]:
            error = failure.value
            if isinstance(error, CheckerBusy):
                log.warn("password checks over budget; answered 503 to {peer}", peer=peer)
                raise ServiceUnavailable(
                    "too many authentication attempts at once", retry_after_seconds=1
                )
            if isinstance(error, LoginFailed):
                # UnauthorizedLogin, or UnhandledCredentials: no checker for
                # this kind (a static-looking token when only JWTs are on).
                refusal = self._refused(peer, scheme, error)
                if isinstance(refusal, Unauthorized):
                    raise refusal
                return refusal
            failure.raiseException()  # a bug: the request answers 500

        identity: Identity | Deferred[Identity] = now_or_later(login.addCallbacks(granted, refused))
        return identity

    def _granted(self, identity: Identity, target: Target) -> Identity:
        """``identity`` if its grant covers ``target``; raises 403."""
        if not identity.grant.allows(target.route_family, target.ae_title, target.workflow_id):
            log.warn(
                "forbidden: {principal!r} ({grant}) may not store to {family} route "
                "(AE title {aet!r}, workflow {workflow!r})",
                principal=identity.name,
                grant=identity.grant.describe(),
                family=target.route_family,
                aet=target.ae_title,
                workflow=target.workflow_id,
            )
            raise Forbidden(f"{identity.name!r} may not store through this route")
        return identity

    def _refused(
        self, peer: str, scheme: bytes, error: LoginFailed
    ) -> Unauthorized | Deferred[Identity]:
        """Count a failure of ``peer``; the 401 to answer, or a Deferred failing with it.

        The Deferred in a worker process, whose failure counts live in the
        main process: the 401 waits until the main process counted it and
        told every worker of any block it starts, so the client's next try
        is refused whichever worker it reaches.
        """
        counted = self._failed(peer, str(error))
        refusal = Unauthorized(
            "the credentials were not accepted", self.challenges(scheme == b"bearer")
        )
        if counted is None:
            return refusal

        def refuse(_: object) -> Identity:
            raise refusal

        return counted.addBoth(refuse)

    def _failed(self, peer: str, reason: str) -> Deferred[None] | None:
        # The reason names the user or the JWT problem, never the secret.
        block = self.throttle.failed(peer)
        log.warn("authentication failed from {peer}: {reason}", peer=peer, reason=reason)
        if isinstance(block, Deferred):
            return block
        if block is not None:
            log.warn(
                "{peer} blocked for {seconds} s after repeated authentication failures",
                peer=peer,
                seconds=block,
            )
        return None


@contextmanager
def _naming(option: str) -> Iterator[None]:
    """Re-raise a ``ValueError`` (same type) with ``option`` in front of its message."""
    try:
        yield
    except ValueError as e:
        raise type(e)(f"{option} {e}") from e


def authorization_headers(request: Any) -> list[bytes] | None:
    """The raw ``Authorization`` header values of ``request``."""
    values: list[bytes] | None = request.requestHeaders.getRawHeaders(b"authorization")
    return values
