"""twisted.cred for STOW: credentials, their factories, checkers, realm and portal.

HTTP Basic credentials are decoded by twisted.web's ``BasicCredentialFactory``
into ``UsernamePassword``; ``BearerCredentialFactory`` decodes RFC 6750
Bearer tokens into a ``JSONWebToken`` (three dot-separated segments, when
JWTs are configured) or a ``StaticToken``.  Every checker answers at once
(its Deferred has fired before it is returned) except for a password that
misses the login cache: the KDF (scrypt, 50 ms at n=2^14, 400 ms at n=2^17)
runs in a thread (``KdfThreads``) and the request waits for it with its
socket paused.  ``VerifiedCache`` keeps the KDF to once per login,
``KdfBudget`` bounds its time across all clients and ``FailureThrottle``
(in the guard) bounds the failures of each.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web.guard import BasicCredentialFactory
from twisted.web.iweb import ICredentialFactory
from zope.interface import Attribute, Interface, implementer

from .cache import VerifiedCache
from .files import TokenEntry, UserEntry
from .grants import Identity
from .jwt_verify import InvalidJWT, JWTVerifier
from .passwords import dummy_hash, kdf_parameters, token_digest, verify_password
from .throttle import KdfBudget

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_TOKEN68 = re.compile(rb"^[A-Za-z0-9\-._~+/]+=*$")


class IPrincipal(Interface):
    """The avatar of a STOW login: an ``Identity`` (name, grant, method)."""

    name = Attribute("the principal's name (str)")
    grant = Attribute("the principal's Grant")


class IStaticToken(ICredentials):
    """An opaque bearer token to be found among the hashed static tokens."""

    token = Attribute("the token as sent (bytes)")


class IJSONWebToken(ICredentials):
    """A bearer token shaped like a JWT (header.payload.signature)."""

    token = Attribute("the token as sent (bytes)")


@implementer(IStaticToken)
class StaticToken:
    def __init__(self, token: bytes) -> None:
        self.token = token


@implementer(IJSONWebToken)
class JSONWebToken:
    def __init__(self, token: bytes) -> None:
        self.token = token


@implementer(ICredentialFactory)
class BearerCredentialFactory:
    """``Authorization: Bearer <token>`` (RFC 6750 §2.1) → token credentials."""

    scheme = b"bearer"

    def __init__(self, realm: bytes, *, jwt: bool) -> None:
        self.realm = realm
        self._jwt = jwt

    def getChallenge(self, request: Any) -> dict[str, bytes]:
        return {"realm": self.realm}

    def decode(self, response: bytes, request: Any) -> ICredentials:
        token = response.strip()
        if not _TOKEN68.match(token):
            raise LoginFailed("the bearer token is not an RFC 6750 b64token")
        if self._jwt and token.count(b".") == 2:
            return JSONWebToken(token)
        return StaticToken(token)


# How a checker runs the KDF: ``run_kdf(verify_password, password, encoded)``
# gives a Deferred of its result.
RunKdf = Callable[..., "Deferred[Any]"]

# One thread for every password check of the process.  Checks then run one
# at a time, so the KDF never takes more than one core (the reactor and the
# validation threads keep the other one here), never holds more than one
# check's memory (128 MiB at n=2^17, r=8), and never queues ahead of
# validation on the reactor's pool, which honest uploads wait for.  It is
# enough: the budget admits half a KDF second per second, so the queue is at
# most about a bucket's worth (half a second, plus one check) deep.
KDF_THREADS = 1


def run_here(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Run ``f`` now in the calling thread: for the files check at start-up and for tests."""
    return maybeDeferred(f, *args)


class KdfThreads:
    """The password KDF's own thread pool, started at the first check, stopped with the reactor."""

    def __init__(self, reactor: Any, threads: int = KDF_THREADS) -> None:
        self._reactor = reactor
        self._threads = threads
        self._pool: ThreadPool | None = None

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        pool = self._pool
        if pool is None:
            # minthreads=0: a server that never checks a password starts no thread.
            pool = self._pool = ThreadPool(minthreads=0, maxthreads=self._threads, name="stow-kdf")
            pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
        result: Deferred[Any] = deferToThreadPool(self._reactor, pool, f, *args)
        return result


class KdfAllowance(Protocol):
    """The KDF budget a checker spends: this process's ``KdfBudget`` (answers at
    once), or a worker's share of the main process's one
    (``workers.control.RemoteKdfBudget``: a Deferred, one round trip)."""

    def take(self, cost_seconds: float) -> bool | Deferred[bool]: ...


class CheckerBusy(Exception):
    """Too many password checks this second: try again shortly (503, not 401)."""


# KDF runs timed per distinct parameter set at start-up; the median of three
# is the cost charged to the budget for each later check with those parameters.
_COST_SAMPLES = 3


def measure_kdf_seconds(parameters: str) -> float:
    """Seconds one check with these ``kdf_parameters`` takes here (median of a few)."""
    encoded = dummy_hash(parameters)
    samples = []
    for _ in range(_COST_SAMPLES):
        start = time.perf_counter()
        verify_password(b"timing probe", encoded)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


