"""Why a decision is what it is: every ``p`` line that matched, and the ones that decided.

``model.conf`` decides a request ``(roles, account, resource, action)`` with this matcher
and effect:

* a line ``p, role, line-account, line-resource, line-action, effect`` *matches* when one
  of the roles is the line's role or inherits it through ``g`` lines (``hasRole``), the
  line's account is ``*`` or the request's account, and the request's resource and
  action match the line's (Casbin ``keyMatch``: a literal, or a prefix up to a ``*``);
* the request is allowed when some matching line allows and no matching line denies.

So the explanation follows in three cases. Deny lines matched: denied, and they decided
(deny beats allow, whatever other role allows). Else allow lines matched: allowed, and
they decided. Else nothing matched: denied by default ("no line allows it").

Reading the lines restates the model's semantics beside Casbin, so the decision this
module reports is :meth:`Policy.decide`'s, always; ``agrees`` says whether the reading of
the lines reaches the same decision. With the shipped ``model.conf`` it always does (a
property test checks it over random inputs); a deployment with its own model may differ,
and then the lines are listed but not claimed as the reason.

Each matched line carries its *inheritance path*: the chain of ``g`` links from a role
the caller holds to the role named on the line (``orders-writer → orders-reader``), or
just the held role when the line names it. Among several chains the shortest is given
(ties: the first held role in sorted order, then the first parent in sorted order), so
the same question always gets the same answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .files import NAME_RE, ROLE_RE, Policy, PolicyLine, pattern_matches
from .reading import CASBIN_STEPS_PER_LINE, WorkMeter

MAX_QUESTION_ROLES = 32  # a key holds a handful; this bounds what one question costs
DENIED_NO_ROLES = "denied: no roles (a key that holds no roles in the account is refused)"
DENIED_BY_DEFAULT = "denied: no policy line allows it (default deny)"


@dataclass(frozen=True)
class MatchedLine:
    """A ``p`` line that applies to the question, and how the caller's roles reach it."""

    line: PolicyLine
    via: tuple[str, ...]  # held role … line's role (one element when the line names it)

    @property
    def role(self) -> str:
        return self.line.values[0]

    @property
    def account(self) -> str:
        return self.line.values[1]

    @property
    def resource(self) -> str:
        return self.line.values[2]

    @property
    def action(self) -> str:
        return self.line.values[3]

    @property
    def effect(self) -> str:
        return self.line.values[4]

    @property
    def location(self) -> str:
        return f"{self.line.file}:{self.line.line}"

    def describe(self) -> str:
        """One line for people: where, what, and through which roles."""
        chain = " → ".join(self.via)
        held = f" (held as {chain})" if len(self.via) > 1 else ""
        return (f"{self.location}  p, {', '.join(self.line.values)}{held}")

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.line.file, "line": self.line.line, "role": self.role,
            "account": self.account, "resource": self.resource, "action": self.action,
            "effect": self.effect, "via": list(self.via),
        }


@dataclass(frozen=True)
class Explanation:
    """The decision for one question, the lines that matched it and those that decided."""

    roles: tuple[str, ...]
    account: str
    resource: str
    action: str
    allowed: bool  # Policy.decide's answer
    matched: tuple[MatchedLine, ...]  # every p line that matched, in file order
    decided_by: tuple[MatchedLine, ...]  # the deny lines that matched, else the allow lines
    reason: str
    unknown_roles: tuple[str, ...]  # held roles no policy line names (they grant nothing)
    agrees: bool  # the reading of the lines reaches Policy.decide's decision

    def as_json(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed, "account": self.account, "resource": self.resource,
            "action": self.action, "roles": list(self.roles),
            "decidedBy": [m.as_json() for m in self.decided_by],
            "matched": [m.as_json() for m in self.matched],
            "unknownRoles": list(self.unknown_roles),
            "reason": self.reason,
        }


def question_problem(roles: Sequence[str], resource: str, action: str) -> str | None:
    """What is wrong with a question from outside (the command line, a query string),
    or None. Names follow the policy files' syntax; a ``*`` is refused, since a
    question is about one resource and one action (Casbin would read it literally)."""
    if len(roles) > MAX_QUESTION_ROLES:
        return f"at most {MAX_QUESTION_ROLES} roles"
    for role in roles:
        if not ROLE_RE.fullmatch(role):
            return f"{role[:80]!r} is not a role name"
    for what, value in (("resource", resource), ("action", action)):
        if not NAME_RE.fullmatch(value) or "*" in value:
            return (f"{what} must be a name as the policies write it (letters, digits, "
                    f"'_.:/-', at most 128 characters, no '*'), not {value[:80]!r}")
    return None


def parents_of(policy: Policy) -> dict[str, tuple[str, ...]]:
    """``g, child, parent`` lines as child → its parents, sorted (for stable paths)."""
    parents: dict[str, set[str]] = {}
    for g in policy.g_lines:
        parents.setdefault(g.values[0], set()).add(g.values[1])
    return {child: tuple(sorted(found)) for child, found in parents.items()}


