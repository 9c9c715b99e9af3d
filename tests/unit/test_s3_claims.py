"""The S3 claim loop's logic against a scripted store: conditional writes only, bounded.

The races themselves are tested against a real SeaweedFS with two servers
(tests/integration/test_s3_races.py); these pin what no real store does on
demand: a claim that changes under every write, a 412 for a claim that is
then not there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.credentials import Credentials
from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from twisted_stow.core.policy import CommitResult
from twisted_stow.storage.s3 import CLAIM_ROUNDS, S3Storage
from twisted_stow.storage.s3client import Response, S3Client, S3Error, S3Location

INDEX = "p/.sop-index/1.2.3"
KEY = "p/1/2/1.2.3.dcm"
SHA = "a" * 64


class ScriptedStore:
    """Answers each request from ``answer(method, key, headers)``; records them all."""

    def __init__(self, location: S3Location, answer: Any) -> None:
        self.location = location
        self.answer = answer
        self.sent: list[tuple[str, str, dict[str, str]]] = []

    async def request(
        self,
        operation: str,
        method: str,
        key: str = "",
        *,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        **_: Any,
    ) -> Response:
        sent = dict(headers or {})
        self.sent.append((method, key, sent))
        status, answer_headers, body, *retried = self.answer(method, key, sent)
        if status not in ok:
            raise S3Error(operation, status, "Scripted", "")
        return Response(status, answer_headers, body, *retried)

    def claim_puts(self) -> list[dict[str, str]]:
        return [headers for method, key, headers in self.sent if method == "PUT" and key == INDEX]


CLAIM = f"{KEY}\n{SHA}\n123\nrun-x\ntoken\n".encode()


def claim_with(answer: Any, *, overwrite: bool = False) -> tuple[ScriptedStore, Any]:
    """Run one writer's ``_claim`` against the script; the store and the outcome."""
    location = S3Location("b", "p/", "http://127.0.0.1:1", "us-east-1")
    reactor = MemoryReactorClock()
    storage = S3Storage(S3Client(location, Credentials("AK", "SK"), reactor), reactor)
    store = ScriptedStore(location, answer)
    storage.client = store  # type: ignore[assignment]
    writer = storage.open_writer()
    writer._client = store  # type: ignore[assignment]
    writer.size = 123
    outcome: list[Any] = []
    ensureDeferred(writer._claim(INDEX, CLAIM, KEY, SHA, overwrite)).addBoth(outcome.append)
    assert outcome, "the claim did not finish without the reactor"
    return store, outcome[0]


def test_a_412_for_a_claim_that_is_not_there_ends_after_bounded_rounds() -> None:
    """PutObject If-None-Match 412, GetObject 404, again and again: 0x0110 after
    ``CLAIM_ROUNDS`` tries (this recursed without bound before)."""

    def answer(method: str, key: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        return (412, {}, b"") if method == "PUT" else (404, {}, b"")

    store, outcome = claim_with(answer)
    assert isinstance(outcome, Failure) and isinstance(outcome.value, S3Error)
    assert outcome.value.code == "ClaimContended"
    puts = store.claim_puts()
    assert len(puts) == CLAIM_ROUNDS
    assert all(p.get("If-None-Match") == "*" and "If-Match" not in p for p in puts)
    # Every claim write carries its checksum, which the store verifies.
    assert all("x-amz-checksum-sha256" in p for p in puts)


def abandoned_claim_store(takeover_status: int) -> Any:
    """A dead run's claim (no heartbeat, no object) whose ETag changes at every read."""
    reads = [0]

    def answer(method: str, key: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if key == INDEX and method == "GET":
            reads[0] += 1
            body = f"{KEY}\n{'0' * 64}\n99\ndead-run\n".encode()
            return 200, {"etag": f'"etag-{reads[0]}"'}, body
        if key == INDEX and method == "PUT":
            if "If-None-Match" in headers:
                return 412, {}, b""
            return takeover_status, {"etag": '"mine"'}, b""
        return 404, {}, b""  # HeadObject of the object and of the run's heartbeat

    return answer


def test_takeover_is_conditional_on_the_etag_read() -> None:
    """An abandoned claim is taken over with If-Match on the ETag just read."""
    store, outcome = claim_with(abandoned_claim_store(200))
    assert outcome is CommitResult.STORED
    first, takeover = store.claim_puts()
    assert first["If-None-Match"] == "*"
    assert takeover["If-Match"] == '"etag-1"'


def test_takeover_lost_every_time_ends_after_bounded_rounds() -> None:
    """Every takeover lost (412: another upload changed the claim each time): each retry
    is conditional on the newest ETag, and the part fails 0x0110 after ``CLAIM_ROUNDS``."""
    store, outcome = claim_with(abandoned_claim_store(412))
    assert isinstance(outcome, Failure) and isinstance(outcome.value, S3Error)
    assert outcome.value.code == "ClaimContended"
    takeovers = [p for p in store.claim_puts() if "If-Match" in p]
    assert [p["If-Match"] for p in takeovers] == [f'"etag-{n}"' for n in range(1, CLAIM_ROUNDS + 1)]
    # Never an unconditional claim write.
    assert all("If-Match" in p or "If-None-Match" in p for p in store.claim_puts())


def test_overwrite_is_conditional_too() -> None:
    """``--duplicates overwrite`` rewrites another upload's claim only If-Match its ETag."""
    store, outcome = claim_with(abandoned_claim_store(200), overwrite=True)
    assert outcome is CommitResult.OVERWRITTEN
    assert store.claim_puts()[-1]["If-Match"] == '"etag-1"'


def retried_claim_store(stored: bytes) -> Any:
    """A claim write sent twice, its first answer lost: the store has ``stored``
    under the index (written by the first attempt, or by another upload), and
    the replay is refused 412, flagged ``retried``."""

    def answer(method: str, key: str, headers: dict[str, str]) -> tuple[Any, ...]:
        if key == INDEX and method == "PUT":
            return 412, {}, b"", True
        if key == INDEX and method == "GET":
            return 200, {"etag": '"first-attempt"'}, stored
        if method == "HEAD" and key == KEY:  # the other claim's object, whole
            return 200, {"content-length": "99"}, b""
        return 404, {}, b""

    return answer


def test_a_retried_claim_refused_for_our_own_claim_is_ours() -> None:
    """The replay's 412 is for the claim its first attempt wrote (the same token):
    stored, with that claim's ETag for a later If-Match unclaim; not a race loss."""
    store, outcome = claim_with(retried_claim_store(CLAIM))
    assert outcome is CommitResult.STORED
    assert len(store.claim_puts()) == 1


def test_a_retried_claim_refused_for_another_uploads_claim_is_lost() -> None:
    """The replay's 412 is for another upload's claim (other bytes, stored whole):
    a conflicting duplicate as without the retry."""
    other = f"{KEY}\n{'b' * 64}\n99\nrun-y\nother\n".encode()
    store, outcome = claim_with(retried_claim_store(other))
    assert outcome is CommitResult.CONFLICTING_DUPLICATE
    assert len(store.claim_puts()) == 1
