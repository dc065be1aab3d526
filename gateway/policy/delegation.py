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
  denied ``orders``, yet handing out ``owner`` would give the orders access it lacks),
  and C may assign every role that R hands out in turn (a key holding R would hand
  them out next; roles handing out each other are judged together).

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
from .files import Policy, PolicyLine, pattern_matches, patterns_overlap
from .reading import (
    CallerReading,
    Decide,
    LineOverlaps,
    WorkMeter,
    decider,
    unmetered,
)

ASSIGN = "assign"
ROLE_RESOURCE_PREFIX = "role:"
# what every role-giving endpoint of the management API needs first
MANAGEMENT_RESOURCE, GIVING_ROLES_NEEDS = "api-keys", "edit"


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
    solved: dict[str, AssignVerdict] | None = None,
    meter: WorkMeter | None = None,
    judge: CallerJudge | None = None,
) -> AssignVerdict:
    """The escalation rule (the module's text). ``by_assign_line=False`` is the stricter
    question of adding a role to one's own key: only held permissions count.
    ``decide`` is the decision to ask (by default, as the management API, the policy
    tools and explain ask it, the caller's lines read once, :mod:`.reading`; Casbin's
    own decision gives the same answer, a scan of the policy per question). ``meter``
    counts the work and stops it past its limit (:class:`TooMuchWork`).

    A role the caller may assign through the permissions it holds may itself hand out
    roles (``user-admin-restricted`` grants no orders permission, yet hands out
    ``orders-writer``): a key holding it would hand them out in its next request, so
    the caller must be able to assign each of them too, and theirs in turn.
    ``solved``: the verdicts already reached for these caller roles in this account
    under this policy (assign questions only), kept by a caller that asks many.
    ``judge``: the caller's lines already read (:class:`CallerJudge`, for these roles in
    this account under this policy, with its own ``decide`` and ``meter``), kept by a
    caller that asks about many roles."""
    solved = {} if solved is None else solved
    if by_assign_line and role in solved:
        return solved[role]
    if judge is None:
        judge = CallerJudge(policy, caller_roles, account, decide,
                            unmetered() if meter is None else meter)
    verdict = judge.base(role, by_assign_line)
    if verdict.allowed and verdict.how == "holds-permissions":
        handed = judge.handed_out(role)
        _solve(handed, solved, lambda name: judge.base(name, True), judge.handed_out,
               judge.meter)
        for other in handed:
            if not solved[other].allowed:
                verdict = _hands_out_refused(other, solved[other])
                break
    if by_assign_line:
        solved[role] = verdict
    return verdict


