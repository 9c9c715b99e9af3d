"""Issue 16 point 7 with a real ``twistd -n stow``: SIGHUP reloads the users file and the
TLS certificate without dropping an upload in flight; a bad file keeps the old ones."""

from __future__ import annotations

import base64
import re
import shutil
import signal
import socket
import ssl
from pathlib import Path

from tests.auth_material import write_tls_files
from tests.dicom_files import CT, MR, read
from tests.helpers import build_multipart
from tests.integration.conftest import Twistd
from tests.integration.streaming import raw_post, status_of
from tests.integration.test_auth_twistd import stow_passwd

BOUNDARY = "reload-test-boundary-0123456789"
WAIT_SECONDS = 30.0
TLS_STARTED = re.compile(rb"StowSite \(TLS\) starting on (\d+)")


def tls_connection(port: int) -> ssl.SSLSocket:
    """A TLS connection that accepts any certificate (the test compares it itself)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS)
    return context.wrap_socket(raw)


def authorized_post(body: bytes, user: str, password: str) -> bytes:
    token = base64.b64encode(f"{user}:{password}".encode())
    request = raw_post(body, BOUNDARY)
    line_end = request.index(b"\r\n") + 2
    return request[:line_end] + b"Authorization: Basic " + token + b"\r\n" + request[line_end:]


def answer(sock: ssl.SSLSocket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()
    return received


def served_certificate(port: int) -> bytes:
    with tls_connection(port) as sock:
        served = sock.getpeercert(binary_form=True)
    assert served is not None
    return served


def pem_as_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_sighup_reloads_users_and_certificate(tmp_path: Path) -> None:
    """SIGHUP: a user added to the file is admitted, new connections get the new certificate,
    the upload open across it is stored; a broken file then keeps both and logs one line."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    _ca, key, cert = write_tls_files(tmp_path / "old")
    users = tmp_path / "users.json"
    stow_passwd("user", str(users), "alice", stdin="alice password\n")
    twistd = Twistd(
        tmp_path / "store",
        "--listen",
        f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        "--users",
        str(users),
    )
    try:
        assert twistd.wait_for(lambda lines: any(TLS_STARTED.search(x) for x in lines))
        match = TLS_STARTED.search(twistd.log().encode())
        assert match is not None
        port = int(match.group(1))
        old_certificate = served_certificate(port)
        assert old_certificate == pem_as_der(cert)
        # An upload is half sent when the files change and the signal comes.
        request = authorized_post(build_multipart([read(CT)], BOUNDARY), "alice", "alice password")
        upload = tls_connection(port)
        upload.sendall(request[: len(request) // 2])
        stow_passwd("user", str(users), "bob", stdin="bob password\n")
        _new_ca, new_key, new_cert = write_tls_files(tmp_path / "new")
        shutil.copyfile(new_key, key)
        shutil.copyfile(new_cert, cert)
        twistd.process.send_signal(signal.SIGHUP)
        assert twistd.wait_for(lambda lines: any(b"certificate reloaded" in x for x in lines))
        assert "credentials reloaded" in twistd.log()
        upload.sendall(request[len(request) // 2 :])
        assert status_of(answer(upload)) == 200
        assert served_certificate(port) == pem_as_der(new_cert) != old_certificate
        bob = authorized_post(build_multipart([read(MR)], BOUNDARY), "bob", "bob password")
        with tls_connection(port) as sock:
            sock.sendall(bob)
            assert status_of(answer(sock)) == 200
        # A broken users file and a missing key: one line each, the old ones stay.
        users.write_text("{not json")
        key.unlink()
        twistd.process.send_signal(signal.SIGHUP)
        assert twistd.wait_for(lambda lines: any(b"previous certificate stays" in x for x in lines))
        # Worded as at start-up: the error and the file it names.
        assert f"No such file or directory: {key}" in twistd.log()
        failed = [x for x in twistd.log().splitlines() if "SIGHUP: --users" in x]
        assert len(failed) == 1 and "previous credentials stay" in failed[0]
        assert "Traceback" not in twistd.log()
        with tls_connection(port) as sock:
            assert sock.getpeercert(binary_form=True) == pem_as_der(new_cert)
            sock.sendall(bob)
            assert status_of(answer(sock)) == 200
        assert twistd.process.poll() is None  # still serving
    finally:
        twistd.stop()
