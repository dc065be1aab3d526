"""What the policy lines mean together: the role graph, and the allow lines that can
never change a decision (``keygate policy check``'s ``shadowed-allow`` and
``redundant-allow``).

**When an allow line never matters.** A key's request is allowed when some line of the
roles it holds (each with every role it inherits through ``g, child, parent``) allows
it and no such line denies it. Let A be an allow line of role R. Every key that A can
help holds R or a role inheriting R, and so holds every role R inherits. So A never
allows anything when a deny line D, of R or of a role R inherits, applies in every
account A does (D's account is ``*``, or A's) and D's resource and action patterns
cover A's (every name A matches, D matches: :func:`pattern_covers`) — A is *shadowed*.
And A adds nothing when another allow line B of R or of a role R inherits does the same
(B covers A the same way) — A is *redundant*: whatever A allows, B allows, and a deny
defeats both alike. These are exact for the lines as written: keyMatch patterns are
literals or prefixes, so "covers" is a prefix test, not a guess.

**Cost, on hostile input too.** Comparing every allow with every line is quadratic:
100,000 lines would be ten billion comparisons. Instead lines are indexed by (account,
resource, action) as keyMatch reads them (a literal, or the prefix before ``*``), and
for an allow line only the index entries that could cover it are looked up: its own
literal and its prefixes at the lengths some indexed pattern has — a handful in real
policies. Which roles have a line under an entry is a bit set over role numbers, and
each role's *ancestry* (itself and every role it inherits) is a bit set built once per
role in inheritance order (parents first), from its parents' sets, and dropped once its
last child is done — so a chain of thousands of roles costs sets of thousands of bits,
not lists of lists. "Does a role R inherits have such a line" is then one AND. Total:
O(lines x candidate entries) lookups plus O(roles x roles / 64) word operations for the
bit sets in the worst (a single long chain). A hard cap on lookups
(:data:`LOOKUP_BUDGET`) bounds a file built to defeat the pruning: past it the
remaining allow lines are left unchecked and the report says how many.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .files import PolicyLine

LOOKUP_BUDGET = 5_000_000  # index lookups: about a second of work

# (is a pattern, its text): a literal, or the prefix before the first "*" (what follows
# the "*" is ignored by keyMatch)
Meaning = tuple[bool, str]
ALL_ACCOUNTS = "*"


def meaning(pattern: str) -> Meaning:
    star = pattern.find("*")
    return (False, pattern) if star < 0 else (True, pattern[:star])


@dataclass
class RoleGraph:
    """The roles the lines name and who inherits whom (distinct ``g`` lines).

    ``order`` lists every role after the roles it inherits (Kahn's algorithm, O(roles +
    lines)); roles on an inheritance cycle, which has no such order, come last in the
    order they first appear (a cycle is an error of its own; analyses over them are
    then approximate)."""

    roles: list[str]
    parents: dict[str, list[str]]
    children: dict[str, list[str]]
    order: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, p_lines: Iterable[PolicyLine], g_lines: Iterable[PolicyLine]) -> RoleGraph:
        seen: dict[str, None] = {}
        parents: dict[str, list[str]] = {}
        children: dict[str, list[str]] = {}
        edges: set[tuple[str, str]] = set()
        for line in p_lines:
            seen.setdefault(line.values[0])
        for line in g_lines:
            child, parent = line.values
            seen.setdefault(child)
            seen.setdefault(parent)
            if (child, parent) not in edges:
                edges.add((child, parent))
                parents.setdefault(child, []).append(parent)
                children.setdefault(parent, []).append(child)
        graph = cls(list(seen), parents, children)
        waiting = {role: len(parents.get(role, ())) for role in graph.roles}
        ready = [role for role in graph.roles if not waiting[role]]
        placed: set[str] = set()
        while ready:
            role = ready.pop()
            graph.order.append(role)
            placed.add(role)
            for child in children.get(role, ()):
                waiting[child] -= 1
                if not waiting[child]:
                    ready.append(child)
        graph.order += [role for role in graph.roles if role not in placed]
        return graph

    def carrying(self, roles_with_lines: set[str]) -> set[str]:
        """The roles that hold some ``p`` line, their own or one a role they inherit
        has: the roles whose holding can change a decision. A walk down from the roles
        with lines to every role inheriting them: O(roles + lines), cycles or not."""
        return _reached(roles_with_lines, self.children)

    def inherited(self, roles: set[str]) -> set[str]:
        """``roles`` and every role they inherit: a walk up, O(roles + lines)."""
        return _reached(roles, self.parents)


def _reached(start: set[str], edges: dict[str, list[str]]) -> set[str]:
    """``start`` and every role reached from it along ``edges``, cycles or not."""
    reached = set(start)
    todo = list(start)
    while todo:
        for role in edges.get(todo.pop(), ()):
            if role not in reached:
                reached.add(role)
                todo.append(role)
    return reached


@dataclass(frozen=True)
class Covered:
    """An allow line that never changes a decision, and the line that makes it so: a
    deny that always defeats it (``shadowed``) or an allow that already grants it."""

    line: PolicyLine
    by: PolicyLine
    shadowed: bool


@dataclass(frozen=True)
class Coverage:
    covered: tuple[Covered, ...]
    unchecked: int  # allow lines not looked at once the lookup budget ran out


class _OutOfBudget(Exception):
    pass


class _Meter:
    """Index lookups left; running out stops the analysis."""

    def __init__(self, budget: int):
        self.left = budget

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise _OutOfBudget()


class _Index:
    """Lines of one effect, by account, then resource meaning, then action meaning: the
    roles with such a line as a bit set, and each role's first such line. The bit sets
    of whole accounts and of (account, resource) let a lookup skip a branch no role of
    the ancestry has a line in."""

    def __init__(self, lines: Iterable[PolicyLine], number: dict[str, int]):
        self.tree: dict[str, dict[Meaning, dict[Meaning, int]]] = {}
        self.account_roles: dict[str, int] = {}
        self.resource_roles: dict[tuple[str, Meaning], int] = {}
        self.first: dict[tuple[str, Meaning, Meaning, int], PolicyLine] = {}
        resource_lengths: set[int] = set()
        action_lengths: set[int] = set()
        for line in lines:
            role, account, resource, action, _ = line.values
            bit = 1 << number[role]
            r, a = meaning(resource), meaning(action)
            if r[0]:
                resource_lengths.add(len(r[1]))
            if a[0]:
                action_lengths.add(len(a[1]))
            by_action = self.tree.setdefault(account, {}).setdefault(r, {})
            by_action[a] = by_action.get(a, 0) | bit
            self.account_roles[account] = self.account_roles.get(account, 0) | bit
            self.resource_roles[account, r] = self.resource_roles.get((account, r), 0) | bit
            self.first.setdefault((account, r, a, number[role]), line)
        self.resource_lengths = sorted(resource_lengths, reverse=True)
        self.action_lengths = sorted(action_lengths, reverse=True)

    def covering(self, line: PolicyLine, ancestry: int, own_number: int, meter: _Meter
                 ) -> PolicyLine | None:
        """A line of this index, of a role in ``ancestry``, that covers ``line`` (not
        ``line`` itself); the most specific entries are tried first."""
        _, account, resource, action, _ = line.values
        own = (account, meaning(resource), meaning(action), own_number)
        resources = _covering(meaning(resource), self.resource_lengths)
        actions = _covering(meaning(action), self.action_lengths)
        for acct in (account, ALL_ACCOUNTS) if account != ALL_ACCOUNTS else (ALL_ACCOUNTS,):
            by_resource = self.tree.get(acct)
            if by_resource is None or not ancestry & self.account_roles[acct]:
                continue
            for r in resources:
                meter.spend()
                by_action = by_resource.get(r)
                if by_action is None or not ancestry & self.resource_roles[acct, r]:
                    continue
                for a in actions:
                    meter.spend()
                    roles = by_action.get(a, 0) & ancestry
                    if (acct, r, a, own_number) == own and self.first.get(own) is line:
                        roles &= ~(1 << own_number)  # the line itself covers nothing
                    if roles:
                        found = (roles & -roles).bit_length() - 1
                        return self.first[acct, r, a, found]
        return None


def _covering(m: Meaning, prefix_lengths: Sequence[int]) -> list[Meaning]:
    """The meanings that cover ``m`` among those an index can hold: ``m`` itself when it
    is a literal, and its prefixes at the lengths the index's patterns have."""
    is_pattern, text = m
    found: list[Meaning] = [] if is_pattern else [m]
    found += [(True, text[:n]) for n in prefix_lengths if n <= len(text)]
    return found


