"""Authentication and authorization over real HTTP (in-process server on 127.0.0.1).

Every refusal here is decided from the headers: the tests send only the
headers (or ``Expect: 100-continue``) and get the whole answer, never a
``100 Continue``, with nothing staged or stored.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from tests.auth_material import AUDIENCE, ISSUER, claims, ec_key, public_pem, sign
from tests.dicom_files import CT, MR, SR, read, stored_path
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.conftest import Server
from tests.integration.observe import staging_files, stored_files
from tests.integration.streaming import raw_exchange
from tests.integration.test_conformance import Reply, head, parse_raw, post_multipart, request
from twisted_stow.auth.files import entry_with_grant, write_atomically
from twisted_stow.auth.grants import EVERYTHING, Grant
from twisted_stow.auth.passwords import hash_password, token_digest
from twisted_stow.core.config import StowConfig

BOUNDARY = "auth-boundary"
CONTENT_TYPE = multipart_content_type(BOUNDARY)

PASSWORDS = {"admin": "admin-pw", "ct": "ct-pw", "wf": "wf-pw"}
GRANTS = {
    "admin": EVERYTHING,
    "ct": Grant(aets=frozenset({"CT1"}), workflows=frozenset()),
    "wf": Grant(aets=frozenset(), workflows=frozenset({"wf1"})),
}
STATIC_TOKEN = "static-token-for-tests-0123456789abcdefghijk"
JWT_KEY = ec_key()
OTHER_KEY = ec_key()

# One route per family, and the principal whose grant does and does not cover it.
FAMILIES = [
    # (path, allowed user, refused user)
    ("/studies", "admin", "ct"),
    ("/dicomweb/studies", "admin", "wf"),
    ("/dicomweb/wf1/studies", "wf", "ct"),
    ("/aets/CT1/rs/studies", "ct", "wf"),
]
ALL_ROUTES = [
    "/studies",
    "/studies/1.2.3",
    "/dicomweb/studies",
    "/dicomweb/studies/1.2.3",
    "/dicomweb/wf1/studies",
    "/dicomweb/wf1/studies/1.2.3",
    "/aets/CT1/rs/studies",
    "/aets/CT1/rs/studies/1.2.3",
]


@pytest.fixture(scope="module")
def auth_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A users file, a tokens file and a JWT public key, made once for the module."""
    directory = tmp_path_factory.mktemp("auth")
    users = {
        name: entry_with_grant({"password": hash_password(password.encode())}, GRANTS[name])
        for name, password in PASSWORDS.items()
    }
    tokens = {
        "modality": entry_with_grant(
            {"sha256": token_digest(STATIC_TOKEN.encode())},
            Grant(aets=frozenset({"CT1"}), workflows=frozenset()),
        )
    }
    paths = {
        "users": directory / "users.json",
        "tokens": directory / "tokens.json",
        "jwt": directory / "jwt.pem",
    }
    write_atomically(paths["users"], users)
    write_atomically(paths["tokens"], tokens)
    paths["jwt"].write_bytes(public_pem(JWT_KEY))
    return paths


def auth_config(files: dict[str, Path], **overrides: Any) -> StowConfig:
    options: dict[str, Any] = {
        "users_file": files["users"],
        "tokens_file": files["tokens"],
        "jwt_key_file": files["jwt"],
        "jwt_audience": AUDIENCE,
        "jwt_issuer": ISSUER,
        **overrides,
    }
    return StowConfig(**options)


@pytest.fixture
def stow_config(request: pytest.FixtureRequest, auth_files: dict[str, Path]) -> StowConfig:
    """Authentication on (users, tokens, JWT); a parameter adds options, or "off" turns it off."""
    param = getattr(request, "param", {})
    if param == "off":
        return StowConfig()
    return auth_config(auth_files, **param)


