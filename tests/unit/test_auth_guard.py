"""Guard and the twisted.cred pieces without sockets: a fake clock, cheap hashes."""

from __future__ import annotations

import base64

import pytest
from twisted.cred.credentials import UsernamePassword
from zope.interface.verify import verifyObject

from tests.auth_material import AUDIENCE, ISSUER, claims, ec_key, sign
from twisted_stow.auth.cache import VerifiedCache
from twisted_stow.auth.cred import (
    BearerCredentialFactory,
    IJSONWebToken,
    IStaticToken,
    JWTChecker,
    StaticTokenChecker,
    UsersFileChecker,
    build_portal,
    credential_factories,
)
from twisted_stow.auth.files import TokenEntry, UserEntry
from twisted_stow.auth.grants import EVERYTHING, Grant
from twisted_stow.auth.guard import Guard
from twisted_stow.auth.jwt_verify import JWTVerifier
from twisted_stow.auth.passwords import hash_password, token_digest
from twisted_stow.auth.throttle import FailureThrottle, RateBudget
from twisted_stow.core.errors import Forbidden, ServiceUnavailable, TooManyRequests, Unauthorized
from twisted_stow.upload import Target

KEY = ec_key()
USERS = {
    "alice": UserEntry(hash_password(b"pw", n=16), EVERYTHING),
    "ct": UserEntry(hash_password(b"ct", n=16), Grant(aets=frozenset({"CT1"}))),
}
TOKENS = {token_digest(b"tok"): TokenEntry("modality", EVERYTHING)}
STANDARD = Target(base_path="")
CT1 = Target(base_path="/aets/CT1/rs", ae_title="CT1", route_family="dcm4chee")


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def make_guard(clock: Clock, *, jwt: bool = True, users: bool = True, tokens: bool = True) -> Guard:
    verifier = JWTVerifier({None: KEY.public_key()}, audience=AUDIENCE, issuer=ISSUER)
    portal = build_portal(
        users=USERS if users else None,
        tokens=TOKENS if tokens else None,
        jwt=verifier if jwt else None,
        clock=clock,
    )
    factories = credential_factories(b"twisted-stow", basic=users, bearer=tokens, jwt=jwt)
    return Guard(portal, factories, FailureThrottle(clock))


def basic(user: str, password: str) -> list[bytes]:
    return [b"Basic " + base64.b64encode(f"{user}:{password}".encode())]


def test_checkers_and_factory_provide_their_interfaces() -> None:
    """verifyObject on each checker and the bearer credential factory."""
    from twisted.cred.checkers import ICredentialsChecker
    from twisted.web.iweb import ICredentialFactory

    verifier = JWTVerifier({None: KEY.public_key()}, audience=AUDIENCE, issuer=ISSUER)
    clock = Clock()
    for checker in (
        UsersFileChecker(USERS, VerifiedCache(clock), RateBudget(clock)),
        StaticTokenChecker(TOKENS),
        JWTChecker(verifier),
    ):
        assert verifyObject(ICredentialsChecker, checker)
    factory = BearerCredentialFactory(b"r", jwt=True)
    assert verifyObject(ICredentialFactory, factory)
    assert IJSONWebToken.providedBy(factory.decode(b"a.b.c", None))
    assert IStaticToken.providedBy(factory.decode(b"abc", None))
    assert IStaticToken.providedBy(BearerCredentialFactory(b"r", jwt=False).decode(b"a.b.c", None))


def test_each_kind_of_credentials_gives_its_identity() -> None:
    """Basic, a static token and a JWT each log in, named and with their method."""
    guard = make_guard(Clock())
    alice = guard.authorize(basic("alice", "pw"), "p", STANDARD)
    assert (alice.name, alice.method) == ("alice", "basic")
    token = guard.authorize([b"Bearer tok"], "p", STANDARD)
    assert (token.name, token.method) == ("modality", "token")
    jwt = guard.authorize([b"bearer " + sign(claims(sub="s"), KEY).encode()], "p", STANDARD)
    assert (jwt.name, jwt.method) == ("s", "jwt")