def inheritance_paths(
    parents: Mapping[str, Sequence[str]], held: Iterable[str], meter: WorkMeter | None = None
) -> dict[str, tuple[str, ...]]:
    """Every role the held roles reach, with the shortest chain from a held role to it.

    Breadth-first from all held roles at once, so a role reached directly is never
    reported through a longer chain; the policy loader refuses cycles, and the ``seen``
    set would stop one anyway. ``meter`` counts the work: each role reached and each of
    its parents looked at, and each chain by its length (a chain of a thousand roles,
    each inheriting the next, makes chains of half a million names in all)."""
    paths: dict[str, tuple[str, ...]] = {}
    frontier = [(role, (role,)) for role in sorted(set(held))]
    if meter is not None:
        meter.spend(len(frontier))
    for role, path in frontier:
        paths.setdefault(role, path)
    while frontier:
        following = []
        for role, path in frontier:
            found = parents.get(role, ())
            if meter is not None:
                meter.spend(1 + len(found) * (len(path) + 1))
            for parent in found:
                if parent not in paths:
                    paths[parent] = (*path, parent)
                    following.append((parent, paths[parent]))
        frontier = following
    return paths


def line_matches(line: PolicyLine, account: str, resource: str, action: str) -> bool:
    """The matcher of ``model.conf`` for one line, once the role is known to apply."""
    _, line_account, line_resource, line_action, _ = line.values
    return (
        line_account in ("*", account)
        and pattern_matches(resource, line_resource)
        and pattern_matches(action, line_action)
    )


def matching_lines(
    policy: Policy,
    roles: Iterable[str],
    account: str,
    resource: str,
    action: str,
    parents: Mapping[str, Sequence[str]] | None = None,
    meter: WorkMeter | None = None,
) -> list[MatchedLine]:
    """Every ``p`` line the roles reach that matches the question, in file order
    (``meter``: counts the walk up the roles' inheritance, :func:`inheritance_paths`)."""
    if parents is None:
        if meter is not None:
            meter.spend(len(policy.g_lines))
        parents = parents_of(policy)
    paths = inheritance_paths(parents, roles, meter)
    return [
        MatchedLine(line, paths[line.values[0]])
        for line in policy.p_lines
        if line.values[0] in paths and line_matches(line, account, resource, action)
    ]


def explain(
    policy: Policy, roles: Sequence[str], account: str, resource: str, action: str,
    meter: WorkMeter | None = None,
) -> Explanation:
    """The decision (``Policy.decide``) with the lines behind it: see the module's text.
    ``meter``: counts the work (Casbin's scan and the reading of every line) and stops
    it past its limit (:class:`~.reading.TooMuchWork`)."""
    if meter is not None:
        meter.spend((CASBIN_STEPS_PER_LINE + 1) * max(len(policy.p_lines), 1))
    held = tuple(dict.fromkeys(roles))
    allowed = policy.decide(held, account, resource, action)
    matched = (tuple(matching_lines(policy, held, account, resource, action, meter=meter))
               if held else ())
    denies = tuple(m for m in matched if m.effect == "deny")
    allows = tuple(m for m in matched if m.effect == "allow")
    read_allowed = bool(held) and bool(allows) and not denies
    if not held:
        decided_by: tuple[MatchedLine, ...] = ()
        reason = DENIED_NO_ROLES
    elif denies:
        decided_by = denies
        reason = (f"denied: {_where(denies)} denies it (a deny line beats every allow"
                  + (f", here {_where(allows)})" if allows else ")"))
    elif allows:
        decided_by = allows
        reason = f"allowed: {_where(allows)} allows it and no deny line matches"
    else:
        decided_by = ()
        reason = DENIED_BY_DEFAULT
    if read_allowed != allowed:
        decided_by = ()
        reason = (
            f"{'allowed' if allowed else 'denied'} by the model (model.conf), which does not "
            "decide as keygate's model does; the matching lines are listed, but they are "
            "not what decided"
        )
    return Explanation(
        roles=held, account=account, resource=resource, action=action, allowed=allowed,
        matched=matched, decided_by=decided_by, reason=reason,
        unknown_roles=tuple(policy.unknown_roles(held)), agrees=read_allowed == allowed,
    )


def refused_first(explanation: Explanation, why: str) -> Explanation:
    """The explanation for a key that keygate refuses before it asks the policy (an
    inactive key, an inactive grant): denied, with the policy's own answer kept in the
    reason and the matching lines still listed, so that the operator sees both what
    refuses the key now and what its roles would do once it is active again."""
    policy_said = "allow" if explanation.allowed else "deny"
    return dataclasses.replace(
        explanation, allowed=False, decided_by=(),
        reason=f"denied: {why}; keygate refuses it before the policy is asked (the policy "
               f"alone would {policy_said} it: {explanation.reason})",
    )


def _where(lines: Sequence[MatchedLine]) -> str:
    return ", ".join(m.location for m in lines)


def render_text(explanation: Explanation) -> list[str]:
    """The explanation for people, one line per item."""
    e = explanation
    out = [
        f"{'ALLOWED' if e.allowed else 'DENIED'}  roles {', '.join(e.roles) or '(none)'}  "
        f"account {e.account}  resource {e.resource}  action {e.action}",
        e.reason,
    ]
    if e.unknown_roles:
        out.append(f"not defined in the policies (they grant nothing): "
                   f"{', '.join(e.unknown_roles)}")
    if e.decided_by:
        out.append("decided by:")
        out.extend("  " + m.describe() for m in e.decided_by)
    others = [m for m in e.matched if m not in e.decided_by]
    if others:
        out.append("also matched:")
        out.extend("  " + m.describe() for m in others)
    return out