@implementer(ICredentialsChecker)
class UsersFileChecker:
    """Users file entries: salted scrypt/PBKDF2 hashes, successes cached.

    A cached login answers at once.  Checks that miss the cache share one
    ``KdfBudget`` counted in KDF seconds (each parameter set timed once, at
    start-up, by ``kdf_cost``); past it the checker fails at once with
    ``CheckerBusy``.  Within it the KDF runs through ``run_kdf`` (a thread:
    ``KdfThreads``), and the cache is filled from its answer, on the
    reactor thread.  An unknown user name is
    checked against a dummy hash with the parameters of the most expensive
    entry, so neither its answer nor its timing tells it from a known one.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        users: Mapping[str, UserEntry],
        cache: VerifiedCache[Identity],
        budget: KdfAllowance,
        *,
        kdf_cost: Callable[[str], float] = measure_kdf_seconds,
        run_kdf: RunKdf = run_here,
    ) -> None:
        self._users = users
        self._run_kdf = run_kdf
        self._cache = cache
        self._budget = budget
        self._costs = {
            parameters: kdf_cost(parameters)
            for parameters in {kdf_parameters(entry.password_hash) for entry in users.values()}
        }
        # The dearest entry's parameters; the default cost with no users at all.
        self.dummy_parameters = max(self._costs, key=self._costs.__getitem__, default=None)
        self._dummy = dummy_hash(self.dummy_parameters) if self.dummy_parameters else dummy_hash()
        self._dummy_cost = max(self._costs.values(), default=0.0)

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        user: bytes = credentials.username
        password: bytes = credentials.password
        key = self._cache.key(user, password)
        cached = self._cache.get(key)
        if cached is not None:
            return succeed(cached)
        try:
            name = user.decode("utf-8")
        except UnicodeDecodeError:
            name = None
        entry = self._users.get(name) if name is not None else None
        # An unknown user costs a KDF run too (the dearest one): timing must
        # not reveal names, nor the budget's 503 tell them apart.
        encoded = entry.password_hash if entry is not None else self._dummy
        # The dummy hash has the dearest entry's parameters, so it finds that cost.
        cost = self._costs.get(kdf_parameters(encoded), self._dummy_cost)

        def judged(matched: bool) -> Identity:
            if entry is None or not matched or name is None:
                raise UnauthorizedLogin(f"unknown user or wrong password for user {name!r}")
            identity = Identity(name, entry.grant, "basic")
            self._cache.put(key, identity)
            return identity

        def check(allowed: bool) -> Deferred[Identity]:
            if not allowed:
                return fail(CheckerBusy("too many password checks at once"))
            checked: Deferred[bool] = self._run_kdf(verify_password, password, encoded)
            return checked.addCallback(judged)

        allowed = self._budget.take(cost)
        if isinstance(allowed, Deferred):
            # The budget is the main process's (worker processes): one round trip first.
            return allowed.addCallback(check)
        return check(allowed)


@implementer(ICredentialsChecker)
class StaticTokenChecker:
    """Static tokens, found by their SHA-256 in the tokens file."""

    credentialInterfaces = (IStaticToken,)

    def __init__(self, tokens: Mapping[str, TokenEntry]) -> None:
        self._tokens = tokens

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        entry = self._tokens.get(token_digest(credentials.token))
        if entry is None:
            return fail(UnauthorizedLogin("bearer token not recognised"))
        return succeed(Identity(entry.name, entry.grant, "token"))


@implementer(ICredentialsChecker)
class JWTChecker:
    """JWTs verified by ``JWTVerifier`` (signature, exp, aud, iss)."""

    credentialInterfaces = (IJSONWebToken,)

    def __init__(self, verifier: JWTVerifier) -> None:
        self._verifier = verifier

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        try:
            identity = self._verifier.verify(credentials.token.decode("ascii"))
        except InvalidJWT as e:
            return fail(UnauthorizedLogin(f"JWT refused: {e}"))
        return succeed(identity)


@implementer(IRealm)
class StowRealm:
    """The checkers already built the ``Identity``; the realm hands it out."""

    def requestAvatar(
        self, avatarId: Any, mind: object, *interfaces: Any
    ) -> tuple[Any, Identity, Callable[[], None]]:
        if IPrincipal not in interfaces or not isinstance(avatarId, Identity):
            raise NotImplementedError("StowRealm only provides IPrincipal")
        return IPrincipal, avatarId, lambda: None


def build_portal(
    *,
    users: Mapping[str, UserEntry] | None,
    tokens: Mapping[str, TokenEntry] | None,
    jwt: JWTVerifier | None,
    clock: Callable[[], float],
    kdf_cost: Callable[[str], float] = measure_kdf_seconds,
    run_kdf: RunKdf = run_here,
    kdf_budget: KdfAllowance | None = None,
) -> Portal:
    """A portal with a checker for each configured credential kind.

    ``kdf_cost`` times one password check per parameter set (tests pass a
    fixed cost, as they pass a clock); ``run_kdf`` runs the checks (the
    server passes ``KdfThreads``); ``kdf_budget`` is the budget they share
    (default: a new ``KdfBudget`` on ``clock``).
    """
    portal = Portal(StowRealm())
    if users is not None:
        budget = kdf_budget if kdf_budget is not None else KdfBudget(clock)
        checker = UsersFileChecker(
            users, VerifiedCache(clock), budget, kdf_cost=kdf_cost, run_kdf=run_kdf
        )
        portal.registerChecker(checker)
    if tokens is not None:
        portal.registerChecker(StaticTokenChecker(tokens))
    if jwt is not None:
        portal.registerChecker(JWTChecker(jwt))
    return portal


def credential_factories(
    realm: bytes, *, basic: bool, bearer: bool, jwt: bool
) -> list[ICredentialFactory]:
    """The schemes offered (and challenged in WWW-Authenticate), Basic first."""
    factories: list[ICredentialFactory] = []
    if basic:
        factories.append(BasicCredentialFactory(realm))
    if bearer or jwt:
        factories.append(BearerCredentialFactory(realm, jwt=jwt))
    return factories
