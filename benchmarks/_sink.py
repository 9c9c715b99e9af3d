"""The loopback limit: an HTTP server that reads request bodies and discards them.

Run as its own process (``python -m benchmarks._sink``) so its CPU is not
the client's: it prints its port, then serves each connection in a thread,
reads the head, reads the body (Content-Length or chunked) with
``recv_into`` a 1 MiB buffer, answers ``200 {}`` and closes.  It does no
parsing beyond the HTTP framing, so what the client reaches against it is
the most any server could take from this client on this machine.
"""

from __future__ import annotations

import socket
import sys
import threading

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

    def discard(self, count: int) -> None:
        take = min(count, len(self.pending))
        self.pending = self.pending[take:]
        count -= take
        while count:
            got = self.sock.recv_into(self.view, min(count, BUFFER_BYTES))
            if not got:
                raise EOFError
            count -= got


def _serve(sock: socket.socket) -> None:
    with sock:
        reader = _Reader(sock)
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
                    reader.discard(size)
                    reader.line()
                while reader.line():  # trailers, then the empty line
                    pass
            else:
                reader.discard(length)
            sock.sendall(ANSWER)
        except (EOFError, OSError):
            pass


def main() -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    print(listener.getsockname()[1], flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=_serve, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
