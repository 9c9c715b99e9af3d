"""Guard and the twisted.cred pieces without sockets: a fake clock, cheap hashes."""

from __future__ import annotations

import base64

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from tests.auth_material import AUDIENCE, ISSUER, claims, ec_key, sign
from tests.fakes import HeldThreads
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
from twisted_stow.auth.passwords import dummy_hash, hash_password, kdf_parameters, token_digest
from twisted_stow.auth.throttle import FailureThrottle, KdfBudget
from twisted_stow.core.admission import Target
from twisted_stow.core.errors import Forbidden, ServiceUnavailable, TooManyRequests, Unauthorized

KEY = ec_key()
USERS = {
    "alice": UserEntry(hash_password(b"pw", n=16), EVERYTHING),
    "ct": UserEntry(hash_password(b"ct", n=16), Grant(aets=frozenset({"CT1"}))),
}
TOKENS = {token_digest(b"tok"): TokenEntry("modality", EVERYTHING)}
PBKDF2_ENTRY = "pbkdf2-sha256$i=1000$c2FsdHNhbHQ=$" + "A" * 43 + "="
STANDARD = Target(base_path="")
CT1 = Target(base_path="/aets/CT1/rs", ae_title="CT1", route_family="dcm4chee")


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


# Each password check is charged this many KDF seconds: 8 of them spend the
# default budget of half a second per second (the real cost is timed at start-up).
CHECK_SECONDS = 0.0625


def make_guard(clock: Clock, *, jwt: bool = True, users: bool = True, tokens: bool = True) -> Guard:
    verifier = JWTVerifier({None: KEY.public_key()}, audience=AUDIENCE, issuer=ISSUER)
    portal = build_portal(
        users=USERS if users else None,
        tokens=TOKENS if tokens else None,
        jwt=verifier if jwt else None,
        clock=clock,
        kdf_cost=lambda parameters: CHECK_SECONDS,
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
        UsersFileChecker(USERS, VerifiedCache(clock), KdfBudget(clock)),
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
    """Past half a second of KDF in one second (8 checks): 503 Retry-After 1; cached pass."""
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


def test_kdf_budget_refills_over_time() -> None:
    """A bucket of 1 KDF second per second: two 0.5 s checks, none, one after half a second."""
    clock = Clock()
    budget = KdfBudget(clock, seconds_per_second=1.0)
    assert budget.take(0.5) and budget.take(0.5) and not budget.take(0.5)
    clock.now += 0.5
    assert budget.take(0.5) and not budget.take(0.5)


def test_kdf_budget_charges_a_dear_check_whole() -> None:
    """One check dearer than the bucket still runs, and its debt is paid before the next."""
    clock = Clock()
    budget = KdfBudget(clock, seconds_per_second=0.5)
    assert budget.take(2.0)
    clock.now += 3.0  # 1.5 s of debt refilled, balance back at 0: still refused
    assert not budget.take(0.1)
    clock.now += 0.5
    assert budget.take(0.1)


def test_unknown_user_costs_the_dearest_entry() -> None:
    """The dummy hash of an unknown name has the parameters of the most expensive entry."""
    users = {
        "cheap": UserEntry(hash_password(b"a", n=16), EVERYTHING),
        "dear": UserEntry(hash_password(b"b", n=1024), EVERYTHING),
        "pbkdf2": UserEntry(PBKDF2_ENTRY, EVERYTHING),
    }
    costs = {
        "scrypt$n=16,p=1,r=8": 0.001,
        "scrypt$n=1024,p=1,r=8": 0.2,
        "pbkdf2-sha256$i=1000": 0.05,
    }
    checker = UsersFileChecker(
        users, VerifiedCache(Clock()), KdfBudget(Clock()), kdf_cost=costs.__getitem__
    )
    assert checker.dummy_parameters == "scrypt$n=1024,p=1,r=8"
    for parameters in costs:
        assert kdf_parameters(dummy_hash(parameters)) == parameters


def test_unknown_user_is_charged_like_the_dearest_entry() -> None:
    """With a budget for one dear check, an unknown name spends it as the dear user would."""
    users = {
        "cheap": UserEntry(hash_password(b"a", n=16), EVERYTHING),
        "dear": UserEntry(hash_password(b"b", n=32), EVERYTHING),
    }
    costs = {"scrypt$n=16,p=1,r=8": 0.01, "scrypt$n=32,p=1,r=8": 0.5}
    clock = Clock()
    checker = UsersFileChecker(
        users, VerifiedCache(clock), KdfBudget(clock, 0.5), kdf_cost=costs.__getitem__
    )
    answers: list[object] = []
    checker.requestAvatarId(UsernamePassword(b"nobody", b"x")).addErrback(answers.append)
    checker.requestAvatarId(UsernamePassword(b"cheap", b"a")).addBoth(answers.append)
    assert [type(a.value).__name__ for a in answers] == ["UnauthorizedLogin", "CheckerBusy"]


def threaded_guard(clock: Clock, threads: HeldThreads) -> Guard:
    """Users only, their checks run by ``threads``."""
    portal = build_portal(
        users=USERS,
        tokens=None,
        jwt=None,
        clock=clock,
        kdf_cost=lambda parameters: CHECK_SECONDS,
        run_kdf=threads,
    )
    return Guard(
        portal,
        credential_factories(b"r", basic=True, bearer=False, jwt=False),
        FailureThrottle(clock),
    )


def test_an_uncached_password_is_answered_later_then_from_the_cache() -> None:
    """A cache miss gives a Deferred fired by the KDF's answer; the next login answers at once."""
    threads = HeldThreads()
    guard = threaded_guard(Clock(), threads)
    pending = guard.authorize(basic("alice", "pw"), "p", STANDARD)
    assert isinstance(pending, Deferred) and not pending.called
    answers: list[object] = []
    pending.addCallback(answers.append)
    threads.run_all()
    assert [getattr(a, "name", None) for a in answers] == ["alice"]
    again = guard.authorize(basic("alice", "pw"), "p", STANDARD)
    assert not isinstance(again, Deferred) and again.name == "alice"


def test_a_later_refusal_is_401_or_403_and_counts() -> None:
    """From the thread: a wrong password fails with 401 (counted), a grant miss with 403."""
    threads = HeldThreads()
    guard = threaded_guard(Clock(), threads)
    wrong = guard.authorize(basic("alice", "nope"), "peer", STANDARD)
    outside = guard.authorize(basic("ct", "ct"), "other", STANDARD)
    assert isinstance(wrong, Deferred) and isinstance(outside, Deferred)
    failures: list[Failure] = []
    wrong.addErrback(failures.append)
    outside.addErrback(failures.append)
    threads.run_all()
    assert [type(f.value) for f in failures] == [Unauthorized, Forbidden]
    assert len(guard.throttle) == 1


def test_cancelling_the_wait_does_not_stop_the_check() -> None:
    """The client left: its Deferred is cancelled, the check still runs and its failure counts."""
    threads = HeldThreads()
    guard = threaded_guard(Clock(), threads)
    pending = guard.authorize(basic("alice", "nope"), "peer", STANDARD)
    assert isinstance(pending, Deferred)
    failures: list[Failure] = []
    pending.addErrback(failures.append)
    pending.cancel()
    threads.run_all()
    assert [type(f.value) for f in failures] == [CancelledError]
    assert len(guard.throttle) == 1
