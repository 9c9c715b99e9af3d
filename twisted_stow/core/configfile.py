"""``--config FILE``: the options in a TOML file, under their long names.

Pure: it reads the file it is given and returns option values in the form
``usage.Options`` collects them (text, a list of texts for a repeatable
option, 0/1 for a flag), so ``config_from_options`` checks a value from the
file exactly as it checks one from the command line.  ``merge`` lets the
command line win: an option given there replaces the file's value.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the same parser, from PyPI
    import tomli as tomllib


# The option that names the file; not allowed inside it.
CONFIG_OPTION = "config"


class ConfigFileError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


def read_config_file(
    path: Path, *, parameters: set[str], flags: set[str], repeatable: set[str]
) -> dict[str, Any]:
    """The option values of the TOML file at ``path``.

    ``parameters`` take one value (a string, or an integer or float, which
    is kept as its text: ``max-parts = 500``); ``repeatable`` take a string
    or a list of strings; ``flags`` take a boolean.
    """
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigFileError(f"--config: cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigFileError(f"--config: {path} is not valid TOML: {e}") from None
    values: dict[str, Any] = {}
    for key, value in document.items():
        where = f"{path}: {key!r}"
        if key in flags:
            if not isinstance(value, bool):
                raise ConfigFileError(f"{where} must be true or false, not {_kind(value)}")
            values[key] = int(value)
        elif key in repeatable:
            items = value if isinstance(value, list) else [value]
            if not all(isinstance(item, str) for item in items):
                raise ConfigFileError(f"{where} must be a string or a list of strings")
            values[key] = list(items)
        elif key in parameters and key != CONFIG_OPTION:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ConfigFileError(f"{where} must be a string or a number, not {_kind(value)}")
            values[key] = str(value)
        else:
            raise ConfigFileError(f"{where} is not an option of twistd stow")
    return values


def merge(
    from_file: Mapping[str, Any], from_command_line: Mapping[str, Any], given: set[str]
) -> dict[str, Any]:
    """The file's values, each replaced by the command line's where the option was ``given``."""
    merged = dict(from_command_line)
    for key, value in from_file.items():
        if key not in given:
            merged[key] = value
    return merged


def _kind(value: object) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