class CallerJudge:
    """The rule for one caller in one account: the caller's lines read once
    (:class:`CallerReading`), every step counted on ``meter``. Reading them costs as
    much as the lines they hold; a caller asking about many roles (every role the
    policies define, for the roles a key may assign) keeps one."""

    def __init__(self, policy: Policy, caller_roles: Sequence[str], account: str,
                 decide: Decide | None, meter: WorkMeter):
        self.policy, self.caller_roles, self.account, self.meter = (
            policy, caller_roles, account, meter)
        meter.spend(len(policy.g_lines))
        self.parents = parents_of(policy)
        self.caller = CallerReading(policy, caller_roles, account, meter)
        self.decide = decider(policy, self.caller) if decide is None else decide
        # the caller's lines made for handing out roles (``role:…``, assign)
        self.assign_lines = [
            line for line in self.caller.allows
            if line.values[2].startswith(ROLE_RESOURCE_PREFIX)
            and pattern_matches(ASSIGN, line.values[3])
        ]
        # how the caller's roles reach each role they inherit: walked once, when first
        # needed (an assign line's chain), not once per role judged
        self._caller_paths: dict[str, tuple[str, ...]] | None = None

    def caller_paths(self) -> dict[str, tuple[str, ...]]:
        """Every role the caller's roles reach, with the chain to it (counted)."""
        if self._caller_paths is None:
            self._caller_paths = inheritance_paths(self.parents, self.caller_roles,
                                                   self.meter)
        return self._caller_paths

    def base(self, role: str, by_assign_line: bool) -> AssignVerdict:
        """The rule on ``role`` alone: a deny line, an assign line, or the permissions
        it grants (not yet the roles it hands out)."""
        policy, caller_roles, account, meter = (
            self.policy, self.caller_roles, self.account, self.meter)
        resource = role_resource(role)
        # the model's deny (a deny line of the caller's roles matching), from the index
        if self.caller.denied(resource, ASSIGN):
            meter.spend(len(policy.p_lines))
            deny_lines = tuple(
                m for m in matching_lines(policy, caller_roles, account, resource, ASSIGN,
                                          self.parents, meter)
                if m.effect == "deny"
            )
            return AssignVerdict(False, "denied", "a policy line denies it", deny_lines)
        if by_assign_line:
            line = self.assign_line(resource)
            if line is not None:
                return AssignVerdict(True, "assign-line", None, (line,))
        role_paths = inheritance_paths(self.parents, [role], meter)
        granted_lines = policy.lines_of([role], account, "allow")
        meter.spend(len(granted_lines))
        held = []
        for line in granted_lines:
            _, _, granted, action, _ = line.values
            # a deny line of the caller overlapping it (the caller's deny lines indexed
            # by their patterns: a look-up, not a pass over them all for each line)
            touched = self.caller.denies_touch(granted, action)
            matched = MatchedLine(line, role_paths.get(line.values[0], (line.values[0],)))
            if touched or not self.decide(caller_roles, account, granted, action):
                return AssignVerdict(
                    False, "lacks-permission",
                    f"it grants {action!r} on {granted!r}, which this key does not hold "
                    f"(policy {line.file}, line {line.line}), and no policy line lets it "
                    f"{ASSIGN!r} {resource!r}",
                    (matched,),
                )
            held.append(matched)
        return AssignVerdict(True, "holds-permissions", None, tuple(held))

    def assign_line(self, resource: str) -> MatchedLine | None:
        """The first allow line of the caller's roles made for handing out roles: its
        resource names roles (``role:…``). A catch-all line (``*, *``) is not one: it
        says what a role may do, not which roles it may give away."""
        self.meter.spend(len(self.assign_lines))
        for line in self.assign_lines:
            if pattern_matches(resource, line.values[2]):
                return MatchedLine(line, self.caller_paths()[line.values[0]])
        return None

    def handed_out(self, role: str) -> list[str]:
        """The roles a key holding ``role`` alone may hand out in the account by its
        lines (an assign line, or a catch-all that allows ``(role:X, assign)``, and no
        deny line of its own on it): the model's decision, on the role's lines read
        once."""
        policy, meter = self.policy, self.meter

        def assigning(effect: str) -> list[str]:
            lines = policy.lines_of([role], self.account, effect)
            meter.spend(len(lines))
            return [line.values[2] for line in lines
                    if patterns_overlap(line.values[2], ROLE_RESOURCE_PREFIX + "*")
                    and pattern_matches(ASSIGN, line.values[3])]

        allowed = assigning("allow")
        if not allowed:  # most roles hand out nothing
            return []
        denied = assigning("deny")
        meter.spend(len(policy.roles) * (len(allowed) + len(denied)))
        return sorted(
            other for other in policy.roles
            if other != role
            and any(pattern_matches(role_resource(other), p) for p in allowed)
            and not any(pattern_matches(role_resource(other), p) for p in denied)
        )


def escaped_denies(
    policy: Policy, held: Sequence[str], new_roles: Sequence[str], account: str,
    meter: WorkMeter | None = None,
) -> list[PolicyLine]:
    """The deny lines of ``held`` in ``account`` that a key changing its roles to
    ``new_roles`` would escape over something those roles allow: each deny line the
    new roles do not keep whose patterns overlap an allow line of theirs (in file
    order). A key's permissions are its allow lines less its deny lines, so it gains
    only there. The allow lines are indexed by their patterns: each deny line is a
    look-up, not a pass over them all."""
    meter = unmetered() if meter is None else meter
    kept_denies = set(policy.lines_of(new_roles, account, "deny"))
    allows = policy.lines_of(new_roles, account, "allow")
    denies = policy.lines_of(held, account, "deny")
    meter.spend(len(kept_denies) + len(allows) + len(denies))
    overlaps = LineOverlaps(allows)
    return [
        deny for deny in denies
        if deny not in kept_denies
        and overlaps.touching(deny.values[2], deny.values[3], meter) is not None
    ]


