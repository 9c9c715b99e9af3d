"""Issue 19 over real sockets: per-instance SHA-256, digests verified, gzip/deflate bodies.

hashlib is the reference for every digest; the server under test is the
in-process one (filesystem storage under ``tmp_path``), and ``stow-verify``
runs as its console script.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.dicom_files import CT, MR, SR, read, stored_path, uids
from tests.helpers import multipart_content_type
from tests.integration.conftest import Server, serve_twistd
from tests.integration.observe import poll, staging_files, stored_files, wait_until
from tests.integration.streaming import failure_reasons, json_body, raw_exchange, status_of
from tests.integration.test_bounded_work import _current_rss, peak_rss, reset_peak_rss
from tests.integration.upload_folders import corpus
from twisted_stow.core.config import StowConfig
from twisted_stow.storage.staging import DIGEST_XATTR

BOUNDARY = "integrity-boundary"
OTHER_FAILURES = "0008119A"


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def part(data: bytes, *headers: str) -> bytes:
    """One part of a multipart body with its own header lines."""
    head = "".join(f"{line}\r\n" for line in ("Content-Type: application/dicom", *headers))
    return f"--{BOUNDARY}\r\n{head}\r\n".encode() + data + b"\r\n"


def body_of(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def request(body: bytes, *headers: str) -> bytes:
    lines = "".join(f"{line}\r\n" for line in headers)
    return (
        "POST /studies HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: {multipart_content_type(BOUNDARY)}\r\n{lines}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def exchange(server: Server, raw: bytes) -> bytes:
    answer: bytes = await deferToThread(raw_exchange, server.port, raw, read_timeout=60.0)
    return answer


def header(raw: bytes, name: str) -> str | None:
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def other_failure_details(model: dict[str, Any]) -> list[int]:
    return [item["00081197"]["Value"][0] for item in model.get(OTHER_FAILURES, {}).get("Value", [])]


@pytest_twisted.ensureDeferred
async def test_matching_part_digests_store_and_the_digest_is_kept(stow_server: Server) -> None:
    """sha-256, sha-512 and Content-MD5 per part as hashlib has them: stored, xattr = SHA-256."""
    ct, mr, sr = read(CT), read(MR), read(SR)
    body = body_of(
        part(ct, f"Content-Digest: sha-256=:{b64(hashlib.sha256(ct).digest())}:"),
        part(mr, f"Content-Digest: sha-512=:{b64(hashlib.sha512(mr).digest())}:"),
        part(sr, f"Content-MD5: {b64(hashlib.md5(sr).digest())}"),
    )
    answer = await exchange(stow_server, request(body))
    assert status_of(answer) == 200, answer
    for path in (CT, MR, SR):
        stored = stored_path(stow_server.storage, path)
        assert stored.read_bytes() == read(path)
        assert os.getxattr(stored, DIGEST_XATTR) == hashlib.sha256(read(path)).digest()


@pytest.mark.parametrize(
    "field",
    [
        "Content-Digest: sha-256=:{sha256}:",
        "Content-Digest: sha-512=:{sha512}:",
        "Content-MD5: {md5}",
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_wrong_part_digest_fails_that_instance_and_stores_nothing_of_it(
    stow_server: Server, field: str
) -> None:
    """A digest of other bytes: 0xC000 naming the digest, the other part stored, no file left."""
    ct, mr = read(CT), read(MR)
    wrong = {
        "sha256": b64(hashlib.sha256(mr).digest()),
        "sha512": b64(hashlib.sha512(mr).digest()),
        "md5": b64(hashlib.md5(mr).digest()),
    }
    body = body_of(part(ct, field.format(**wrong)), part(mr))
    answer = await exchange(stow_server, request(body))
    assert status_of(answer) == 202, answer
    model = json_body(answer)
    assert failure_reasons(model) == [0xC000]
    assert not stored_path(stow_server.storage, CT).exists()
    assert stored_path(stow_server.storage, MR).read_bytes() == mr
    assert staging_files(stow_server.storage) == []
    warning = header(answer, "Warning") or ""
    assert "C000" in warning.upper()


@pytest_twisted.ensureDeferred
async def test_body_digest_right_and_wrong(stow_server: Server) -> None:
    """A matching body Content-Digest: 200; a wrong one: parts kept, 202 listing the mismatch."""
    body = body_of(part(read(CT)))
    good = f"Content-Digest: sha-256=:{b64(hashlib.sha256(body).digest())}:"
    answer = await exchange(stow_server, request(body, good))
    assert status_of(answer) == 200, answer
    body = body_of(part(read(MR)))
    bad = f"Content-Digest: sha-512=:{b64(hashlib.sha512(b'x').digest())}:"
    answer = await exchange(stow_server, request(body, bad))
    assert status_of(answer) == 202, answer
    model = json_body(answer)
    assert other_failure_details(model) == [0xC000]
    assert uids(MR)[1] in answer.decode()
    assert stored_path(stow_server.storage, MR).read_bytes() == read(MR)


@pytest.mark.parametrize("stow_config", [StowConfig(verify_body_digest=True)], indirect=True)
@pytest_twisted.ensureDeferred
async def test_verify_body_digest_holds_commits_until_the_body_is_checked(
    stow_server: Server,
) -> None:
    """--verify-body-digest: a wrong body digest stores nothing (409); a right one stores all."""
    body = body_of(part(read(CT)), part(read(MR)))
    bad = f"Content-Digest: sha-256=:{b64(hashlib.sha256(b'not the body').digest())}:"
    answer = await exchange(stow_server, request(body, bad))
    assert status_of(answer) == 409, answer
    assert failure_reasons(json_body(answer)) == [0xC000, 0xC000]
    assert stored_files(stow_server.storage) == []
    assert staging_files(stow_server.storage) == []
    good = f"Content-Digest: sha-256=:{b64(hashlib.sha256(body).digest())}:"
    answer = await exchange(stow_server, request(body, good))
    assert status_of(answer) == 200, answer
    assert len(stored_files(stow_server.storage)) == 2


@pytest_twisted.ensureDeferred
async def test_want_content_digest_gets_a_content_digest_of_the_response(
    stow_server: Server,
) -> None:
    """Want-Content-Digest: sha-512 preferred → the response's sha-512, as hashlib has it."""
    body = body_of(part(read(CT)))
    answer = await exchange(stow_server, request(body, "Want-Content-Digest: sha-256=1, sha-512=5"))
    assert status_of(answer) == 200, answer
    content = answer.partition(b"\r\n\r\n")[2]
    assert header(answer, "Content-Digest") == (
        f"sha-512=:{b64(hashlib.sha512(content).digest())}:"
    )


