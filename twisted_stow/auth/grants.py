"""Which STOW routes a principal may store through.

A grant names the AE titles (dcm4chee-arc routes ``/aets/{AET}/rs/studies``)
and the workflow ids (MONAI routes ``/dicomweb/{workflow-id}/studies``) a
principal may use; either may be "all".  The routes that name neither store
into the same storage as every named one, so they need the "all" grant of
their family: ``/studies`` needs every AE title, ``/dicomweb/studies`` (which
MONAI runs the default workflows for) needs every workflow id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..core.admission import DCM4CHEE, MONAI
from ..core.identifiers import ae_title_problem, workflow_id_problem

ALL = "*"
# JWT scope values (RFC 8693 §4.2 "scope" claim, space-separated).
AET_SCOPE_PREFIX = "stow:aet:"
WORKFLOW_SCOPE_PREFIX = "stow:workflow:"


class BadGrant(ValueError):
    """A grant in a users/tokens file that cannot be understood."""


@dataclass(frozen=True)
class Grant:
    """AE titles and workflow ids a principal may store to; None means all."""

    aets: frozenset[str] | None = frozenset()
    workflows: frozenset[str] | None = frozenset()

    def __post_init__(self) -> None:
        # The rules of the URL (core/identifiers.py): a name no URL can carry
        # would be a grant that silently never applies.
        for name in self.aets or ():
            problem = ae_title_problem(name)
            if problem is not None:
                raise BadGrant(f"{name!r} is not an AE title ({problem})")
        for name in self.workflows or ():
            problem = workflow_id_problem(name)
            if problem is not None:
                raise BadGrant(f"{name!r} is not a workflow id ({problem})")

    def allows(self, route_family: str, ae_title: str | None, workflow_id: str | None) -> bool:
        """Whether a POST to a route of ``route_family`` naming these is allowed."""
        if route_family == DCM4CHEE and ae_title is not None:
            return self.aets is None or ae_title in self.aets
        if route_family == MONAI:
            if workflow_id is None:
                return self.workflows is None
            return self.workflows is None or workflow_id in self.workflows
        # The standard routes (and anything unforeseen) need every AE title.
        return self.aets is None

    def describe(self) -> str:
        """Short text for logs and problem details."""

        def one(names: frozenset[str] | None) -> str:
            return ALL if names is None else ",".join(sorted(names)) or "none"

        return f"aets={one(self.aets)} workflows={one(self.workflows)}"


EVERYTHING = Grant(aets=None, workflows=None)


def names_from_json(value: object, what: str) -> frozenset[str] | None:
    """A file's ``"*"`` (all), list of names, or absent (None here → none)."""
    if value is None:
        return frozenset()
    if value == ALL:
        return None
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        names = frozenset(value)
        return None if ALL in names else names
    raise BadGrant(f'{what}: expected "*" or a list of non-empty names, got {value!r}')


def names_to_json(names: frozenset[str] | None) -> str | list[str]:
    """The file form of ``names_from_json``."""
    return ALL if names is None else sorted(names)


def grant_from_names(aets: Iterable[str], workflows: Iterable[str]) -> Grant:
    """From command-line lists, where ``*`` among the names means all."""
    aet_set, workflow_set = frozenset(aets), frozenset(workflows)
    return Grant(
        aets=None if ALL in aet_set else aet_set,
        workflows=None if ALL in workflow_set else workflow_set,
    )


def grant_from_scopes(scopes: Iterable[str]) -> Grant:
    """From JWT scope values ``stow:aet:NAME`` / ``stow:workflow:ID`` (``*`` for all)."""
    aets: list[str] = []
    workflows: list[str] = []
    # A scope naming what no URL can carry grants nothing: it is skipped,
    # not an error (the token's other scopes still hold).
    for scope in scopes:
        if scope.startswith(AET_SCOPE_PREFIX):
            name = scope[len(AET_SCOPE_PREFIX) :]
            if name == ALL or ae_title_problem(name) is None:
                aets.append(name)
        elif scope.startswith(WORKFLOW_SCOPE_PREFIX):
            name = scope[len(WORKFLOW_SCOPE_PREFIX) :]
            if name == ALL or workflow_id_problem(name) is None:
                workflows.append(name)
    return grant_from_names(aets, workflows)


@dataclass(frozen=True)
class Identity:
    """An authenticated principal: its name (logged, passed to workflows) and grant."""

    name: str
    grant: Grant
    method: str  # "basic", "token" or "jwt": how it authenticated