def test_only_offered_schemes_are_challenged_and_accepted() -> None:
    """Users only: one Basic challenge, and any Bearer token is a 401."""
    guard = make_guard(Clock(), jwt=False, tokens=False)
    with pytest.raises(Unauthorized) as info:
        guard.authorize([b"Bearer tok"], "p", STANDARD)
    assert info.value.challenges == ('Basic realm="twisted-stow", charset="UTF-8"',)


def test_jwt_only_refuses_a_static_looking_token() -> None:
    """JWTs only: "Bearer None" has no checker (UnhandledCredentials) → 401, not 500."""
    guard = make_guard(Clock(), users=False, tokens=False)
    with pytest.raises(Unauthorized):
        guard.authorize([b"Bearer None"], "p", STANDARD)


def test_two_authorization_fields_are_refused() -> None:
    """Two Authorization header fields, even both valid: 401."""
    guard = make_guard(Clock())
    with pytest.raises(Unauthorized):
        guard.authorize([*basic("alice", "pw"), b"Bearer tok"], "p", STANDARD)


def test_grant_is_checked_after_authentication() -> None:
    """The CT1-only user: allowed on /aets/CT1, 403 on /studies."""
    guard = make_guard(Clock())
    assert guard.authorize(basic("ct", "ct"), "p", CT1).name == "ct"
    with pytest.raises(Forbidden):
        guard.authorize(basic("ct", "ct"), "p", STANDARD)


def test_throttle_blocks_a_peer_then_lets_it_try_again() -> None:
    """Five failures → 429 with Retry-After 10; after 10 s the right password works."""
    clock = Clock()
    guard = make_guard(clock)
    for _ in range(5):
        with pytest.raises(Unauthorized):
            guard.authorize(basic("alice", "nope"), "peer", STANDARD)
    with pytest.raises(TooManyRequests) as info:
        guard.authorize(basic("alice", "pw"), "peer", STANDARD)
    assert info.value.retry_after_seconds == 10
    clock.now += 10
    assert guard.authorize(basic("alice", "pw"), "peer", STANDARD).name == "alice"


def test_missing_credentials_do_not_count_as_failures() -> None:
    """Ten requests without Authorization: 401 each, never 429."""
    guard = make_guard(Clock())
    for _ in range(10):
        with pytest.raises(Unauthorized):
            guard.authorize(None, "peer", STANDARD)


def test_password_checks_share_a_budget_per_second() -> None:
    """Past 8 uncached checks in one second: 503 Retry-After 1; cached logins still pass."""
    clock = Clock()
    guard = make_guard(clock)
    assert guard.authorize(basic("alice", "pw"), "p0", STANDARD).name == "alice"  # now cached
    for peer in range(7):
        with pytest.raises(Unauthorized):
            guard.authorize(basic("alice", f"guess{peer}"), f"peer{peer}", STANDARD)
    with pytest.raises(ServiceUnavailable) as info:
        guard.authorize(basic("ct", "ct"), "another", CT1)
    assert info.value.retry_after_seconds == 1
    assert guard.authorize(basic("alice", "pw"), "p0", STANDARD).name == "alice"
    clock.now += 1
    assert guard.authorize(basic("ct", "ct"), "another", CT1).name == "ct"


def test_rate_budget_refills_over_time() -> None:
    """A bucket of 2 per second: two, then none, then one after half a second."""
    clock = Clock()
    budget = RateBudget(clock, rate=2)
    assert budget.take() and budget.take() and not budget.take()
    clock.now += 0.5
    assert budget.take() and not budget.take()


def test_unicode_and_undecodable_user_names() -> None:
    """A non-UTF-8 user-id is simply unknown (401), never a crash."""
    guard = make_guard(Clock())
    with pytest.raises(Unauthorized):
        guard.authorize([b"Basic " + base64.b64encode(b"\xff\xfe:pw")], "p", STANDARD)
    checker = UsersFileChecker(USERS, VerifiedCache(Clock()), RateBudget(Clock()))
    failures: list[object] = []
    checker.requestAvatarId(UsernamePassword(b"\xff", b"pw")).addErrback(failures.append)
    assert len(failures) == 1
