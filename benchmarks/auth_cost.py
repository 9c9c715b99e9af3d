"""What one authentication decision costs on the reactor thread, per credential kind.

Runs ``Guard.authorize`` (twisted.cred portal, checkers, grant) directly, with
the default scrypt parameters: uncached Basic (the KDF), cached Basic, a
static token, and ES256/RS256 JWTs.  Prints the median of each in ms.

    python3 -m benchmarks.auth_cost
"""

from __future__ import annotations

import base64
import statistics
import time

from tests.auth_material import AUDIENCE, ISSUER, claims, ec_key, rsa_key, sign
from twisted_stow.auth.cred import build_portal, credential_factories
from twisted_stow.auth.files import TokenEntry, UserEntry
from twisted_stow.auth.grants import EVERYTHING
from twisted_stow.auth.guard import Guard
from twisted_stow.auth.jwt_verify import JWTVerifier
from twisted_stow.auth.passwords import hash_password, token_digest
from twisted_stow.auth.throttle import FailureThrottle
from twisted_stow.core.admission import Target

ROUNDS = 20


def median_ms(action: object, rounds: int = ROUNDS) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    ec, rsa = ec_key(), rsa_key()
    users = {"alice": UserEntry(hash_password(b"pw"), EVERYTHING)}
    tokens = {token_digest(b"static-token"): TokenEntry("modality", EVERYTHING)}
    target = Target(base_path="")
    clock = time.monotonic

    def guard(keys: dict[str | None, object], algorithm: str) -> Guard:
        verifier = JWTVerifier(keys, audience=AUDIENCE, issuer=ISSUER, algorithms=[algorithm])
        portal = build_portal(users=users, tokens=tokens, jwt=verifier, clock=clock)
        factories = credential_factories(b"r", basic=True, bearer=True, jwt=True)
        # A throttle that never blocks: the benchmark repeats failures on purpose.
        return Guard(portal, factories, FailureThrottle(clock, max_failures=10**9))

    es = guard({None: ec.public_key()}, "ES256")
    rs = guard({None: rsa.public_key()}, "RS256")
    basic = [b"Basic " + base64.b64encode(b"alice:pw")]
    rows = []

    def uncached() -> None:
        fresh = guard({None: ec.public_key()}, "ES256")  # a new cache each time
        fresh.authorize(basic, "p", target)

    rows.append(("Basic, scrypt n=2^14 (first login)", median_ms(uncached, 10)))
    es.authorize(basic, "p", target)
    rows.append(("Basic, cached", median_ms(lambda: es.authorize(basic, "p", target))))
    rows.append(
        (
            "Bearer static token",
            median_ms(lambda: es.authorize([b"Bearer static-token"], "p", target)),
        )
    )
    es_token = [b"Bearer " + sign(claims(), ec).encode()]
    rs_token = [b"Bearer " + sign(claims(), rsa, algorithm="RS256").encode()]
    rows.append(("Bearer JWT ES256", median_ms(lambda: es.authorize(es_token, "p", target))))
    rows.append(("Bearer JWT RS256", median_ms(lambda: rs.authorize(rs_token, "p", target))))
    for name, ms in rows:
        print(f"{name:40s} {ms:8.3f} ms")


if __name__ == "__main__":
    main()
