"""How fast the server refuses, measured from a process of its own.

``python -m benchmarks._probe PORT PATH INTERVAL`` sends, every INTERVAL
seconds until stdin closes, the head of a STOW-RS POST with
``Expect: 100-continue`` and times the status line.  A 503 is the refusal
being measured; a ``100 Continue`` means a slot was free, and the probe
closes the connection without sending the body (the server drops the
upload).  One JSON line per probe on stdout: ``{"status": ..., "ms": ...}``.

The clients of ``stow_bench.py`` measure refusals too, but 64 client threads
share one interpreter with their own work; this process does nothing else,
so its figure is the server's.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
import time

HEAD = (
    "POST {path} HTTP/1.1\r\n"
    "Host: 127.0.0.1:{port}\r\n"
    'Content-Type: multipart/related; type="application/dicom"; boundary=probe\r\n'
    "Accept: application/dicom+json\r\n"
    "Content-Length: 1048576\r\n"
    "Expect: 100-continue\r\n"
    "Connection: close\r\n\r\n"
)


def probe(port: int, path: str) -> tuple[int, float]:
    head = HEAD.format(path=path, port=port).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.monotonic()
        sock.sendall(head)
        select.select([sock], [], [], 10)
        line = sock.recv(64)
        seconds = time.monotonic() - started
    parts = line.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return status, seconds


def main() -> int:
    port, path, interval = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    stop = threading.Event()

    def wait_for_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_stdin, daemon=True).start()
    while not stop.wait(interval):
        try:
            status, seconds = probe(port, path)
        except OSError as exc:
            print(json.dumps({"status": 0, "error": str(exc)}), flush=True)
            continue
        print(json.dumps({"status": status, "ms": seconds * 1000}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
