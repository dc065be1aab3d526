"""What a policy change does to every role: permissions gained and lost, per account.

``keygate policy diff OLD NEW`` shows a reviewer the effect of a pull request, not its
lines: a new ``g`` line, a broader pattern or a removed deny changes what keys can do in
places the changed line does not mention.

A role's permissions are *effective*: what a key holding that role alone is allowed,
after inheritance and deny, asked of :meth:`Policy.decide` on each side (and, for
``(role:NAME, assign)``, of the management API's rule: ``edit`` on ``api-keys`` and the
escalation rule, :func:`gateway.policy.delegation.may_assign`; a role not defined on a
side cannot be assigned there, the API refuses unknown roles).

The questions asked, on both sides alike:

* accounts: every account a line of the role (inheritance included; for an
  assignment, the assigned role's too) names on either side, and ``*``, standing for
  every other account: only ``*`` lines apply there, so one fresh name decides for
  them all (:mod:`.names`);
* (resource, action) pairs: every pair a line of either side names, the pairs the
  caller adds (the management API's permissions, the routes'), and ``(role:NAME,
  assign)`` for every role of either side. A pattern in a pair stands for "any other
  name it matches" and is asked through a stand-in name only patterns match.

Only questions some allow line of the role could match on one side or the other are
put to Casbin; with no such line both sides deny, so there is nothing to report.
Assignments are always asked: the escalation rule may let a role be assigned that no
line mentions (its permissions are all held).

**Cost, on hostile input too.** Assignments make the questions grow with the square of
the roles (who may assign whom), and each answer is a Casbin decision that reads every
line: 200 roles took minutes, thousands hours. Two things keep it to the roles a change
touches, exactly:

* A role's answers depend only on the ``p`` lines of the roles it holds (itself and
  those it inherits, as Casbin's matcher reads them): a role whose set of held roles
  and their lines are the same on both sides, defined on both or on neither, is
  *untouched*, and every question about it alone is answered alike. An untouched role
  is asked nothing but the assignment of touched roles, and of roles that may hand out
  roles (whether a role may assign those depends on the roles they hand out, touched or
  not); two untouched roles are otherwise never put to each other.
* Whether a role may give roles at all (``edit`` on ``api-keys``, asked before the
  escalation rule) is asked once per role, account and side, not once per role
  assigned.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .delegation import (
    ASSIGN,
    GIVING_ROLES_NEEDS,
    MANAGEMENT_RESOURCE,
    ROLE_RESOURCE_PREFIX,
    AssignVerdict,
    assigned_role,
    judge_assign,
    role_resource,
)
from .files import Policy, pattern_matches, patterns_overlap
from .names import ANY, fresh_account, named_accounts, stand_in


@dataclass(frozen=True, order=True)
class Permission:
    """``account`` ``*``: every account no line of the role (or, for an assignment, of
    the role assigned) names. A ``*`` in ``resource`` or ``action``: any other name that
    pattern matches."""

    account: str
    resource: str
    action: str

    def as_json(self) -> dict[str, str]:
        return {"account": self.account, "resource": self.resource, "action": self.action}


@dataclass(frozen=True)
class RoleChange:
    role: str
    status: str  # "added", "removed" (the role itself), or "changed"
    gained: tuple[Permission, ...]
    lost: tuple[Permission, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "role": self.role, "status": self.status,
            "gained": [p.as_json() for p in self.gained],
            "lost": [p.as_json() for p in self.lost],
        }


@dataclass(frozen=True)
class PolicyDiff:
    old_version: str
    new_version: str
    added_roles: tuple[str, ...]
    removed_roles: tuple[str, ...]
    changes: tuple[RoleChange, ...]  # roles whose permissions differ, by name
    unchanged_roles: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.changes or self.added_roles or self.removed_roles)

    def as_json(self) -> dict[str, Any]:
        return {
            "old": {"version": self.old_version}, "new": {"version": self.new_version},
            "changed": self.changed,
            "addedRoles": list(self.added_roles), "removedRoles": list(self.removed_roles),
            "roles": [c.as_json() for c in self.changes],
            "unchangedRoles": list(self.unchanged_roles),
        }


class _Side:
    """One policy and the questions worth asking it for one role."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self._gives_roles: dict[tuple[str, str], bool] = {}
        self.lines_of_role: dict[str, set[tuple[str, ...]]] = {}
        for line in policy.p_lines:
            self.lines_of_role.setdefault(line.values[0], set()).add(line.values)
        # per role and account, the assign verdicts reached so far (delegation.judge_assign)
        self._solved: dict[tuple[str, str], dict[str, AssignVerdict]] = {}

    def gives_roles(self, role: str, account: str) -> bool:
        """``edit`` on ``api-keys``: what :func:`may_assign` asks first, remembered."""
        known = self._gives_roles.get((role, account))
        if known is None:
            # Casbin reads every line; most roles have no allow line that could match
            known = any(
                effect == "allow" and line_account in (ANY, account)
                and pattern_matches(MANAGEMENT_RESOURCE, resource)
                and pattern_matches(GIVING_ROLES_NEEDS, action)
                for held in self.policy.inherited([role])
                for _, line_account, resource, action, effect in self.lines_of_role.get(held, ())
            ) and self.policy.decide([role], account, MANAGEMENT_RESOURCE, GIVING_ROLES_NEEDS)
            self._gives_roles[role, account] = known
        return known

    def hands_out_roles(self, role: str) -> bool:
        """Whether an allow line of ``role`` (inheritance included) may let it hand out
        roles: then whether another role may assign it depends on those roles too
        (delegation.judge_assign), whoever's lines changed."""
        return any(
            effect == "allow" and patterns_overlap(resource, ROLE_RESOURCE_PREFIX + "*")
            and pattern_matches(ASSIGN, action)
            for held in self.policy.inherited([role])
            for _, _, resource, action, effect in self.lines_of_role.get(held, ())
        )

    def allowed(self, role: str, account: str, resource: str, action: str) -> bool:
        assigned = assigned_role(resource, action)
        if assigned is not None:
            # may_assign, with its first question and the verdicts reached remembered
            solved = self._solved.setdefault((role, account), {})
            return (assigned in self.policy.roles
                    and self.gives_roles(role, account)
                    and judge_assign(self.policy, [role], account, assigned,
                                     solved=solved).allowed)
        return self.policy.decide([role], account, resource, action)

    def named_accounts(self, roles: Iterable[str]) -> set[str]:
        """The accounts the lines of ``roles`` (inheritance included) name."""
        held = self.policy.inherited(roles)
        return {values[1] for role in held for values in self.lines_of_role.get(role, ())
                if values[1] != ANY}

    def reachable(
        self, role: str, accounts: list[str], points: list[tuple[str, str]]
    ) -> set[tuple[str, str, str]]:
        """(account, resource, action) questions an allow line of ``role`` matches."""
        held = self.policy.inherited([role])
        found: set[tuple[str, str, str]] = set()
        for line in self.policy.p_lines:
            line_role, line_account, line_resource, line_action, effect = line.values
            if effect != "allow" or line_role not in held:
                continue
            in_accounts = accounts if line_account == ANY else [line_account]
            matching = [(r, a) for r, a in points
                        if pattern_matches(r, line_resource) and pattern_matches(a, line_action)]
            found.update((account, r, a) for account in in_accounts for r, a in matching)
        return found


