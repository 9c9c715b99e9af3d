"""A real ``twistd -n stow`` over TLS with authentication on.

The users and tokens files are made with the ``stow-passwd`` command (the
password on stdin), the certificate by a throwaway CA that the clients
trust: treq and dicomweb-client verify the server's certificate, no
verification is turned off.  pydicom's files are uploaded with Basic and
Bearer credentials; the log names the principal and never the secret.
"""

from __future__ import annotations

import base64
import json
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.ssl import Certificate
from twisted.internet.threads import deferToThread
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseNeverReceived,
)

from tests.auth_material import write_tls_files
from tests.dicom_files import CT, MR, SR, read, stored_path
from tests.integration.conftest import Twistd
from tests.integration.test_conformance import post_multipart

PASSWORD = "a long passphrase for alice"
# A TLS port logs "StowSite (TLS) starting on N" (conftest's pattern is for TCP).
_TLS_STARTED = re.compile(rb"StowSite \(TLS\) starting on (\d+)")


@dataclass
class TLSServer:
    url: str
    storage: Path
    ca: Path
    token: str
    users_file: Path
    twistd: Twistd


def stow_passwd(*args: str, stdin: str = "") -> str:
    """Run the installed ``stow-passwd`` (as an operator would); its stdout."""
    command = Path(sys.executable).with_name("stow-passwd")
    completed = subprocess.run(
        [str(command), *args], input=stdin, capture_output=True, text=True, check=True, timeout=60
    )
    return completed.stdout


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    """twistd on ssl:0 (127.0.0.1) with --users and --tokens made by stow-passwd."""
    directory = tmp_path_factory.mktemp("tls")
    ca, key, cert = write_tls_files(directory)
    users, tokens = directory / "users.json", directory / "tokens.json"
    stow_passwd("user", str(users), "alice", stdin=PASSWORD + "\n")
    stow_passwd("user", str(users), "ct-only", "--aet", "CT1", stdin="other password\n")
    token = stow_passwd("token", str(tokens), "modality", "--aet", "CT1").strip()
    storage = directory / "store"
    twistd = Twistd(
        storage,
        "--listen",
        f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        "--users",
        str(users),
        "--tokens",
        str(tokens),
    )
    try:
        if not twistd.wait_for(lambda lines: any(_TLS_STARTED.search(x) for x in lines)):
            raise AssertionError(f"twistd did not start:\n{twistd.log()}")
        match = _TLS_STARTED.search(twistd.log().encode())
        assert match is not None
        port = int(match.group(1))
        yield TLSServer(f"https://127.0.0.1:{port}", storage, ca, token, users, twistd)
    finally:
        twistd.stop()


@pytest.fixture
def tls_client(tls_server: TLSServer) -> Iterator[HTTPClient]:
    """treq trusting only the test CA, verifying the server's IP address."""
    from twisted.internet import reactor

    trust = Certificate.loadPEM(tls_server.ca.read_bytes())
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust), pool=pool)
    yield HTTPClient(agent)
    pool.closeCachedConnections()


def basic(user: str, password: str) -> dict[str, list[str]]:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": [f"Basic {encoded}"]}


def test_stow_passwd_files_hold_no_secret(tls_server: TLSServer) -> None:
    """The users file made by stow-passwd: mode 0600, scrypt hashes, no password in clear."""
    text = tls_server.users_file.read_text()
    assert PASSWORD not in text and "other password" not in text
    entries = json.loads(text)
    assert entries["alice"]["password"].startswith("scrypt$n=16384,r=8,p=1$")
    assert entries["ct-only"]["aets"] == ["CT1"]
    assert stat.S_IMODE(tls_server.users_file.stat().st_mode) == 0o600


