"""Running decision tables (:mod:`.tables` has the format and its reasons): each row's
decision, remembered, so a table's cost grows with its distinct questions, and the
report for people and for CI.

A ``case`` row is one decision: :func:`gateway.policy.explain.explain`, or for
``(role:NAME, assign)`` the management API's answer
(:func:`gateway.policy.delegation.may_assign`). A ``never`` row is every decision its
property covers that could be an allow (:meth:`Runner.questions`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .delegation import ASSIGN, AssignVerdict, assigned_role, may_assign
from .explain import MatchedLine, explain
from .files import Policy, pattern_matches
from .names import ANY, fresh_account, is_pattern, named_accounts, stand_in
from .tables import Row, Table

MAX_VIOLATIONS_SHOWN = 10
# A never row over patterns asks every account x resource x action its roles' allow
# lines could match, and each question is a decision over every policy line: sixty
# lines naming sixty accounts, resources and actions under a "*, *, *" allow made a
# quarter of a million questions, hours of work. Past this many question-lines (about a
# minute) the row fails unasked, asking to be narrowed: a property too broad to check
# is not proven.
MAX_NEVER_WORK = 5_000_000


@dataclass(frozen=True)
class HeldRoles:
    """A key's roles in one account, as a ``key`` row is judged with them."""

    roles: tuple[str, ...]
    # why keygate refuses the key there before it asks the policy (an inactive key or
    # grant), or None: such a key is denied whatever its roles allow
    refusal: str | None = None


class TooManyQuestions(Exception):
    """A never row whose questions would cost more than :data:`MAX_NEVER_WORK`."""

    def __init__(self, questions: int, lines: int):
        super().__init__(questions, lines)
        self.questions, self.lines = questions, lines

    def __str__(self) -> str:
        return (f"this row would ask {self.questions} questions of {self.lines} policy "
                f"lines, more than keygate checks in one row ({MAX_NEVER_WORK} "
                "question-lines): narrow its resource or action, or split it into rows")


@dataclass(frozen=True)
class Outcome:
    """One decision taken for a row: the question, the answer, why, and the lines."""

    roles: tuple[str, ...]
    account: str  # "*" for the stand-in of every account the policies do not name
    resource: str
    action: str
    allowed: bool
    reason: str
    lines: tuple[MatchedLine, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed, "roles": list(self.roles), "account": self.account,
            "resource": self.resource, "action": self.action, "reason": self.reason,
            "decidedBy": [m.as_json() for m in self.lines],
        }


@dataclass(frozen=True)
class RowResult:
    row: Row
    passed: bool
    roles: tuple[str, ...]  # as judged: a key row's roles come from the store
    outcome: Outcome | None = None  # a case's decision
    violations: tuple[Outcome, ...] = ()  # a never row's first violations
    violation_count: int = 0
    checked: int = 0  # questions covered (a never row: every account, resource, action)
    problem: str | None = None  # why the row could not be judged as written

    def as_json(self) -> dict[str, Any]:
        row = self.row
        data: dict[str, Any] = {
            "file": row.file, "line": row.line, "kind": row.kind, "index": row.index,
            "name": row.name, "passed": self.passed, "roles": list(self.roles),
            "key": row.key, "account": row.account, "resource": row.resource,
            "action": row.action, "checked": self.checked, "problem": self.problem,
        }
        if row.kind == "case":
            data["expect"] = "allow" if row.expect else "deny"
            data["decision"] = self.outcome.as_json() if self.outcome else None
        else:
            data["violationCount"] = self.violation_count
            data["violations"] = [v.as_json() for v in self.violations]
        return data