def untouched_roles(old: _Side, new: _Side, roles: Iterable[str]) -> set[str]:
    """The roles whose answers cannot differ between the sides (the module's text):
    the same held roles (inheritance included), each with the same ``p`` lines, and
    defined on both sides or on neither."""
    touched = {
        role for role in set(old.lines_of_role) | set(new.lines_of_role)
        if old.lines_of_role.get(role) != new.lines_of_role.get(role)
    }
    found = set()
    for role in roles:
        held = old.policy.inherited([role])
        if (held == new.policy.inherited([role]) and not held & touched
                and (role in old.policy.roles) == (role in new.policy.roles)):
            found.add(role)
    return found


def diff_policies(
    old: Policy, new: Policy, known_permissions: Iterable[tuple[str, str]] = ()
) -> PolicyDiff:
    """Every role's effective permissions on both sides, compared (the module's text)."""
    fresh = fresh_account(named_accounts([old, new]))
    roles = sorted(old.roles | new.roles)
    pairs: set[tuple[str, str]] = set(known_permissions)
    for policy in (old, new):
        pairs.update((line.values[2], line.values[3]) for line in policy.p_lines)
    pairs.update((role_resource(role), ASSIGN) for role in roles)
    # the name each pair is asked with, and the pair as shown (patterns as written)
    shown_as: dict[tuple[str, str], tuple[str, str]] = {}
    for resource, action in sorted(pairs):
        shown_as.setdefault((stand_in(resource), stand_in(action)), (resource, action))
    points = sorted(shown_as)
    assign_points = [(r, a) for r, a in points if assigned_role(r, a) is not None]
    sides = (_Side(old), _Side(new))

    def accounts_for(*roles: str) -> list[str]:
        named = set().union(*(side.named_accounts(roles) for side in sides))
        return [*sorted(named), fresh]

    untouched = untouched_roles(sides[0], sides[1], roles)
    hands_out = {role for role in untouched if any(side.hands_out_roles(role) for side in sides)}
    changes = []
    unchanged = []
    for role in roles:
        questions = set()
        for resource, action in assign_points:
            assigned = assigned_role(resource, action) or ""
            if role in untouched and assigned in untouched and assigned not in hands_out:
                continue
            questions.update((account, resource, action)
                             for account in accounts_for(role, assigned))
        if role not in untouched:
            for side in sides:
                questions |= side.reachable(role, accounts_for(role), points)
        gained, lost = [], []
        for account, resource, action in sorted(questions):
            before, after = (side.allowed(role, account, resource, action) for side in sides)
            if before != after:
                shown_resource, shown_action = shown_as[(resource, action)]
                permission = Permission(ANY if account == fresh else account,
                                        shown_resource, shown_action)
                (gained if after else lost).append(permission)
        status = ("added" if role not in old.roles
                  else "removed" if role not in new.roles else "changed")
        if gained or lost or status != "changed":
            changes.append(RoleChange(role, status, tuple(sorted(gained, key=_order)),
                                      tuple(sorted(lost, key=_order))))
        else:
            unchanged.append(role)
    return PolicyDiff(
        old_version=old.version, new_version=new.version,
        added_roles=tuple(sorted(new.roles - old.roles)),
        removed_roles=tuple(sorted(old.roles - new.roles)),
        changes=tuple(changes), unchanged_roles=tuple(unchanged),
    )