@pytest_twisted.ensureDeferred
async def test_tls_upload_with_basic(tls_server: TLSServer, tls_client: HTTPClient) -> None:
    """pydicom's CT, MR, SR over TLS with Basic: 200, stored byte-identical, https RetrieveURLs."""
    reply = await post_multipart(
        tls_client,
        tls_server.url + "/studies",
        [read(CT), read(MR), read(SR)],
        basic("alice", PASSWORD),
    )
    assert reply.code == 200, reply.body
    for path in (CT, MR, SR):
        assert stored_path(tls_server.storage, path).read_bytes() == read(path)
    model = reply.json()
    urls = [item["00081190"]["Value"][0] for item in model["00081199"]["Value"]]
    assert all(url.startswith(tls_server.url + "/studies/") for url in urls)
    assert tls_server.twistd.wait_for(
        lambda lines: any(b"principal alice" in line for line in lines), timeout=10
    )
    # The access log line names the principal in the Common Log Format authuser field.
    assert tls_server.twistd.wait_for(
        lambda lines: any(b'"127.0.0.1" - alice [' in line for line in lines), timeout=10
    )
    assert PASSWORD not in tls_server.twistd.log()


@pytest_twisted.ensureDeferred
async def test_tls_upload_with_static_token(tls_server: TLSServer, tls_client: HTTPClient) -> None:
    """The token printed by stow-passwd stores on its AE title and nowhere else."""
    headers = {"Authorization": [f"Bearer {tls_server.token}"]}
    reply = await post_multipart(
        tls_client, tls_server.url + "/aets/CT1/rs/studies", [read(CT)], headers
    )
    assert reply.code == 200, reply.body
    reply = await post_multipart(tls_client, tls_server.url + "/studies", [read(CT)], headers)
    assert reply.code == 403
    assert tls_server.token not in tls_server.twistd.log()


@pytest_twisted.ensureDeferred
async def test_tls_refusals(tls_server: TLSServer, tls_client: HTTPClient) -> None:
    """Over TLS: no credentials 401 with both challenges; a wrong password 401, logged safely."""
    reply = await post_multipart(tls_client, tls_server.url + "/studies", [read(MR)])
    assert reply.code == 401
    assert len(reply.headers["www-authenticate"]) == 2
    reply = await post_multipart(
        tls_client, tls_server.url + "/studies", [read(MR)], basic("alice", "not-the-password")
    )
    assert reply.code == 401
    assert tls_server.twistd.wait_for(
        lambda lines: any(
            b"authentication failed" in line and b"'alice'" in line for line in lines
        ),
        timeout=10,
    )
    assert "not-the-password" not in tls_server.twistd.log()


@pytest_twisted.ensureDeferred
async def test_untrusted_certificate_is_refused_by_the_client(tls_server: TLSServer) -> None:
    """Verification is really on: a client that does not trust the test CA cannot connect."""
    from twisted.internet import reactor

    pool = HTTPConnectionPool(reactor, persistent=False)
    client = HTTPClient(Agent(reactor, pool=pool))
    try:
        with pytest.raises(ResponseNeverReceived, match=r"certificate verify failed"):
            await client.get(tls_server.url + "/studies")
    finally:
        pool.closeCachedConnections()


def store_with_dicomweb_client(base_url: str, ca: Path, user: str, password: str) -> Any:
    """Blocking: dicomweb-client over TLS (requests, verifying with the test CA), Basic auth."""
    import requests
    from dicomweb_client import DICOMwebClient

    session = requests.Session()
    # Not from the environment: REQUESTS_CA_BUNDLE would replace our CA, and
    # a proxy variable would send the traffic elsewhere than 127.0.0.1.
    session.trust_env = False
    session.verify = str(ca)
    session.auth = (user, password)
    datasets = [pydicom.dcmread(p) for p in (CT, MR, SR)]
    return DICOMwebClient(base_url, session=session).store_instances(datasets=datasets)


@pytest_twisted.ensureDeferred
async def test_dicomweb_client_over_tls_with_basic(tls_server: TLSServer) -> None:
    """dicomweb-client stores pydicom's files over TLS with Basic credentials (dcm4chee route)."""
    result = await deferToThread(
        store_with_dicomweb_client,
        tls_server.url + "/aets/CT1/rs",
        tls_server.ca,
        "ct-only",
        "other password",
    )
    assert len(result.ReferencedSOPSequence) == 3