def covered_allows(
    p_lines: Sequence[PolicyLine], graph: RoleGraph, budget: int = LOOKUP_BUDGET
) -> Coverage:
    """Every allow line that a deny always defeats, or that another allow already grants
    (see the module's docstring). ``p_lines`` should be distinct (a repeated line is a
    finding of its own); each line is reported once, shadowed before redundant."""
    number = {role: n for n, role in enumerate(graph.order)}
    denies = _Index((x for x in p_lines if x.values[4] == "deny"), number)
    allows = _Index((x for x in p_lines if x.values[4] == "allow"), number)
    allows_of: dict[str, list[PolicyLine]] = {}
    for line in p_lines:
        if line.values[4] == "allow":
            allows_of.setdefault(line.values[0], []).append(line)
    covered: list[Covered] = []
    waiting = {role: len(graph.children.get(role, ())) for role in graph.order}
    ancestry: dict[str, int] = {}
    checked = 0
    meter = _Meter(budget)
    try:
        for role in graph.order:
            mine = 1 << number[role]
            for parent in graph.parents.get(role, ()):
                mine |= ancestry.get(parent, 0)  # absent: a parent on a cycle, not built yet
            ancestry[role] = mine
            for line in allows_of.get(role, ()):
                deny = denies.covering(line, mine, number[role], meter)
                if deny is not None:
                    covered.append(Covered(line, deny, shadowed=True))
                else:
                    other = allows.covering(line, mine, number[role], meter)
                    if other is not None:
                        covered.append(Covered(line, other, shadowed=False))
                checked += 1
            for parent in graph.parents.get(role, ()):
                waiting[parent] -= 1
                if not waiting[parent]:
                    ancestry.pop(parent, None)
            if not waiting[role]:
                del ancestry[role]
    except _OutOfBudget:
        pass
    total = sum(len(lines) for lines in allows_of.values())
    covered.sort(key=lambda c: (c.line.file, c.line.line))
    return Coverage(tuple(covered), total - checked)
