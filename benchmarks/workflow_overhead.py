"""What a workflow request costs per POST: latency on /studies vs /dicomweb/.

Starts one ``twistd -n stow`` (temporary storage, 127.0.0.1, spool sink; no
broker) and sends ``--requests`` sequential POSTs of one small instance
(CT_small with a fresh SOP Instance UID) over keep-alive HTTP to each route,
alternating, then prints the median and 90th percentile latency per route and
the number of spool entries.  The /dicomweb/ route does the same storing plus
one spool file (write, fsync, rename, directory fsync) before answering.

Run from the repository root:

    python3 -m benchmarks.workflow_overhead --requests 200
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks._servers import Ours
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.crafted import instance

BOUNDARY = "workflow-benchmark"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="POSTs per route")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Ours(Path(tmp))
        try:
            # Keep-alive on purpose: the figure is the per-POST cost, not a connect.
            connection = http.client.HTTPConnection("127.0.0.1", server.port)
            latencies: dict[str, list[float]] = {"/studies": [], "/dicomweb/wf/studies": []}
            for _ in range(args.requests):
                for path, samples in latencies.items():
                    body = build_multipart([instance()], BOUNDARY)
                    started = time.perf_counter()
                    connection.request(
                        "POST", path, body, {"Content-Type": multipart_content_type(BOUNDARY)}
                    )
                    response = connection.getresponse()
                    response.read()
                    samples.append(time.perf_counter() - started)
                    assert response.status == 200, response.status
            for path, samples in latencies.items():
                samples.sort()
                p90 = samples[int(len(samples) * 0.9)]
                print(
                    f"{path:24} median {statistics.median(samples) * 1000:6.2f} ms  "
                    f"p90 {p90 * 1000:6.2f} ms  ({len(samples)} POSTs)"
                )
            spool = server.storage / ".workflow-spool"
            spooled = [p for p in spool.iterdir() if p.suffix == ".json"]
            print(f"spool entries: {len(spooled)}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
