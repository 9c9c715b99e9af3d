"""What authentication costs: per decision in-process, and to everyone else during a burst.

``costs``: runs ``Guard.authorize`` (twisted.cred portal, checkers, grant)
directly, with the default scrypt parameters: uncached Basic (the KDF),
cached Basic, a static token, and ES256/RS256 JWTs.  Prints the median of
each in ms.

``burst``: a real ``twistd -n stow`` whose users file holds one entry at
scrypt n=2^17 (what ``stow-passwd user --scrypt-log2-n 17`` writes) sends
64 wrong passwords for it from 16 addresses (127.0.0.2-17) at once, each on
its own connection with a small body, while a probe from 127.0.0.1 sends an
unrelated request (``OPTIONS /studies``, no authentication) every 20 ms.
Prints, per run and as the median of the runs: the probe's median and
maximum latency during the burst (the delay the burst costs everyone else),
its latency before the burst, and how many of the 64 refusals the clients
read (the others were reset or cut off).  A fresh server per run: the
per-address throttle remembers the last run's failures.

    python3 -m benchmarks.auth_cost                 # both
    python3 -m benchmarks.auth_cost --only burst --runs 5
"""

from __future__ import annotations

import argparse
import base64
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.auth_material import (
    AUDIENCE,
    ISSUER,
    claims,
    dear_password_twistd,
    ec_key,
    rsa_key,
    sign,
)
from twisted_stow.auth.cred import build_portal, credential_factories
from twisted_stow.auth.files import TokenEntry, UserEntry
from twisted_stow.auth.grants import EVERYTHING
from twisted_stow.auth.guard import Guard
from twisted_stow.auth.jwt_verify import JWTVerifier
from twisted_stow.auth.passwords import hash_password, token_digest
from twisted_stow.auth.throttle import FailureThrottle
from twisted_stow.core.admission import Target

ROUNDS = 20

# The burst of issue 17, point 4.
BURST_ADDRESSES = 16
BURST_REQUESTS_PER_ADDRESS = 4
BURST_BODY_BYTES = 1000
PROBE_INTERVAL_SECONDS = 0.02
# Probes sent before the burst: the server's latency when nothing else happens.
IDLE_PROBES = 20
SOCKET_TIMEOUT_SECONDS = 30.0
DEFAULT_RUNS = 3


def median_ms(action: Callable[[], object], rounds: int = ROUNDS) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def costs() -> None:
    """One decision per credential kind, in-process (the KDF in the calling thread)."""
    ec, rsa = ec_key(), rsa_key()
    users = {"alice": UserEntry(hash_password(b"pw"), EVERYTHING)}
    tokens = {token_digest(b"static-token"): TokenEntry("modality", EVERYTHING)}
    target = Target(base_path="")
    clock = time.monotonic

    def guard(keys: dict[str | None, object], algorithm: str) -> Guard:
        verifier = JWTVerifier(keys, audience=AUDIENCE, issuer=ISSUER, algorithms=[algorithm])
        # A fixed KDF cost: timing the entries at start-up would be measured with the check.
        portal = build_portal(
            users=users, tokens=tokens, jwt=verifier, clock=clock, kdf_cost=lambda _: 0.0
        )
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


@dataclass
class BurstRun:
    idle_ms: float  # the probe's median before the burst
    median_ms: float  # the probe's median during the burst
    max_ms: float
    answered: dict[int, int]  # status -> refusals read whole
    lost: int  # refusals reset or cut off


def _probe(port: int) -> float:
    """Seconds until the whole answer to OPTIONS /studies is read."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_SECONDS) as sock:
        sock.sendall(b"OPTIONS /studies HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        while sock.recv(65536):
            pass
    return time.perf_counter() - start


def _wrong_password(port: int, source: str, attempt: int) -> int | None:
    """One wrong password with a small body; the status read, None if the answer was lost."""
    secret = base64.b64encode(f"alice:wrong guess {source} {attempt}".encode()).decode()
    head = (
        "POST /studies HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
        f"Authorization: Basic {secret}\r\nContent-Length: {BURST_BODY_BYTES}\r\n\r\n"
    )
    received = b""
    try:
        with socket.create_connection(
            ("127.0.0.1", port), timeout=SOCKET_TIMEOUT_SECONDS, source_address=(source, 0)
        ) as sock:
            sock.sendall(head.encode() + b"x" * BURST_BODY_BYTES)
            while data := sock.recv(65536):
                received += data
    except OSError:  # reset, or a timeout: the refusal did not arrive whole
        return None
    head_bytes, separator, body = received.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head_bytes.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        None,
    )
    if not separator or length is None or len(body) < length:
        return None
    return int(head_bytes.split(b" ", 2)[1])


def burst_once(workdir: Path) -> BurstRun:
    server = dear_password_twistd(workdir, password=b"the right password", token=b"unused")
    try:
        (port,) = server.ports(1)
        idle = [_probe(port) for _ in range(IDLE_PROBES)]
        during: list[float] = []
        done = threading.Event()

        def probe_until_done() -> None:
            while not done.is_set():
                during.append(_probe(port))
                time.sleep(PROBE_INTERVAL_SECONDS)

        prober = threading.Thread(target=probe_until_done)
        prober.start()
        jobs = [
            (f"127.0.0.{2 + address}", attempt)
            for attempt in range(BURST_REQUESTS_PER_ADDRESS)
            for address in range(BURST_ADDRESSES)
        ]
        with ThreadPoolExecutor(len(jobs)) as pool:
            statuses = list(pool.map(lambda job: _wrong_password(port, *job), jobs))
        done.set()
        prober.join()
    finally:
        server.stop()
    answered: dict[int, int] = {}
    for status in statuses:
        if status is not None:
            answered[status] = answered.get(status, 0) + 1
    return BurstRun(
        idle_ms=statistics.median(idle) * 1000,
        median_ms=statistics.median(during) * 1000,
        max_ms=max(during) * 1000,
        answered=answered,
        lost=statuses.count(None),
    )


def burst(runs: int) -> None:
    """The burst ``runs`` times, each on a fresh server; per run and the medians."""
    results = []
    for run in range(runs):
        with tempfile.TemporaryDirectory(prefix="auth-burst-") as directory:
            result = burst_once(Path(directory))
        results.append(result)
        answered = ", ".join(f"{n}x{status}" for status, n in sorted(result.answered.items()))
        print(
            f"run {run + 1}: unrelated request idle {result.idle_ms:.1f} ms, during the burst "
            f"median {result.median_ms:.1f} ms, max {result.max_ms:.1f} ms; "
            f"refusals read {answered}, lost {result.lost}"
        )
    print(
        f"median of {runs} runs: idle {statistics.median(r.idle_ms for r in results):.1f} ms, "
        f"during the burst {statistics.median(r.median_ms for r in results):.1f} ms "
        f"(max {statistics.median(r.max_ms for r in results):.1f} ms), "
        f"refusals lost {sum(r.lost for r in results)} of "
        f"{runs * BURST_ADDRESSES * BURST_REQUESTS_PER_ADDRESS}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["costs", "burst"], default=None)
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="burst runs")
    args = parser.parse_args()
    if args.only in (None, "costs"):
        costs()
    if args.only in (None, "burst"):
        burst(args.runs)


if __name__ == "__main__":
    main()
