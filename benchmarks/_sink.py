"""The loopback limit: an HTTP server that reads request bodies and discards them.

Run as its own process (``python -m benchmarks._sink``) so its CPU is not
the client's: it prints its port, then serves each connection in a thread,
reads the head, reads the body (Content-Length or chunked) with
``recv_into`` a 1 MiB buffer, answers ``200 {}`` and closes.  It does no
parsing beyond the HTTP framing, so what the client reaches against it is
the most any server could take from this client on this machine.

``--store DIR --file-bytes N`` makes it the floor of a durable server
instead: the body is cut into files of N bytes (one per instance when N is
the instance size), each written as it arrives, fsynced and closed, and the
directory fsynced before the answer; ``--sha256`` also hashes every byte,
as twisted-stow's digest does.  No HTTP parsing past the framing, no
multipart, no DICOM, every syscall and hash on large buffers with the GIL
released: what no server that stores (and hashes) the bytes durably can
beat on this machine (benchmarks/floor_bench.py).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import socket
import sys
import threading
from pathlib import Path

BUFFER_BYTES = 1024 * 1024
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray(BUFFER_BYTES)
        self.view = memoryview(self.buffer)
        self.pending = b""  # bytes read past what was consumed

    def line(self) -> bytes:
        while b"\r\n" not in self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.pending += data
        line, _, self.pending = self.pending.partition(b"\r\n")
        return line

    def consume(self, count: int, store: _Files | None) -> None:
        """Read ``count`` body bytes, handing them to ``store`` if there is one."""
        take = min(count, len(self.pending))
        if store is not None and take:
            store.feed(memoryview(self.pending)[:take])
        self.pending = self.pending[take:]
        count -= take
        while count:
            got = self.sock.recv_into(self.view, min(count, BUFFER_BYTES))
            if not got:
                raise EOFError
            if store is not None:
                store.feed(self.view[:got])
            count -= got


class _Files:
    """A body cut into durable files of ``file_bytes`` each, in ``directory``."""

    def __init__(self, directory: Path, file_bytes: int, sha256: bool) -> None:
        self.directory, self.file_bytes, self.sha256 = directory, file_bytes, sha256
        self.fd = -1
        self.filled = 0
        self.hasher: hashlib._Hash | None = None

    def feed(self, data: memoryview) -> None:
        while data:
            if self.fd < 0:
                name = f"{next(_names)}.dcm"
                self.fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                self.filled = 0
                self.hasher = hashlib.sha256() if self.sha256 else None
            piece = data[: self.file_bytes - self.filled]
            if self.hasher is not None:
                self.hasher.update(piece)
            written = 0
            while written < len(piece):
                written += os.write(self.fd, piece[written:])
            self.filled += len(piece)
            data = data[len(piece) :]
            if self.filled == self.file_bytes:
                self.close()

    def close(self) -> None:
        if self.fd >= 0:
            if self.hasher is not None:
                self.hasher.digest()
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1

    def finish(self) -> None:
        self.close()
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_names = itertools.count()  # next() is atomic under the GIL


def _serve(sock: socket.socket, options: argparse.Namespace) -> None:
    with sock:
        reader = _Reader(sock)
        store = (
            _Files(options.store, options.file_bytes, options.sha256)
            if options.store is not None
            else None
        )
        try:
            length, chunked = 0, False
            while line := reader.line():
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                while size := int(reader.line().split(b";")[0], 16):
                    reader.consume(size, store)
                    reader.line()
                while reader.line():  # trailers, then the empty line
                    pass
            else:
                reader.consume(length, store)
            if store is not None:
                store.finish()
            sock.sendall(ANSWER)
        except (EOFError, OSError):
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None, help="write bodies here")
    parser.add_argument("--file-bytes", type=int, default=50 * 1024 * 1024)
    parser.add_argument("--sha256", action="store_true")
    options = parser.parse_args(argv)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    print(listener.getsockname()[1], flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=_serve, args=(sock, options), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
