"""stow-upload's command line: defaults, limits, paths from stdin, secrets never in argv."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from twisted_stow.client.options import UsageError, settings_from


def never(_: str) -> str:
    raise AssertionError("prompted")


def test_defaults_and_target() -> None:
    """Defaults of the issue; the target is URL/studies, or URL/studies/UID with --study."""
    settings = settings_from(["http://h:8042/dicom-web/", "a"], {}, prompt=never)
    assert settings.target == "http://h:8042/dicom-web/studies"
    assert (settings.max_instances, settings.max_bytes, settings.concurrency) == (
        100,
        512 * 1024**2,
        4,
    )
    assert settings.retries == 5 and settings.authorization is None
    study = settings_from(["http://h", "a", "--study", "1.2.3"], {}, prompt=never)
    assert study.target == "http://h/studies/1.2.3"
    assert settings.gzip is False
    assert settings_from(["http://h", "a", "--gzip"], {}, prompt=never).gzip is True


def test_paths_from_stdin() -> None:
    """``-`` reads one path per line from stdin, between the other paths."""
    settings = settings_from(
        ["http://h", "x", "-", "y"], {}, read_stdin=lambda: "a\n\nb c\n", prompt=never
    )
    assert settings.paths == ("x", "a", "b c", "y")


def test_password_from_file_env_or_prompt(tmp_path: Path) -> None:
    """--password-file wins over STOW_PASSWORD, which wins over the prompt."""
    secret = tmp_path / "pw"
    secret.write_text("from file\n")

    def basic(password: str) -> str:
        return "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()

    argv = ["http://h", "a", "--user", "alice"]
    with_file = settings_from([*argv, "--password-file", str(secret)], {"STOW_PASSWORD": "e"})
    assert with_file.authorization == basic("from file")
    assert settings_from(argv, {"STOW_PASSWORD": "env"}, prompt=never).authorization == basic("env")
    assert settings_from(argv, {}, prompt=lambda _: "typed").authorization == basic("typed")


def test_bearer_token_from_file_or_env(tmp_path: Path) -> None:
    """--token-file or STOW_TOKEN give a Bearer header."""
    token = tmp_path / "token"
    token.write_text("abc\n")
    assert (
        settings_from(["http://h", "a", "--token-file", str(token)], {}).authorization
        == "Bearer abc"
    )
    assert settings_from(["http://h", "a"], {"STOW_TOKEN": "xyz"}).authorization == "Bearer xyz"


def test_no_option_takes_a_secret_in_argv() -> None:
    """There is no --password or --token: argparse refuses them (exit status 2)."""
    for option in ("--password", "--token"):
        with pytest.raises(SystemExit) as exited:
            settings_from(["http://h", "a", option, "s3cret"], {}, prompt=never)
        assert exited.value.code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["ftp://h", "a"],
        ["http://h", "a", "--concurrency", "0"],
        ["http://h", "a", "--max-bytes", "lots"],
        ["http://h", "a", "--password-file", "/nonexistent"],
        ["http://h", "a", "--user", "a:b", "--password-file", "/dev/null"],
    ],
)
def test_usage_errors(argv: list[str]) -> None:
    """Unusable options raise UsageError (exit status 2)."""
    with pytest.raises(UsageError):
        settings_from(argv, {}, prompt=never)