@pytest_twisted.ensureDeferred
async def test_a_malformed_body_digest_is_refused_from_the_headers(stow_server: Server) -> None:
    """Content-Digest that is not a structured dictionary: 400 before any byte is stored."""
    answer = await exchange(
        stow_server, request(body_of(part(read(CT))), "Content-Digest: sha-256")
    )
    assert status_of(answer) == 400, answer
    assert stored_files(stow_server.storage) == []


@pytest.mark.parametrize("coding", ["gzip", "deflate", "x-gzip"])
@pytest_twisted.ensureDeferred
async def test_a_compressed_body_of_the_pydicom_corpus_is_stored_byte_identical(
    stow_server: Server, coding: str
) -> None:
    """gzip/deflate of every corpus file in one body: every instance stored with the same bytes."""
    files = corpus()
    body = body_of(*(part(read(path)) for path in files))
    encoded = gzip.compress(body) if "gzip" in coding else zlib.compress(body)
    answer = await exchange(stow_server, request(encoded, f"Content-Encoding: {coding}"))
    assert status_of(answer) == 200, answer[:2000]
    for path in files:
        assert stored_path(stow_server.storage, path).read_bytes() == read(path), path.name


@pytest_twisted.ensureDeferred
async def test_a_damaged_gzip_body_keeps_the_parts_before_the_damage(stow_server: Server) -> None:
    """A gzip stream cut short: the part decoded whole is stored, the damage is reported."""
    body = body_of(part(read(CT)), part(read(MR)))
    encoded = gzip.compress(body)[:-200]
    answer = await exchange(stow_server, request(encoded, "Content-Encoding: gzip"))
    assert status_of(answer) == 202, answer
    assert other_failure_details(json_body(answer)) == [0xC000]
    assert stored_path(stow_server.storage, CT).read_bytes() == read(CT)
    assert not stored_path(stow_server.storage, MR).exists()
    assert staging_files(stow_server.storage) == []


@pytest_twisted.ensureDeferred
async def test_an_unknown_coding_is_415_naming_what_is_decoded(stow_server: Server) -> None:
    """Content-Encoding: br → 415 with Accept-Encoding: gzip, deflate (RFC 9110 §15.5.16)."""
    answer = await exchange(stow_server, request(b"x" * 100, "Content-Encoding: br"))
    assert status_of(answer) == 415, answer
    assert header(answer, "Accept-Encoding") == "gzip, deflate"