def with_options(**options: Any) -> Any:
    return pytest.mark.parametrize("stow_config", [options], indirect=True)


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every log event of the test, formatted (twisted.logger's global publisher)."""
    from twisted.logger import formatEvent

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def basic(user: str, password: str | None = None) -> str:
    secret = PASSWORDS[user] if password is None else password
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def bearer(token: str) -> str:
    return f"Bearer {token}"


def headers_only(path: str, *lines: str, length: int = 100_000) -> bytes:
    """A POST head announcing a body that is never sent."""
    return head(
        "POST",
        path,
        f"Content-Type: {CONTENT_TYPE}",
        f"Content-Length: {length}",
        *lines,
    )


async def exchange(server: Server, data: bytes, source: str = "127.0.0.1") -> tuple[bytes, Reply]:
    """Send ``data`` on a fresh socket (no body follows); all received and the response."""
    raw = await deferToThread(raw_exchange, server.port, data, source=source)
    return raw, parse_raw(raw)


def assert_refused(raw: bytes, reply: Reply, status: int, server: Server) -> dict[str, Any]:
    """A problem+json refusal with ``status``, no 100 Continue, nothing staged or stored."""
    assert reply.code == status, (reply.code, reply.body)
    assert reply.header("content-type") == "application/problem+json"
    assert b"100 Continue" not in raw
    assert staging_files(server.storage) == []
    assert stored_files(server.storage) == []
    problem: dict[str, Any] = json.loads(reply.body)
    assert problem["status"] == status
    return problem


async def post(
    client: Any, server: Server, path: str, authorization: str | None, parts: list[bytes]
) -> Reply:
    headers = {"Authorization": [authorization]} if authorization else {}
    return await post_multipart(client, server.url + path, parts, headers)


# --- 401 ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_ROUTES)
@pytest.mark.parametrize("expect", [True, False], ids=["expect-100", "no-expect"])
@pytest_twisted.ensureDeferred
async def test_no_credentials_is_401_from_the_headers(
    stow_server: Server, path: str, expect: bool
) -> None:
    """Every route: no Authorization → 401 with Basic and Bearer challenges, body never read."""
    lines = ["Expect: 100-continue"] if expect else []
    raw, reply = await exchange(stow_server, headers_only(path, *lines))
    assert_refused(raw, reply, 401, stow_server)
    assert reply.headers["www-authenticate"] == [
        'Basic realm="twisted-stow", charset="UTF-8"',
        'Bearer realm="twisted-stow"',
    ]


@pytest.mark.parametrize(
    "authorization",
    [
        basic("admin", "wrong"),
        basic("nobody", "x"),
        "Basic !!!not-base64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Bearer None",
        "Bearer not-a-known-token",
        "Bearer " + STATIC_TOKEN + " trailing",
        "Digest username=admin",
        "Basic",
    ],
    ids=[
        "wrong-password",
        "unknown-user",
        "bad-base64",
        "no-colon",
        "bearer-None",
        "unknown-token",
        "token-with-junk",
        "unoffered-scheme",
        "empty-basic",
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_credentials_are_401(stow_server: Server, authorization: str) -> None:
    """Wrong or malformed credentials (including dicomweb-client's "Bearer None"): 401."""
    raw, reply = await exchange(
        stow_server,
        headers_only("/studies", f"Authorization: {authorization}", "Expect: 100-continue"),
    )
    assert_refused(raw, reply, 401, stow_server)
    assert len(reply.headers["www-authenticate"]) == 2


@pytest_twisted.ensureDeferred
async def test_bad_bearer_token_challenge_says_invalid_token(stow_server: Server) -> None:
    """RFC 6750 §3.1: a refused bearer token gets error="invalid_token" in its challenge."""
    _, reply = await exchange(stow_server, headers_only("/studies", "Authorization: Bearer None"))
    assert 'Bearer realm="twisted-stow", error="invalid_token"' in reply.headers["www-authenticate"]


@pytest.mark.parametrize("stow_config", ["off"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_bearer_none_is_ignored_when_authentication_is_off(
    stow_server: Server, client: Any
) -> None:
    """Without auth options, "Authorization: Bearer None" (dicomweb-client) does not matter."""
    reply = await post(client, stow_server, "/studies", "Bearer None", [read(CT)])
    assert reply.code == 200
    assert stored_path(stow_server.storage, CT).read_bytes() == read(CT)


# --- 403 ----------------------------------------------------------------------


@pytest.mark.parametrize(("path", "allowed", "refused"), FAMILIES)
@pytest_twisted.ensureDeferred
async def test_outside_the_grant_is_403_from_the_headers(
    stow_server: Server, path: str, allowed: str, refused: str
) -> None:
    """Each route family: an authenticated principal without a grant for it → 403, body unread."""
    raw, reply = await exchange(
        stow_server,
        headers_only(path, f"Authorization: {basic(refused)}", "Expect: 100-continue"),
    )
    problem = assert_refused(raw, reply, 403, stow_server)
    assert refused in problem["detail"]
    assert "www-authenticate" not in reply.headers


@pytest.mark.parametrize(("path", "allowed", "refused"), FAMILIES)
@pytest_twisted.ensureDeferred
async def test_inside_the_grant_stores(
    stow_server: Server, client: Any, path: str, allowed: str, refused: str, log_lines: list[str]
) -> None:
    """Each route family: the granted principal stores, and is named in the request's log line."""
    reply = await post(client, stow_server, path, basic(allowed), [read(CT), read(MR)])
    assert reply.code == 200, reply.body
    assert stored_path(stow_server.storage, MR).read_bytes() == read(MR)
    assert any(f"principal {allowed}" in line and "stored 2 of 2" in line for line in log_lines)


@pytest.mark.parametrize(
    ("path", "aet", "allowed"),
    [("/aets/CT1/rs/studies", "CT1", True), ("/aets/MR1/rs/studies", "MR1", False)],
)
@pytest_twisted.ensureDeferred
async def test_static_token_grant(
    stow_server: Server, client: Any, path: str, aet: str, allowed: bool
) -> None:
    """The static token granted AE CT1 stores there and gets 403 on MR1."""
    reply = await post(client, stow_server, path, bearer(STATIC_TOKEN), [read(SR)])
    assert reply.code == (200 if allowed else 403), reply.body


# --- Basic and Bearer accepted ---------------------------------------------------


@pytest.mark.parametrize("stow_config", [{}, "off"], indirect=True, ids=["on", "off"])
@pytest_twisted.ensureDeferred
async def test_upload_carries_the_principal(
    stow_server: Server, client: Any, uploads: list[Any], stow_config: StowConfig
) -> None:
    """Upload.principal is the authenticated name (for workflow requests); None when auth is off."""
    token = sign(claims(sub="jwt-scanner"), JWT_KEY)
    reply = await post(client, stow_server, "/dicomweb/wf1/studies", bearer(token), [read(CT)])
    assert reply.code == 200, reply.body
    expected = None if stow_config.users_file is None else "jwt-scanner"
    assert [upload.principal for upload in uploads] == [expected]


@pytest_twisted.ensureDeferred
async def test_basic_and_bearer_both_accepted(
    stow_server: Server, client: Any, log_lines: list[str]
) -> None:
    """Basic (users file), a static token and a JWT each store; each is logged by name."""
    token = sign(claims(sub="jwt-scanner"), JWT_KEY)
    cases = [
        ("/studies", basic("admin"), CT, "admin"),
        ("/aets/CT1/rs/studies", bearer(STATIC_TOKEN), MR, "modality"),
        ("/dicomweb/wf9/studies", bearer(token), SR, "jwt-scanner"),
    ]
    for path, authorization, instance, name in cases:
        reply = await post(client, stow_server, path, authorization, [read(instance)])
        assert reply.code == 200, (name, reply.body)
        assert stored_path(stow_server.storage, instance).read_bytes() == read(instance)
        assert any(f"principal {name}" in line for line in log_lines), name


@pytest_twisted.ensureDeferred
async def test_repeated_basic_logins_run_the_kdf_once(stow_server: Server, client: Any) -> None:
    """Three uploads with one password: one scrypt check, in another thread than the
    reactor's, then the cache answers."""
    import threading

    from twisted_stow.auth import cred

    calls = []
    real = cred.verify_password

    def counting(password: bytes, encoded: str) -> bool:
        calls.append(threading.get_ident())
        return real(password, encoded)

    cred.verify_password = counting  # type: ignore[assignment]
    try:
        for instance in (CT, MR, SR):
            reply = await post(client, stow_server, "/studies", basic("admin"), [read(instance)])
            assert reply.code == 200
    finally:
        cred.verify_password = real
    assert len(calls) == 1 and calls[0] != threading.get_ident()


# --- JWT refusals ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "key", "reason"),
    [
        (claims(exp=1), JWT_KEY, "expired"),
        (claims(aud="another-service"), JWT_KEY, "wrong audience"),
        (claims(iss="https://evil.test"), JWT_KEY, "wrong issuer"),
        (claims(), OTHER_KEY, "bad signature"),
        (claims(exp=None), JWT_KEY, "missing claim"),
    ],
    ids=["expired", "audience", "issuer", "signature", "no-exp"],
)
@pytest_twisted.ensureDeferred
async def test_bad_jwt_is_401(
    stow_server: Server, payload: dict[str, Any], key: Any, reason: str, log_lines: list[str]
) -> None:
    """Expired, wrong audience/issuer/signature, no exp: 401; the log says why, not the token."""
    token = sign(payload, key)
    raw, reply = await exchange(
        stow_server,
        headers_only("/studies", f"Authorization: Bearer {token}", "Expect: 100-continue"),
    )
    assert_refused(raw, reply, 401, stow_server)
    failures = [line for line in log_lines if "authentication failed" in line]
    assert failures and reason in failures[-1]
    assert not any(token in line or token.split(".")[2] in line for line in log_lines)


@pytest_twisted.ensureDeferred
async def test_jwt_without_stow_scope_is_403(stow_server: Server) -> None:
    """A valid JWT whose scopes grant nothing: authenticated, so 403, not 401."""
    token = sign(claims(scope="openid profile"), JWT_KEY)
    raw, reply = await exchange(
        stow_server, headers_only("/studies", f"Authorization: Bearer {token}")
    )
    assert_refused(raw, reply, 403, stow_server)


# --- order of the header checks ----------------------------------------------------------


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (head("POST", "/nowhere", "Content-Length: 10"), 404),
        (head("GET", "/studies", "Content-Length: 10"), 405),
        (head("POST", "/studies", "Content-Type: text/plain", "Content-Length: 10"), 401),
        (
            head(
                "POST", "/studies/not-a-uid", f"Content-Type: {CONTENT_TYPE}", "Content-Length: 10"
            ),
            401,
        ),
        (head("POST", "/studies", f"Content-Type: {CONTENT_TYPE}", "Content-Length: 10000"), 401),
        (head("POST", "/studies", f"Content-Type: {CONTENT_TYPE}", "Content-Length: 0"), 401),
        (
            head(
                "POST",
                "/studies",
                "Content-Type: text/plain",
                "Content-Length: 10000",
                f"Authorization: {basic('ct')}",
            ),
            403,
        ),
        (
            head(
                "POST",
                "/studies",
                "Content-Type: text/plain",
                "Content-Length: 10000",
                f"Authorization: {basic('admin')}",
            ),
            415,
        ),
    ],
    ids=[
        "404",
        "405",
        "401-not-415",
        "401-not-400",
        "401-not-413",
        "401-not-400-empty",
        "403-not-415",
        "415-when-allowed",
    ],
)
@with_options(max_body_bytes=1000)
@pytest_twisted.ensureDeferred
async def test_order_of_header_checks(
    stow_server: Server, request_head: bytes, status: int
) -> None:
    """Unknown routes stay 404/405; 401/403 come before 400/413/415 (CONFORMANCE.md §3.1)."""
    _raw, reply = await exchange(stow_server, request_head)
    assert reply.code == status, reply.body


@with_options(max_requests=1)
@pytest_twisted.ensureDeferred
async def test_unauthenticated_request_takes_no_slot(stow_server: Server) -> None:
    """A 401 is decided before the upload slot: a refused client never holds one."""
    for _ in range(3):
        _raw, reply = await exchange(stow_server, headers_only("/studies"))
        assert reply.code == 401
    assert stow_server.handle.stow.slots.active == 0


# --- throttling --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_repeated_failures_from_one_peer_get_429(
    stow_server: Server, log_lines: list[str]
) -> None:
    """Five wrong passwords from one address: then 429 + Retry-After, even with the right one;
    another address is unaffected; the password never reaches the log."""
    wrong = "guess-number"
    for attempt in range(5):
        raw, reply = await exchange(
            stow_server,
            headers_only("/studies", f"Authorization: {basic('admin', f'{wrong}{attempt}')}"),
            source="127.0.0.7",
        )
        assert reply.code == 401
    raw, reply = await exchange(
        stow_server,
        headers_only("/studies", f"Authorization: {basic('admin')}"),
        source="127.0.0.7",
    )
    problem = assert_refused(raw, reply, 429, stow_server)
    assert raw.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert int(reply.headers["retry-after"][0]) >= 1
    assert "too many" in problem["detail"]
    # Another peer with the right password is served from the headers on (403 shows auth passed).
    raw, reply = await exchange(
        stow_server,
        headers_only("/aets/MR1/rs/studies", f"Authorization: {basic('ct')}"),
        source="127.0.0.8",
    )
    assert reply.code == 403
    text = "\n".join(log_lines)
    assert text.count("authentication failed from 127.0.0.7") == 5
    assert "'admin'" in text and "blocked for 10 s" in text
    assert wrong not in text and PASSWORDS["admin"] not in text


# --- CORS --------------------------------------------------------------------------------


@with_options(cors_origins=("https://viewer.example",))
@pytest_twisted.ensureDeferred
async def test_cors_preflight_needs_no_credentials(stow_server: Server, client: Any) -> None:
    """OPTIONS preflight asking for Authorization: 204 with it allowed, without credentials;
    the 401 to the browser's POST exposes WWW-Authenticate."""
    reply = await request(
        client,
        "OPTIONS",
        stow_server.url + "/aets/CT1/rs/studies",
        headers={
            "Origin": ["https://viewer.example"],
            "Access-Control-Request-Method": ["POST"],
            "Access-Control-Request-Headers": ["authorization, content-type"],
        },
    )
    assert reply.code == 204
    allowed = reply.header("access-control-allow-headers") or ""
    assert "authorization" in allowed.lower()
    assert reply.header("access-control-allow-origin") == "https://viewer.example"
    _raw, refused = await exchange(
        stow_server, headers_only("/studies", "Origin: https://viewer.example")
    )
    assert refused.code == 401
    assert refused.header("access-control-allow-origin") == "https://viewer.example"
    assert "WWW-Authenticate" in (refused.header("access-control-expose-headers") or "")


# --- a body that is being sent ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_refusal_reaches_a_client_that_sends_its_body(stow_server: Server) -> None:
    """A client that sends a whole body anyway still reads the 401; nothing is stored."""
    body = build_multipart([read(CT)], BOUNDARY)
    raw, reply = await exchange(stow_server, headers_only("/studies", length=len(body)) + body)
    assert_refused(raw, reply, 401, stow_server)
