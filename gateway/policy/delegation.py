"""Who may assign which role: the escalation rule as a pure function of the policy.

``gateway.escalation`` enforces it in the management API (with a cache, the caller's
identity and the 403 it answers); this module is the rule itself, so that the security
team's tools (decision tables, explain, diff) judge assignments exactly as the API does.

**The escalation rule** (Kubernetes RBAC's *escalate* and *bind*): roles C may assign
role R in account A when no deny line of C matches ``(role:R, assign)`` in A, and either

* a line made for handing out roles allows C ``(role:R, assign)`` in A: its resource
  starts with ``role:`` (patterns as elsewhere, ``role:orders-*``); a catch-all ``*, *``
  line is not one, it counts only through the permissions it holds, below; or
* C already holds every permission R grants in A: for each allow line of R (and of the
  roles R inherits) that applies in A, C's roles allow its resource and action, and no
  deny line of C touches them (with wildcards, Casbin may allow ``(*, *)`` to a caller
  denied ``orders``, yet handing out ``owner`` would give the orders access it lacks).

A role's deny lines are not permissions: a role that only takes access away may be
assigned by anyone who may assign at all.

**Through the management API**, every endpoint that gives a key roles (create a key,
change its roles, grant roles to an external key) first needs ``edit`` on ``api-keys``
in the account; :func:`may_assign` is that answer, the one a decision table's
``(role:R, assign)`` row pins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .explain import (
    MatchedLine,
    explain,
    inheritance_paths,
    matching_lines,
    parents_of,
)
from .files import Policy, pattern_matches, patterns_overlap

ASSIGN = "assign"
ROLE_RESOURCE_PREFIX = "role:"
# what every role-giving endpoint of the management API needs first
MANAGEMENT_RESOURCE, GIVING_ROLES_NEEDS = "api-keys", "edit"

Decide = Callable[[Sequence[str], str, str, str], bool]


def role_resource(role: str) -> str:
    """The resource naming a role in ``assign`` lines."""
    return ROLE_RESOURCE_PREFIX + role


def assigned_role(resource: str, action: str) -> str | None:
    """R when the question is "may these roles assign role R" (``role:R``, ``assign``)."""
    if action != ASSIGN or not resource.startswith(ROLE_RESOURCE_PREFIX):
        return None
    return resource[len(ROLE_RESOURCE_PREFIX):] or None


@dataclass(frozen=True)
class AssignVerdict:
    """Whether roles may assign a role, why, and the lines that made it so.

    ``how``: ``denied`` (a deny line on ``role:R``), ``assign-line`` (a line made for
    handing it out), ``holds-permissions`` (every permission R grants is held; the lines
    are R's), ``lacks-permission`` (the line of R whose permission is lacking),
    ``no-edit`` (:func:`may_assign` only: no ``edit`` on ``api-keys``; the lines are the
    deny lines behind that, if any).
    """

    allowed: bool
    how: str
    reason: str | None  # None when allowed; the refusal as the management API words it
    lines: tuple[MatchedLine, ...]

    @property
    def summary(self) -> str:
        if self.how == "assign-line":
            return "allowed: a policy line lets these roles assign it"
        if self.how == "holds-permissions":
            if not self.lines:
                return "allowed: the role grants no permission here (nothing to escalate)"
            return "allowed: these roles hold every permission the role grants"
        return f"denied: {self.reason}"

    def as_json(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "how": self.how, "reason": self.summary,
                "decidedBy": [m.as_json() for m in self.lines]}


def judge_assign(
    policy: Policy,
    caller_roles: Sequence[str],
    account: str,
    role: str,
    *,
    by_assign_line: bool = True,
    decide: Decide | None = None,
) -> AssignVerdict:
    """The escalation rule (the module's text). ``by_assign_line=False`` is the stricter
    question of adding a role to one's own key: only held permissions count.
    ``decide`` is the decision to ask (a cached one in the gateway; the policy's own by
    default): the rule's answer does not depend on which."""
    decide = policy.decide if decide is None else decide
    parents = parents_of(policy)
    resource = role_resource(role)
    _, denied = policy.decide_ex(caller_roles, account, resource, ASSIGN)
    if denied:
        deny_lines = tuple(
            m for m in matching_lines(policy, caller_roles, account, resource, ASSIGN, parents)
            if m.effect == "deny"
        )
        return AssignVerdict(False, "denied", "a policy line denies it", deny_lines)
    if by_assign_line:
        line = _assign_line(policy, caller_roles, account, resource, parents)
        if line is not None:
            return AssignVerdict(True, "assign-line", None, (line,))
    caller_denies = policy.lines_of(caller_roles, account, "deny")
    role_paths = inheritance_paths(parents, [role])
    granted_lines = []
    for line in policy.lines_of([role], account, "allow"):
        _, _, granted, action, _ = line.values
        touched = any(
            patterns_overlap(granted, deny.values[2])
            and patterns_overlap(action, deny.values[3])
            for deny in caller_denies
        )
        matched = MatchedLine(line, role_paths.get(line.values[0], (line.values[0],)))
        if touched or not decide(caller_roles, account, granted, action):
            return AssignVerdict(
                False, "lacks-permission",
                f"it grants {action!r} on {granted!r}, which this key does not hold "
                f"(policy {line.file}, line {line.line}), and no policy line lets it "
                f"{ASSIGN!r} {resource!r}",
                (matched,),
            )
        granted_lines.append(matched)
    return AssignVerdict(True, "holds-permissions", None, tuple(granted_lines))


def _assign_line(
    policy: Policy, caller_roles: Sequence[str], account: str, resource: str,
    parents: dict[str, tuple[str, ...]],
) -> MatchedLine | None:
    """The first allow line of the caller's roles made for handing out roles: its
    resource names roles (``role:…``). A catch-all line (``*, *``) is not one: it says
    what a role may do, not which roles it may give away."""
    paths = inheritance_paths(parents, caller_roles)
    for line in policy.lines_of(caller_roles, account, "allow"):
        if (
            line.values[2].startswith(ROLE_RESOURCE_PREFIX)
            and pattern_matches(resource, line.values[2])
            and pattern_matches(ASSIGN, line.values[3])
        ):
            return MatchedLine(line, paths[line.values[0]])
    return None


def may_assign(
    policy: Policy, caller_roles: Sequence[str], account: str, role: str
) -> AssignVerdict:
    """What the management API answers a key holding ``caller_roles`` that gives
    ``role`` to another key in ``account``: ``edit`` on ``api-keys`` first (else the
    request is refused before any role is looked at), then :func:`judge_assign`."""
    edit = explain(policy, caller_roles, account, MANAGEMENT_RESOURCE, GIVING_ROLES_NEEDS)
    if not edit.allowed:
        return AssignVerdict(
            False, "no-edit",
            f"giving roles needs {GIVING_ROLES_NEEDS!r} on {MANAGEMENT_RESOURCE!r}, and "
            f"these roles do not have it ({edit.reason})",
            edit.decided_by,
        )
    return judge_assign(policy, caller_roles, account, role)


def assignment(
    policy: Policy, caller_roles: Sequence[str], account: str, resource: str, action: str
) -> AssignVerdict | None:
    """For ``(role:R, assign)`` with R defined in the policies: :func:`may_assign`, the
    answer the management API gives (which may differ from the bare Casbin decision:
    the escalation rule also lets a role be assigned by whoever holds its permissions).
    None for every other question."""
    role = assigned_role(resource, action)
    if role is None or role not in policy.roles:
        return None
    return may_assign(policy, caller_roles, account, role)
