"""Grants: which route families, AE titles and workflow ids a principal may store to."""

from __future__ import annotations

import pytest

from twisted_stow.auth.grants import (
    EVERYTHING,
    BadGrant,
    Grant,
    grant_from_names,
    grant_from_scopes,
    names_from_json,
    names_to_json,
)

CT_ONLY = Grant(aets=frozenset({"CT1"}), workflows=frozenset())
WF_ONLY = Grant(aets=frozenset(), workflows=frozenset({"wf1"}))
ALL_AETS = Grant(aets=None, workflows=frozenset())
ALL_WORKFLOWS = Grant(aets=frozenset(), workflows=None)


@pytest.mark.parametrize(
    ("grant", "family", "aet", "workflow", "allowed"),
    [
        (CT_ONLY, "dcm4chee", "CT1", None, True),
        (CT_ONLY, "dcm4chee", "MR1", None, False),
        (CT_ONLY, "dcm4chee", "ct1", None, False),
        (CT_ONLY, "standard", None, None, False),
        (CT_ONLY, "monai", None, "wf1", False),
        (ALL_AETS, "dcm4chee", "ANY", None, True),
        (ALL_AETS, "standard", None, None, True),
        (ALL_AETS, "monai", None, None, False),
        (WF_ONLY, "monai", None, "wf1", True),
        (WF_ONLY, "monai", None, "wf2", False),
        (WF_ONLY, "monai", None, None, False),
        (WF_ONLY, "standard", None, None, False),
        (ALL_WORKFLOWS, "monai", None, None, True),
        (ALL_WORKFLOWS, "monai", None, "any", True),
        (ALL_WORKFLOWS, "dcm4chee", "CT1", None, False),
        (EVERYTHING, "standard", None, None, True),
        (EVERYTHING, "monai", None, None, True),
        (EVERYTHING, "dcm4chee", "X", None, True),
        (Grant(), "standard", None, None, False),
    ],
)
def test_allows(
    grant: Grant, family: str, aet: str | None, workflow: str | None, allowed: bool
) -> None:
    """The grant table of docs/CONFORMANCE.md §10.2, case by case."""
    assert grant.allows(family, aet, workflow) is allowed


def test_file_forms_round_trip() -> None:
    """ "*" is all, a list is those names, absent is none; and back."""
    assert names_from_json("*", "x") is None
    assert names_from_json(["A", "B"], "x") == {"A", "B"}
    assert names_from_json(["A", "*"], "x") is None
    assert names_from_json(None, "x") == frozenset()
    assert names_to_json(None) == "*"
    assert names_to_json(frozenset({"B", "A"})) == ["A", "B"]


@pytest.mark.parametrize("value", ["CT1", [""], [1], {"a": 1}, 3])
def test_bad_file_forms(value: object) -> None:
    """Anything but "*" or a list of non-empty strings is a BadGrant."""
    with pytest.raises(BadGrant):
        names_from_json(value, "x")


def test_scopes() -> None:
    """JWT scopes stow:aet:/stow:workflow: build the grant; other scopes are ignored."""
    grant = grant_from_scopes(["openid", "stow:aet:CT1", "stow:workflow:*", "stow:aet:"])
    assert grant == Grant(aets=frozenset({"CT1"}), workflows=None)
    assert grant_from_scopes([]) == Grant()
    assert grant_from_names(["*"], []) == ALL_AETS
