"""A password checker whose KDF budget answers later (a worker asking the main process)."""

from __future__ import annotations

from twisted.cred.credentials import UsernamePassword
from twisted.internet.defer import Deferred

from tests.fakes import HeldThreads
from twisted_stow.auth.cache import VerifiedCache
from twisted_stow.auth.cred import CheckerBusy, UsersFileChecker
from twisted_stow.auth.files import UserEntry
from twisted_stow.auth.grants import EVERYTHING
from twisted_stow.auth.passwords import hash_password

USERS = {"alice": UserEntry(hash_password(b"pw", n=16), EVERYTHING)}


class LaterBudget:
    """Records each request for KDF time; the test answers them."""

    def __init__(self) -> None:
        self.asked: list[tuple[float, Deferred[bool]]] = []

    def take(self, cost_seconds: float) -> Deferred[bool]:
        answer: Deferred[bool] = Deferred()
        self.asked.append((cost_seconds, answer))
        return answer


def checker(budget: LaterBudget, threads: HeldThreads) -> UsersFileChecker:
    return UsersFileChecker(
        USERS,
        VerifiedCache(lambda: 0.0),
        budget,
        kdf_cost=lambda parameters: 0.25,
        run_kdf=threads,
    )


def test_the_kdf_runs_only_once_the_budget_said_yes() -> None:
    """The check waits for the budget's answer, charged the timed cost; then the KDF runs,
    and the login is cached (the next one asks nothing)."""
    budget, threads = LaterBudget(), HeldThreads()
    check = checker(budget, threads)
    answers: list[object] = []
    check.requestAvatarId(UsernamePassword(b"alice", b"pw")).addBoth(answers.append)
    assert [cost for cost, _ in budget.asked] == [0.25]
    assert threads.jobs == [] and answers == []
    budget.asked[0][1].callback(True)
    assert len(threads.jobs) == 1
    threads.run_all()
    assert [getattr(a, "name", None) for a in answers] == ["alice"]
    check.requestAvatarId(UsernamePassword(b"alice", b"pw")).addBoth(answers.append)
    assert len(budget.asked) == 1 and len(answers) == 2


def test_no_budget_is_checker_busy_without_a_kdf_run() -> None:
    """The budget says no (spent, or the main process is gone): CheckerBusy (503), no KDF."""
    budget, threads = LaterBudget(), HeldThreads()
    answers: list[object] = []
    checker(budget, threads).requestAvatarId(UsernamePassword(b"alice", b"x")).addErrback(
        answers.append
    )
    budget.asked[0][1].callback(False)
    assert threads.jobs == []
    assert [type(getattr(a, "value", a)) for a in answers] == [CheckerBusy]