@dataclass(frozen=True)
class Report:
    results: tuple[RowResult, ...]
    files: tuple[str, ...] = field(default=())

    @property
    def failures(self) -> tuple[RowResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    def as_json(self) -> dict[str, Any]:
        return {
            "files": list(self.files), "rows": len(self.results),
            "passed": len(self.results) - len(self.failures),
            "failed": len(self.failures), "results": [r.as_json() for r in self.results],
        }


# -- running them ----------------------------------------------------------------------
class Runner:
    """Runs rows against one policy, remembering decisions: a table asking the same
    question many times costs one decision (time grows with distinct questions)."""

    def __init__(self, policy: Policy, known_permissions: Iterable[tuple[str, str]] = ()):
        self.policy = policy
        accounts = named_accounts([policy])
        self.fresh = fresh_account(accounts)
        self.accounts = [*accounts, self.fresh]
        names = {(line.values[2], line.values[3]) for line in policy.p_lines}
        names.update(known_permissions)
        names.update((f"role:{role}", ASSIGN) for role in policy.roles)
        self.resources = sorted({r for r, _ in names})
        self.actions = sorted({a for _, a in names})
        self._decisions: dict[tuple[tuple[str, ...], str, str, str, str], Outcome] = {}
        # per roles and account, the assign verdicts reached so far (judge_assign)
        self._solved: dict[tuple[tuple[str, ...], str], dict[str, AssignVerdict]] = {}

    def decide(
        self, roles: tuple[str, ...], account: str, resource: str, action: str,
        shown_account: str | None = None,
    ) -> Outcome:
        """The decision, remembered; ``shown_account`` is the account as printed (``*``
        for the stand-in of the accounts no line names)."""
        shown = shown_account or account
        key = (tuple(sorted(roles)), account, resource, action, shown)
        found = self._decisions.get(key)
        if found is None:
            role = assigned_role(resource, action)
            if role is not None:
                solved = self._solved.setdefault((tuple(sorted(roles)), account), {})
                verdict: AssignVerdict = may_assign(self.policy, roles, account, role, solved)
                found = Outcome(roles, shown, resource, action, verdict.allowed,
                                verdict.summary, verdict.lines)
            else:
                e = explain(self.policy, roles, account, resource, action)
                found = Outcome(roles, shown, resource, action, e.allowed, e.reason,
                                e.decided_by)
            self._decisions[key] = found
        return found

    def undefined(self, roles: Sequence[str], resource: str, action: str) -> str | None:
        unknown = self.policy.unknown_roles(roles)
        if unknown:
            return (f"role {unknown[0]!r} is not defined in the policies (a misspelt role "
                    "grants nothing, so the row would prove nothing)")
        role = assigned_role(resource, action)
        if role is not None and not is_pattern(role) and role not in self.policy.roles:
            return f"role {role!r} ({resource}) is not defined in the policies"
        return None

    def run_case(self, row: Row, key_roles: Mapping[tuple[str, str], HeldRoles]) -> RowResult:
        assert row.account is not None
        if row.roles is not None:
            roles = row.roles
            problem = self.undefined(roles, row.resource, row.action)
        else:
            held = key_roles.get((row.key or "", row.account))
            roles = held.roles if held is not None else ()
            problem = self.undefined((), row.resource, row.action)
            refusal = None
            if held is None:
                refusal = (f"no API key {row.key!r} holds roles in account "
                           f"{row.account!r}: keygate refuses it there")
            elif held.refusal is not None:
                refusal = held.refusal
            if problem is None and refusal is not None:
                # denied before any policy line is read, as keygate decides a request
                outcome = Outcome(roles, row.account, row.resource, row.action, False,
                                  f"denied: {refusal}", ())
                return RowResult(row, not row.expect, roles, outcome, checked=1)
        if problem is not None:
            return RowResult(row, False, roles, problem=problem)
        outcome = self.decide(roles, row.account, row.resource, row.action)
        return RowResult(row, outcome.allowed == row.expect, roles, outcome, checked=1)

    def run_never(self, row: Row) -> RowResult:
        roles = row.roles or ()
        problem = self.undefined(roles, row.resource, row.action)
        if problem is not None:
            return RowResult(row, False, roles, problem=problem)
        try:
            questions, covered = self.questions(roles, row.resource, row.action)
        except TooManyQuestions as exc:
            return RowResult(row, False, roles, problem=str(exc))
        violations = []
        count = 0
        for account, resource, action in questions:
            shown = ANY if account == self.fresh else account
            outcome = self.decide(roles, account, resource, action, shown)
            if outcome.allowed:
                count += 1
                if len(violations) < MAX_VIOLATIONS_SHOWN:
                    violations.append(outcome)
        return RowResult(row, count == 0, roles, violations=tuple(violations),
                         violation_count=count, checked=covered)

    def accounts_for(self, roles: Sequence[str]) -> list[str]:
        """The accounts a question about ``roles`` can be decided differently in: those
        the lines of the roles (inheritance included) name, and the stand-in for every
        other account, where only ``*`` lines apply, alike."""
        held = self.policy.inherited(roles)
        named = {line.values[1] for line in self.policy.p_lines
                 if line.values[0] in held and line.values[1] != ANY}
        return [*sorted(named), self.fresh]

    def names_matching(self, pattern: str, known: Iterable[str]) -> list[str]:
        """Literal names matching ``pattern``, and stand-ins for the other names it and
        the patterns among ``known`` match (see :mod:`.names`)."""
        if not is_pattern(pattern):
            return [pattern]
        found = {stand_in(pattern)}
        found.update(stand_in(name) for name in known)
        return sorted(name for name in found if pattern_matches(name, pattern))

    def questions(
        self, roles: Sequence[str], resource: str, action: str
    ) -> tuple[list[tuple[str, str, str]], int]:
        """The (account, resource, action) triples a never row must be asked, and how
        many questions the row covers (those it need not ask are denied for sure).

        Assignments are asked for every role named by the pattern (the escalation rule
        may allow one with no line about it: a role whose permissions are all held).
        Other questions only where some allow line of the roles could match them: with
        none, the policy denies, so asking would change nothing. Counted before any is
        made: :class:`TooManyQuestions` past :data:`MAX_NEVER_WORK`."""
        resources = self.names_matching(resource, self.resources)
        actions = self.names_matching(action, self.actions)
        triples: set[tuple[str, str, str]] = set()
        everywhere = self.accounts_for(roles)
        covered = 0
        for r in resources:
            for a in actions:
                role = assigned_role(r, a)
                if role is None:
                    covered += len(everywhere)
                elif role in self.policy.roles:
                    accounts = self.accounts_for([*roles, role])
                    covered += len(accounts)
                    triples.update((account, r, a) for account in accounts)
        held = self.policy.inherited(roles)
        matched = []
        for line in self.policy.p_lines:
            role, line_account, line_resource, line_action, effect = line.values
            if effect != "allow" or role not in held:
                continue
            accounts = everywhere if line_account == ANY else [line_account]
            rs = [r for r in resources if pattern_matches(r, line_resource)]
            acts = [a for a in actions if pattern_matches(a, line_action)]
            matched.append((accounts, rs, acts))
        lines = max(self.policy.lines, 1)
        most = len(triples) + sum(len(a) * len(r) * len(x) for a, r, x in matched)
        if most * lines > MAX_NEVER_WORK:
            raise TooManyQuestions(most, lines)
        for accounts, rs, acts in matched:
            triples.update(
                (account, r, a) for account in accounts for r in rs for a in acts
                if assigned_role(r, a) is None
            )
        order = {account: n for n, account in enumerate(self.accounts)}
        return sorted(triples, key=lambda t: (order[t[0]], t[1], t[2])), covered


def run_tables(
    policy: Policy,
    tables: Sequence[Table],
    key_roles: Mapping[tuple[str, str], HeldRoles] | None = None,
    known_permissions: Iterable[tuple[str, str]] = (),
) -> Report:
    """Run every row. ``key_roles``: the roles of each (key, account) of
    :func:`keys_needed` that holds roles there (missing: the key is refused there, so
    the row's decision is a deny, saying why).
    ``known_permissions``: (resource, action) pairs the routes and the management API
    use, tried by ``never`` rows beside those the policies name."""
    runner = Runner(policy, known_permissions)
    key_roles = key_roles or {}
    results = [
        runner.run_case(row, key_roles) if row.kind == "case" else runner.run_never(row)
        for table in tables for row in table.rows
    ]
    return Report(tuple(results), tuple(t.file for t in tables))


# -- text for people -------------------------------------------------------------------
def render_text(report: Report) -> list[str]:
    """Each failing row with its decision and lines, then one summary line."""
    out: list[str] = []
    for result in report.failures:
        row = result.row
        roles = ", ".join(result.roles) or "(none)"
        who = f"key {row.key} (roles {roles})" if row.key else f"roles {roles}"
        out.append(f"{row.location}  FAIL  {row.title}")
        if result.problem:
            out.append(f"  {result.problem}")
        elif row.kind == "case" and result.outcome is not None:
            got = "allow" if result.outcome.allowed else "deny"
            out.append(f"  {who}  account {row.account}  resource {row.resource}  "
                       f"action {row.action}: expected {'allow' if row.expect else 'deny'}, "
                       f"got {got}")
            out.extend(_outcome_lines(result.outcome))
        else:
            out.append(f"  {who} must never get {row.action} on {row.resource}; allowed in "
                       f"{result.violation_count} of {result.checked} cases checked")
            for violation in result.violations:
                out.append(f"  - account {violation.account}  resource {violation.resource}"
                           f"  action {violation.action}")
                out.extend("  " + line for line in _outcome_lines(violation))
            hidden = result.violation_count - len(result.violations)
            if hidden > 0:
                out.append(f"  … and {hidden} more")
    passed = len(report.results) - len(report.failures)
    tables = len(report.files)
    rows = len(report.results)
    out.append(f"{rows} row{'s' if rows != 1 else ''} in {tables} "
               f"table{'s' if tables != 1 else ''}: "
               f"{passed} passed, {len(report.failures)} failed")
    return out


def _outcome_lines(outcome: Outcome) -> list[str]:
    lines = [f"  {outcome.reason}"]
    if outcome.lines:
        lines.append("  decided by:")
        lines.extend("    " + m.describe() for m in outcome.lines)
    return lines