@pytest.mark.parametrize("stow_config", [StowConfig(max_body_bytes=8 * 1024 * 1024)], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_gzip_bomb_is_413_on_its_decoded_size(stow_server: Server) -> None:
    """An MR part, then 64 MiB of zeros, in ~64 KiB of gzip against an 8 MiB limit.

    The limit is met past the first read's worth of inflating (4 MiB), on the
    cooperator, whether or not the whole body is in by then: one 413, naming
    the MR kept, and the part in flight's staging file removed.
    """
    zeros = bytes(64 * 1024 * 1024)
    body = body_of(part(read(MR)), part(read(CT)[:200] + zeros))
    encoded = gzip.compress(body, compresslevel=9)
    assert len(encoded) < 256 * 1024  # one socket read, once it is all in
    answer = await exchange(stow_server, request(encoded, "Content-Encoding: gzip"))
    assert status_of(answer) == 413, answer
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    problem = json_body(answer)
    assert "decoded body is larger" in problem["detail"]
    assert problem["storedSOPInstanceUIDs"] == [uids(MR)[1]]
    assert stored_files(stow_server.storage) == [stored_path(stow_server.storage, MR)]
    assert await poll(lambda: staging_files(stow_server.storage) == [])


@pytest_twisted.ensureDeferred
async def test_stow_verify_reports_a_changed_instance(stow_server: Server) -> None:
    """stow-verify: 0 while every stored file matches its digest; 1 naming the file changed."""
    body = body_of(part(read(CT)), part(read(MR)))
    assert status_of(await exchange(stow_server, request(body))) == 200
    command = [_console_script("stow-verify"), str(stow_server.storage)]
    clean = await deferToThread(subprocess.run, command, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    assert "2 instances, 2 match, 0 problems" in clean.stderr
    changed = stored_path(stow_server.storage, MR)
    data = bytearray(changed.read_bytes())
    data[-1] ^= 0xFF
    with open(changed, "r+b") as f:  # same inode: the digest stays, the bytes change
        f.write(data)
    found = await deferToThread(subprocess.run, command, capture_output=True, text=True)
    assert found.returncode == 1
    assert found.stdout.startswith(f"MISMATCH {changed} stored ")
    assert hashlib.sha256(bytes(data)).hexdigest() in found.stdout


def _console_script(name: str) -> str:
    import sys

    return str(Path(sys.executable).with_name(name))


MIB = 1024 * 1024
BOMB_LIMIT_BYTES = 256 * MIB
# What the twistd process may grow by while refusing the bomb: a fraction of
# the limit, so a server that inflated a read's worth at once would fail.
BOMB_RSS_GROWTH_BYTES = 64 * MIB


@pytest.fixture
def twistd_with_limit(tmp_path: Path) -> Iterator[Server]:
    """A real ``twistd -n stow`` with --max-body-size 256M."""
    yield from serve_twistd(tmp_path, "--max-body-size", str(BOMB_LIMIT_BYTES))


def gzip_bomb(decoded_bytes: int) -> bytes:
    """A multipart body of one CT part padded with zeros, gzip-compressed as it is built."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [compressor.compress(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())]
    out.append(compressor.compress(read(CT)))
    block = bytes(MIB)
    for _ in range(decoded_bytes // MIB):
        out.append(compressor.compress(block))
    out.append(compressor.compress(f"\r\n--{BOUNDARY}--\r\n".encode()))
    out.append(compressor.flush())
    return b"".join(out)


def test_a_gzip_bomb_is_refused_by_twistd_with_flat_rss(twistd_with_limit: Server) -> None:
    """~1 MiB of gzip inflating to 1 GiB against a 256 MiB limit: 413, VmHWM grows < 64 MiB."""
    server = twistd_with_limit
    pid = server.handle.pid
    warm = body_of(part(read(CT)))
    assert status_of(raw_exchange(server.port, request(warm))) == 200
    baseline = _current_rss(pid)
    reset_peak_rss(pid)
    bomb = gzip_bomb(1024 * MIB)
    assert len(bomb) < 2 * MIB
    answer = raw_exchange(server.port, request(bomb, "Content-Encoding: gzip"), read_timeout=120)
    assert status_of(answer) == 413, answer
    assert b"decoded body is larger" in answer
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert peak_rss(pid) - baseline < BOMB_RSS_GROWTH_BYTES
    # The part in flight is removed by the writer thread once the refusal has
    # aborted it, which may come just after the answer is sent.
    assert wait_until(lambda: staging_files(server.storage) == [])
