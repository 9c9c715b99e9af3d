"""twistd stow's authentication options: the config they build, and usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from tests.auth_material import ec_key, public_pem
from tests.unit.test_tap import parse
from twisted_stow.auth.files import entry_with_grant, write_atomically
from twisted_stow.auth.grants import EVERYTHING
from twisted_stow.auth.passwords import hash_password, token_digest


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    users, tokens, key = tmp_path / "users.json", tmp_path / "tokens.json", tmp_path / "k.pem"
    write_atomically(
        users, {"a": entry_with_grant({"password": hash_password(b"x", n=16)}, EVERYTHING)}
    )
    write_atomically(tokens, {"t": {"sha256": token_digest(b"tok")}})
    key.write_bytes(public_pem(ec_key()))
    return {"users": users, "tokens": tokens, "key": key, "dir": tmp_path}


def test_authentication_is_off_by_default() -> None:
    """No auth option: no files, the default JWT algorithms."""
    config = parse()
    assert config.users_file is None and config.tokens_file is None
    assert config.jwt_key_file is None and config.jwks_file is None
    assert config.jwt_algorithms == ("RS256", "ES256")


def test_every_auth_option_sets_its_field(files: dict[str, Path]) -> None:
    """Each authentication option lands in its StowConfig field."""
    config = parse(
        f"--users={files['users']}",
        f"--tokens={files['tokens']}",
        f"--jwt-key={files['key']}",
        "--jwt-audience=stow",
        "--jwt-issuer=https://idp",
        "--jwt-algorithm=ES256",
        "--jwt-algorithm=ES384",
    )
    assert config.users_file == files["users"]
    assert config.tokens_file == files["tokens"]
    assert config.jwt_key_file == files["key"]
    assert (config.jwt_audience, config.jwt_issuer) == ("stow", "https://idp")
    assert config.jwt_algorithms == ("ES256", "ES384")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--jwt-key={key}"], "--jwt-audience"),
        (["--jwt-key={key}", "--jwt-audience=a"], "--jwt-issuer"),
        (["--jwt-audience=a", "--jwt-issuer=i"], "--jwt-key"),
        (
            ["--jwt-key={key}", "--jwt-audience=a", "--jwt-issuer=i", "--jwt-algorithm=HS256"],
            "HS256",
        ),
        (["--users={dir}/missing.json"], "missing.json"),
        (["--users={key}"], "not JSON"),
        (["--tokens={users}"], "sha256"),
        (["--jwks={users}", "--jwt-audience=a", "--jwt-issuer=i"], "JWKS"),
    ],
)
def test_bad_auth_options_are_usage_errors(
    files: dict[str, Path], argv: list[str], message: str
) -> None:
    """Missing audience/issuer, HMAC algorithms, unreadable or malformed files: UsageError."""
    with pytest.raises(usage.UsageError, match=message):
        parse(*(arg.format(**files) for arg in argv))
