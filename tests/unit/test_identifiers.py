"""``core/identifiers``: the one rule each for workflow ids, AE titles and Host."""

from __future__ import annotations

import pytest

from twisted_stow.auth.grants import BadGrant, Grant, grant_from_names, grant_from_scopes
from twisted_stow.core.identifiers import (
    MAX_AE_TITLE_CHARS,
    MAX_WORKFLOW_ID_CHARS,
    ae_title_problem,
    host_problem,
    workflow_id_problem,
)

GOOD_WORKFLOW_IDS = ["wf1", "ai-liver", "a.b_c~d", "0f8fad5b-d9cb-469f-a165-70867728950e", "w" * 64]
BAD_WORKFLOW_IDS = [
    "",
    ".",
    "..",
    "a/b",
    "a b",
    "a\r\nb",
    "a\x00",
    "a\u2028b",
    "caf\u00e9",
    "w" * (MAX_WORKFLOW_ID_CHARS + 1),
    "a%2Fb",
]


@pytest.mark.parametrize("value", GOOD_WORKFLOW_IDS)
def test_good_workflow_ids(value: str) -> None:
    """Unreserved characters, 1-64 of them, no dot segment: a workflow id."""
    assert workflow_id_problem(value) is None


@pytest.mark.parametrize("value", BAD_WORKFLOW_IDS)
def test_bad_workflow_ids(value: str) -> None:
    """Dot segments, separators, controls, non-ASCII, 65+ characters: no workflow id."""
    assert workflow_id_problem(value) is not None


@pytest.mark.parametrize("value", ["CT1", "STOWAE", "A B?x", " PACS ", "A" * MAX_AE_TITLE_CHARS])
def test_good_ae_titles(value: str) -> None:
    """PS3.5 VR AE: up to 16 default-repertoire characters, spaces inside or around."""
    assert ae_title_problem(value) is None


@pytest.mark.parametrize(
    "value", ["", "   ", "A\\B", "A\tB", "A\nB", "\u00c9CHO", "A" * (MAX_AE_TITLE_CHARS + 1)]
)
def test_bad_ae_titles(value: str) -> None:
    """Empty, all spaces, backslash, control or non-ASCII characters, 17+ characters: refused."""
    assert ae_title_problem(value) is not None


@pytest.mark.parametrize(
    "value",
    [b"", b"pacs", b"pacs.example:8443", b"127.0.0.1", b"[::1]:80", b"stow_svc.local", b"h.:1"],
)
def test_good_hosts(value: bytes) -> None:
    """Names, IPv4, IPv6 literals, ports, a trailing root dot, an empty Host: valid."""
    assert host_problem(value) is None


@pytest.mark.parametrize(
    "value",
    [
        b"\xff\xfe",
        "h\u00e9.example".encode(),
        b"a..b",
        b".",
        b"x" * 64 + b".example",
        b"a" * 254,
        b"h:99999",
        b"h:8o",
        b"[::1",
        b"[nope]",
        b"[::1]x",
        b"a b",
        b"a/b",
        b"a@b",
    ],
)
def test_bad_hosts(value: bytes) -> None:
    """Non-ASCII, empty or 64-character labels, bad ports or literals, other characters: invalid."""
    assert host_problem(value) is not None


def test_grants_follow_the_url_rules() -> None:
    """A grant naming what no URL can carry is refused; JWT scopes skip such names."""
    with pytest.raises(BadGrant, match="AE title"):
        Grant(aets=frozenset({"A\\B"}))
    with pytest.raises(BadGrant, match="workflow id"):
        grant_from_names([], [".."])
    grant = grant_from_scopes(["stow:aet:CT1", "stow:aet:" + "A" * 17, "stow:workflow:a/b"])
    assert grant == Grant(aets=frozenset({"CT1"}), workflows=frozenset())
    assert grant_from_scopes(["stow:aet:*"]).aets is None