def _solve(
    start: Sequence[str],
    solved: dict[str, AssignVerdict],
    base: Callable[[str], AssignVerdict],
    handed_out: Callable[[str], list[str]],
    meter: WorkMeter,
) -> None:
    """Put in ``solved`` the verdict on every role reachable from ``start`` through the
    roles each hands out: the largest set of roles whose own rule allows them and whose
    every handed-out role is in the set (roles handing out each other, ``owner`` and
    ``user-admin-restricted`` say, are judged together, never one on the assumption of
    the other). Each role's own rule is asked once. ``meter`` counts the passes over
    the roles until none changes (a chain of roles each handing out the next, the last
    refused, takes a pass per role: quadratic) and the chain of refusals after them."""
    nodes: list[str] = []
    bases: dict[str, AssignVerdict] = {}
    edges: dict[str, list[str]] = {}
    todo = [name for name in dict.fromkeys(start) if name not in solved]
    seen = set(todo)
    while todo:
        name = todo.pop()
        nodes.append(name)
        bases[name] = verdict = base(name)
        edges[name] = (handed_out(name)
                       if verdict.allowed and verdict.how == "holds-permissions" else [])
        for other in edges[name]:
            if other not in solved and other not in seen:
                seen.add(other)
                todo.append(other)
    fine = {name for name in nodes if bases[name].allowed}
    culprit: dict[str, str] = {}

    def allowed(name: str) -> bool:
        return solved[name].allowed if name in solved else name in fine

    changed = True
    while changed:
        changed = False
        meter.spend(len(nodes))
        for name in nodes:
            if name in fine:
                meter.spend(len(edges[name]))
                bad = next((other for other in edges[name] if not allowed(other)), None)
                if bad is not None:
                    fine.discard(name)
                    culprit[name] = bad
                    changed = True
    # a role refused for one it hands out is refused with that one's reason; each
    # culprit was refused before the role naming it, so the chain ends
    for name in nodes:
        if name not in culprit:
            solved[name] = bases[name]
    pending = [name for name in nodes if name in culprit]
    while pending:
        meter.spend(len(pending))
        rest = []
        for name in pending:
            other = culprit[name]
            if other in solved:
                solved[name] = _hands_out_refused(other, solved[other])
            else:
                rest.append(name)
        if len(rest) == len(pending):  # cannot happen: culprits were refused earlier
            raise AssertionError("escalation rule: unresolved roles " + ", ".join(rest))
        pending = rest


def _hands_out_refused(other: str, refused: AssignVerdict) -> AssignVerdict:
    return AssignVerdict(
        False, "lacks-permission",
        f"a key holding it may assign role {other!r}, which this key may not assign "
        f"({refused.reason})",
        refused.lines,
    )


def may_assign(
    policy: Policy, caller_roles: Sequence[str], account: str, role: str,
    solved: dict[str, AssignVerdict] | None = None, meter: WorkMeter | None = None,
) -> AssignVerdict:
    """What the management API answers a key holding ``caller_roles`` that gives
    ``role`` to another key in ``account``: ``edit`` on ``api-keys`` first (else the
    request is refused before any role is looked at), then :func:`judge_assign`
    (``solved``: as there, for a caller asking many questions of the same roles;
    ``meter``: as there)."""
    edit = explain(policy, caller_roles, account, MANAGEMENT_RESOURCE, GIVING_ROLES_NEEDS,
                   meter)
    if not edit.allowed:
        return AssignVerdict(
            False, "no-edit",
            f"giving roles needs {GIVING_ROLES_NEEDS!r} on {MANAGEMENT_RESOURCE!r}, and "
            f"these roles do not have it ({edit.reason})",
            edit.decided_by,
        )
    return judge_assign(policy, caller_roles, account, role, solved=solved, meter=meter)


def assignment(
    policy: Policy, caller_roles: Sequence[str], account: str, resource: str, action: str,
    meter: WorkMeter | None = None,
) -> AssignVerdict | None:
    """For ``(role:R, assign)`` with R defined in the policies: :func:`may_assign`, the
    answer the management API gives (which may differ from the bare Casbin decision:
    the escalation rule also lets a role be assigned by whoever holds its permissions).
    None for every other question."""
    role = assigned_role(resource, action)
    if role is None or role not in policy.roles:
        return None
    return may_assign(policy, caller_roles, account, role, meter=meter)
