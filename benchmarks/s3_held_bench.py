"""What held commits cost into S3: ``--verify-body-digest`` beside the plain PutObject path.

With a request ``Content-Digest`` and ``--verify-body-digest`` each part
below 5 MiB goes as a one-part multipart upload (CreateMultipartUpload, its
marker, UploadPart, then CompleteMultipartUpload and the marker's delete at
commit) instead of one PutObject at commit (docs/STORAGE.md, "Held
commits").  Before that path a body of more small parts than the upload's
window never got an answer, so there is no "before" figure to time; this
measures the price of the fix against the path that keeps its PutObject.

One SeaweedFS on 127.0.0.1, two servers on ``--memory-budget 10M`` (one
``--verify-body-digest``, one not), the same bodies (each with its
Content-Digest) to each in turn, run by run; medians and held / plain:

- **small**: ``--parts`` parts of 1.5 MiB (18 MiB with 12: more than the
  10 MiB window, the body that paused for good);
- **tiny**: ``--tiny-parts`` parts of MR_small (~10 KiB): per-request cost.

    python3 -m benchmarks.s3_held_bench                  # 5 runs each (~1 min)
    python3 -m benchmarks.s3_held_bench --runs 3 --parts 6
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from tests.dicom_files import MR
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.seaweedfs import SeaweedFS
from tests.integration.test_s3_storage import BOUNDARY, S3Server, new_instance, start_server

MIB = 1024 * 1024
SMALL_PADDING_BYTES = 3 * MIB // 2
TIMEOUT_SECONDS = 120.0


def body_of(count: int, padding: int, seed: int) -> tuple[bytes, int]:
    """A multipart body of ``count`` new instances and its instance bytes."""
    parts = [new_instance(MR, padding=padding, seed=seed * 1000 + i)[1] for i in range(count)]
    return build_multipart(parts, BOUNDARY), sum(len(part) for part in parts)


def post(server: S3Server, body: bytes) -> float:
    """Seconds to an answer of 200 (anything else ends the run, with the server's log)."""
    url = server.url
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    started = time.perf_counter()
    response = requests.post(
        url + "/studies",
        data=body,
        headers={
            "Content-Type": multipart_content_type(BOUNDARY),
            "Content-Digest": f"sha-256=:{digest}:",
        },
        timeout=TIMEOUT_SECONDS,
    )
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        errors = [line for line in server.twistd.log().splitlines() if "rror" in line]
        raise SystemExit(f"{url}: {response.status_code}\n" + "\n".join(errors[-10:]))
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--parts", type=int, default=12)
    parser.add_argument("--tiny-parts", type=int, default=100)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="s3-held-bench-") as work:
        base = Path(work)
        store = SeaweedFS(base / "seaweedfs")
        store.start()
        servers = {}
        try:
            for name, options in (("held", ("--verify-body-digest",)), ("plain", ())):
                servers[name] = start_server(
                    store, base / name, "--memory-budget", str(10 * MIB), *options
                )
            scenarios = {"small": (args.parts, SMALL_PADDING_BYTES), "tiny": (args.tiny_parts, 0)}
            for scenario, (count, padding) in scenarios.items():
                seconds: dict[str, list[float]] = {"held": [], "plain": []}
                nbytes = 0
                for run in range(args.runs):
                    for name, server in servers.items():
                        # New UIDs every run: a duplicate would be cheaper.
                        body, nbytes = body_of(count, padding, seed=run)
                        seconds[name].append(post(server, body))
                medians = {name: statistics.median(values) for name, values in seconds.items()}
                rates = {name: nbytes / median / 1e6 for name, median in medians.items()}
                print(
                    f"{scenario}: {count} parts, {nbytes / 1e6:.1f} MB, medians of {args.runs}: "
                    f"held {medians['held']:.2f} s ({rates['held']:.1f} MB/s), "
                    f"plain {medians['plain']:.2f} s ({rates['plain']:.1f} MB/s), "
                    f"held/plain time {medians['held'] / medians['plain']:.2f}"
                )
                for name, values in seconds.items():
                    print(f"  {name}: " + " ".join(f"{v:.2f}" for v in values))
        finally:
            for server in servers.values():
                server.stop()
            store.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