def _order(permission: Permission) -> tuple[bool, str, str, str]:
    # the named accounts first, "*" (every other account) last
    return (permission.account == ANY, permission.account, permission.resource,
            permission.action)


def render_text(diff: PolicyDiff, old_name: str, new_name: str) -> list[str]:
    """Per role, ``+ account resource action`` gained and ``- …`` lost; account ``*``
    is every account no line of the role (or of the role it assigns) names."""
    out = [f"policy diff {old_name} (version {diff.old_version}) → {new_name} "
           f"(version {diff.new_version})"]
    if not diff.changed:
        out.append("no role's permissions change")
        return out
    if diff.added_roles:
        out.append(f"roles added: {', '.join(diff.added_roles)}")
    if diff.removed_roles:
        out.append(f"roles removed: {', '.join(diff.removed_roles)}")
    for change in diff.changes:
        note = {"added": " (new role)", "removed": " (role removed)"}.get(change.status, "")
        out.append(f"role {change.role}{note}")
        for sign, permissions in (("+", change.gained), ("-", change.lost)):
            out.extend(f"  {sign} {p.account} {p.resource} {p.action}" for p in permissions)
        if not change.gained and not change.lost:
            out.append("  (no permission on either side)")
    if diff.unchanged_roles:
        out.append(f"unchanged: {', '.join(diff.unchanged_roles)}")
    out.append("(account *: every account that no line of the role, or of the role it "
               "assigns, names)")
    return out
