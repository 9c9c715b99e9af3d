"""A worker's start-up spec, sent over its control socketpair before the AMP traffic.

The spec (the worker's number and run token, the main process's pid, its
listening sockets and the ``twistd stow`` arguments) once went in an
environment variable: readable in ``/proc/PID/environ`` for the worker's
whole life (``os.environ.pop`` does not clear the kernel's copy) and
inherited by anything it spawned.  The control socketpair is already
there, private to the two processes, so the main process writes the spec
on it first, as one length-prefixed JSON document, and the worker reads
exactly that much before AMP takes the connection over.  No Twisted here:
the worker reads it before it imports the reactor.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

# The worker's end of the control socketpair: the first descriptor after
# stdin, stdout and stderr; its listening sockets follow it.
CONTROL_FD = 3
FIRST_LISTEN_FD = 4
_LENGTH = struct.Struct("!I")
# A spec is a few hundred bytes; a bound keeps a corrupt length from a huge read.
MAX_SPEC_BYTES = 16 * 1024 * 1024


def send_spec(sock: socket.socket, spec: dict[str, Any]) -> None:
    """Blocking: write ``spec`` on the main process's end (before it is adopted)."""
    body = json.dumps(spec).encode()
    if len(body) > MAX_SPEC_BYTES:
        raise ValueError(f"a worker spec of {len(body)} bytes is too large")
    sock.sendall(_LENGTH.pack(len(body)) + body)


def receive_spec(fd: int) -> dict[str, Any]:
    """Blocking: read the spec from the worker's end; ``ValueError`` if it is cut short."""
    (length,) = _LENGTH.unpack(_read_exactly(fd, _LENGTH.size))
    if length > MAX_SPEC_BYTES:
        raise ValueError(f"a worker spec of {length} bytes is too large")
    spec = json.loads(_read_exactly(fd, length))
    if not isinstance(spec, dict):
        raise ValueError("a worker spec is a JSON object")
    return spec


def _read_exactly(fd: int, count: int) -> bytes:
    # Not more than asked: what follows on the connection is AMP's.
    chunks = []
    while count:
        chunk = os.read(fd, count)
        if not chunk:
            raise ValueError("the control connection closed before the worker spec")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)
