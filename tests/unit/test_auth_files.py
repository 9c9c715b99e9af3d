"""The users and tokens files, the stow-passwd command, and the purity of the auth core."""

from __future__ import annotations

import io
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from twisted_stow.auth.command import main
from twisted_stow.auth.files import BadCredentialsFile, load_tokens, load_users
from twisted_stow.auth.grants import EVERYTHING, Grant
from twisted_stow.auth.passwords import token_digest, verify_password

REPO_ROOT = Path(__file__).resolve().parents[2]
PURE_AUTH = [
    "twisted_stow.auth.passwords",
    "twisted_stow.auth.grants",
    "twisted_stow.auth.files",
    "twisted_stow.auth.throttle",
    "twisted_stow.auth.cache",
    "twisted_stow.auth.jwt_verify",
    "twisted_stow.auth.command",
]


def test_auth_core_loads_no_twisted() -> None:
    """The pure auth modules (and stow-passwd) import no twisted module."""
    code = (
        "import importlib, sys, json\n"
        f"for m in {PURE_AUTH!r}: importlib.import_module(m)\n"
        "names = [m for m in sys.modules if m == 'twisted' or m.startswith('twisted.')]\n"
        "print(json.dumps(sorted(names)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, check=True, text=True
    )
    assert json.loads(out.stdout) == []


def add_user(
    monkeypatch: pytest.MonkeyPatch, path: Path, name: str, password: str, *grants: str
) -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(password + "\n"))
    return main(["user", str(path), name, *grants])


def test_user_command_writes_a_salted_hash_and_grant(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """stow-passwd user: the password from stdin, stored only as a hash; mode 0600; grants."""
    path = tmp_path / "users.json"
    assert add_user(monkeypatch, path, "alice", "correct horse") == 0
    assert add_user(monkeypatch, path, "bob", "pw2", "--aet", "CT1", "--workflow", "wf1") == 0
    assert add_user(monkeypatch, path, "carol", "pw3", "--scrypt-log2-n", "10") == 0
    text = path.read_text()
    assert "correct horse" not in text and "pw2" not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    users = load_users(path)
    assert verify_password(b"correct horse", users["alice"].password_hash)
    assert users["alice"].grant == EVERYTHING
    assert users["bob"].grant == Grant(aets=frozenset({"CT1"}), workflows=frozenset({"wf1"}))
    assert users["carol"].password_hash.startswith("scrypt$n=1024,r=8,p=1$")
    assert verify_password(b"pw3", users["carol"].password_hash)
    # Replacing a user keeps the others.
    assert add_user(monkeypatch, path, "alice", "new password") == 0
    users = load_users(path)
    assert verify_password(b"new password", users["alice"].password_hash)
    assert set(users) == {"alice", "bob", "carol"}


def test_token_command_prints_the_token_once_and_stores_its_digest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """stow-passwd token: prints a fresh token; the file holds its SHA-256 only."""
    path = tmp_path / "tokens.json"
    assert main(["token", str(path), "ct-modality", "--aet", "CT1"]) == 0
    token = capsys.readouterr().out.strip()
    assert token and token not in path.read_text()
    tokens = load_tokens(path)
    assert tokens[token_digest(token.encode())].name == "ct-modality"
    assert main(["remove", str(path), "ct-modality"]) == 0
    assert load_tokens(path) == {}


@pytest.mark.parametrize(
    ("argv", "stdin"),
    [
        (["user", "users.json", "a:b"], "pw\n"),
        (["user", "users.json", "alice"], "\n"),
        (["remove", "users.json", "nobody"], ""),
        (["user", "users.json", "alice", "--scrypt-log2-n", "20"], "pw\n"),
    ],
)
def test_command_refuses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str], stdin: str
) -> None:
    """A user name with a colon, an empty password, removing a missing entry: an error exit."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code not in (0, None)


@pytest.mark.parametrize(
    ("loader", "content"),
    [
        (load_users, "not json"),
        (load_users, "[]"),
        (load_users, '{"alice": {"password": "plain-text"}}'),
        (load_users, '{"alice": {}}'),
        (load_users, '{"a:b": {"password": "x"}}'),
        (
            load_users,
            '{"alice": {"password": "scrypt$n=16,r=8,p=1$c2FsdA==$aGFzaA==", "aets": "CT1"}}',
        ),
        (load_tokens, '{"t": {"sha256": "abc"}}'),
        (load_tokens, '{"t": {"token": "clear"}}'),
        (
            load_tokens,
            '{"t1": {"sha256": "' + "a" * 64 + '"}, "t2": {"sha256": "' + "a" * 64 + '"}}',
        ),
    ],
)
def test_bad_files_are_refused(loader: object, content: str, tmp_path: Path) -> None:
    """Unreadable, clear-text, malformed or ambiguous entries: BadCredentialsFile."""
    path = tmp_path / "file.json"
    path.write_text(content)
    with pytest.raises(BadCredentialsFile):
        loader(path)  # type: ignore[operator]


def test_missing_file_is_refused(tmp_path: Path) -> None:
    """A missing users file is a BadCredentialsFile naming it."""
    with pytest.raises(BadCredentialsFile, match=r"missing\.json"):
        load_users(tmp_path / "missing.json")
