"""The long fuzzing run: ``python -m tests.fuzz --minutes 10`` (see ``tests/fuzz/__init__``).

Repeats ``tests/fuzz/test_fuzz.py`` with ``--examples`` examples per property
(fresh random seeds each round) until ``--minutes`` are up, then times every
target on adversarial inputs of size n and 4n.  Exit status 1 if a property
failed (pytest prints the falsifying example: keep it in ``regressions.py``)
or a cost grew more than ``LINEAR_FACTOR`` times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.attacks import item_bomb
from twisted_stow.core.dicomheader import capture_header
from twisted_stow.core.errors import StowError
from twisted_stow.core.mediatype import negotiate, parse_media_type, split_list
from twisted_stow.core.multipart import MultipartParser

HERE = Path(__file__).resolve().parent
# Linear work at 4n costs ~4x; quadratic ~16x.  8 leaves room for noise.
LINEAR_FACTOR = 8.0
REPEATS = 5


def _ignoring_stow_errors(action: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        try:
            return action()
        except StowError:
            return None

    return run


def _multipart(body: bytes) -> Callable[[], object]:
    def run() -> object:
        parser = MultipartParser(b"boundary")
        return parser.feed(body) + parser.close()

    return _ignoring_stow_errors(run)


def _chunked_multipart(body: bytes, size: int) -> Callable[[], object]:
    def run() -> object:
        parser = MultipartParser(b"boundary")
        for start in range(0, len(body), size):
            parser.feed(body[start : start + size])
        return parser.close()

    return _ignoring_stow_errors(run)


def _part(payload: bytes, headers: bytes = b"") -> bytes:
    return b"--boundary\r\n" + headers + b"\r\n" + payload + b"\r\n--boundary--"


# name → input of size n → the work to time.
TARGETS: dict[str, Callable[[int], Callable[[], object]]] = {
    "multipart: payload of CRs": lambda n: _multipart(_part(b"\r" * n)),
    "multipart: partial delimiters": lambda n: _multipart(_part(b"\r\n--boundar" * (n // 11))),
    "multipart: partial delimiters, 7-byte reads": lambda n: _chunked_multipart(
        _part(b"\r\n--boundar" * (n // 11)), 7
    ),
    "multipart: many-line headers": lambda n: _multipart(
        (b"--boundary\r\n" + b"a:b\r\n" * 100 + b"\r\nx\r\n") * (n // 520) + b"--boundary--"
    ),
    "multipart: long folded header": lambda n: _multipart(
        _part(b"x", b"X: a\r\n" + (b" " + b"b" * (n // 200) + b"\r\n") * 50)
    ),
    "Accept: quoted escapes": lambda n: _ignoring_stow_errors(
        lambda: negotiate('"' + '\\"' * (n // 2))
    ),
    "Accept: many elements": lambda n: _ignoring_stow_errors(
        lambda: negotiate("a/b;q=0.1," * (n // 10))
    ),
    "split_list: quotes and commas": lambda n: lambda: split_list('",' * (n // 2)),
    "Content-Type: quoted escapes": lambda n: _ignoring_stow_errors(
        lambda: parse_media_type('a/b; x="' + "\\" * n)
    ),
    "Content-Type: empty parameters": lambda n: _ignoring_stow_errors(
        lambda: parse_media_type("a/b" + ";" * n)
    ),
    "Content-Type: no slash": lambda n: _ignoring_stow_errors(lambda: parse_media_type("a" * n)),
    "HeaderCapture: deflated items": lambda n: (lambda data: lambda: capture_header(data))(
        item_bomb(items=n // 8)
    ),
}
# n for the body targets; header values are timed at Twisted's cap on a
# request's whole header section (16 KiB, HTTPChannel.totalHeadersSize):
# beyond a few hundred KiB the regex engine's own memory growth, not the
# algorithm, dominates (a 512 KiB unterminated quoted-string costs 8x a
# 256 KiB one, 256 KiB costs 4x 64 KiB).
SIZE = 128 * 1024
HEADER_SIZE = 16 * 1024
_HEADER_TARGETS = ("Accept", "split_list", "Content-Type")


def best_time(work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def check_linear() -> bool:
    ok = True
    for name, make in TARGETS.items():
        n = HEADER_SIZE if name.startswith(_HEADER_TARGETS) else SIZE
        small, large = best_time(make(n)), best_time(make(4 * n))
        ratio = large / max(small, 1e-6)
        verdict = "ok" if ratio < LINEAR_FACTOR else "NOT LINEAR"
        ok &= ratio < LINEAR_FACTOR
        timings = f"n {small * 1000:8.2f} ms  4n {large * 1000:8.2f} ms"
        print(f"{name:45} {timings}  x{ratio:5.1f} {verdict}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description="The long fuzzing run of the pure core.")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--examples", type=int, default=5000, help="per property per round")
    args = parser.parse_args()
    deadline = time.monotonic() + args.minutes * 60
    env = {**os.environ, "STOW_FUZZ_EXAMPLES": str(args.examples)}
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        command = [sys.executable, "-m", "pytest", "-q", "-x", str(HERE / "test_fuzz.py")]
        if subprocess.run(command, env=env, check=False).returncode != 0:
            print(f"round {rounds}: a property failed (see above)")
            return 1
    print(f"{rounds} rounds of {args.examples} examples per property passed")
    return 0 if check_linear() else 1


if __name__ == "__main__":
    sys.exit(main())
