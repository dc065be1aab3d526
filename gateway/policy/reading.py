"""Many questions of one set of roles, answered from their lines read once, in bounded
work.

The escalation rule asks, for every line of the role being assigned, whether the
caller's roles hold its permission. Put to Casbin, each question scans every line of
the policy, so judging a role of a thousand lines in a policy of a thousand cost a
million matcher calls (seconds, on the event loop of a request any ``view`` key may
send). :class:`CallerReading` reads the caller's lines once and indexes them by their
resource and action patterns: a question then costs a few dictionary look-ups,
however many lines the policy holds. It decides as keygate's model does (``model.conf``:
some matching allow and no matching deny, ``keyMatch`` patterns, ``*`` or the account);
with another model, :func:`decider` asks Casbin and counts each question as a scan.

:class:`WorkMeter` counts the steps (lines read, look-ups, pattern comparisons) that an
explanation takes, and stops it with :class:`TooMuchWork` past its limit: what remains
quadratic in the worst case (roles handing out each other in a long chain, long chains
of inheritance, a role's lines against many deny lines of the caller that overlap them
in resource but not in action) is refused, not computed. A caller's deny lines are
indexed by their patterns too (:class:`LineOverlaps`), so that asking whether any of
them touches a line of the role being assigned looks up the few that overlap it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence

from .files import ModelDefinition, Policy, PolicyLine

# keygate's model (model.conf): what it asks, and how lines decide
REQUEST_TOKENS = ("r_sub", "r_dom", "r_obj", "r_act")
POLICY_TOKENS = ("p_sub", "p_dom", "p_obj", "p_act", "p_eft")
DENY_OVERRIDES = "some(where (p_eft == allow)) && !some(where (p_eft == deny))"
MATCHER = ('hasRole(r_sub, p_sub) && (p_dom == "*" || p_dom == r_dom) && '
           "keyMatch(r_obj, p_obj) && keyMatch(r_act, p_act)")
# What a Casbin decision costs in steps per policy line: it evaluates the matcher on
# every line, about ten times the cost of one step here (a look-up, a comparison).
CASBIN_STEPS_PER_LINE = 10

Decide = Callable[[Sequence[str], str, str, str], bool]


def decides_as_keygate(model: ModelDefinition) -> bool:
    """Whether the model asks and decides as keygate's own (spacing aside)."""
    return (
        model.request == REQUEST_TOKENS and model.policy == POLICY_TOKENS
        and " ".join(model.effect.split()) == DENY_OVERRIDES
        and " ".join(model.matcher.split()) == MATCHER
    )


class TooMuchWork(Exception):
    """An explanation would take more steps than its :class:`WorkMeter` allows."""


class WorkMeter:
    """Counts steps (``spent``, public so that tests and callers can read the cost) and
    raises :class:`TooMuchWork` once they pass ``limit`` (None: no limit)."""

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self.spent = 0

    def spend(self, steps: int) -> None:
        self.spent += steps
        if self.limit is not None and self.spent > self.limit:
            raise TooMuchWork(
                f"explaining this would take more than {self.limit} steps over this "
                "policy (roles handing out each other in a long chain, long chains of "
                "inheritance, or a role's lines against many overlapping deny lines); "
                "ask about fewer roles, or split the role"
            )


def unmetered() -> WorkMeter:
    return WorkMeter(None)


class PatternIndex:
    """Casbin ``keyMatch`` patterns, each with a value: which patterns match a name.

    A pattern is a literal, or a prefix when it holds ``*`` (the text before the first
    ``*``). A name's matches are the literal equal to it and the prefixes it starts
    with: one look-up for the literal and one per distinct prefix length, whatever the
    number of patterns."""

    def __init__(self) -> None:
        self.literal: dict[str, list[object]] = {}
        self.prefixed: dict[str, list[object]] = {}
        self.lengths: list[int] = []

    def add(self, pattern: str, value: object) -> None:
        star = pattern.find("*")
        if star < 0:
            self.literal.setdefault(pattern, []).append(value)
            return
        prefix = pattern[:star]
        if prefix not in self.prefixed:
            self.prefixed[prefix] = []
            if star not in self.lengths:
                self.lengths.append(star)
                self.lengths.sort()
        self.prefixed[prefix].append(value)

    def matching(self, name: str, meter: WorkMeter) -> list[object]:
        meter.spend(1 + len(self.lengths))
        found = list(self.literal.get(name, ()))
        for length in self.lengths:
            if length > len(name):
                break
            found.extend(self.prefixed.get(name[:length], ()))
        return found


class OverlapIndex:
    """Casbin ``keyMatch`` patterns, each with values: which patterns *overlap* a given
    one (some name matches both, :func:`~.files.patterns_overlap`).

    A literal overlaps itself and the prefixes it starts with (a look-up per distinct
    prefix length, as :class:`PatternIndex`); a prefix overlaps the shorter prefixes it
    starts with (the same look-ups), and every literal and prefix starting with it: a
    range of the sorted texts, found by bisection. Each value found costs a step."""

    def __init__(self) -> None:
        self.literal: dict[str, list[object]] = {}
        self.prefixed: dict[str, list[object]] = {}
        self.lengths: list[int] = []
        self._texts: list[str] | None = None  # literal and prefix texts, sorted

    def add(self, pattern: str, value: object) -> None:
        star = pattern.find("*")
        if star < 0:
            self.literal.setdefault(pattern, []).append(value)
        else:
            self.prefixed.setdefault(pattern[:star], []).append(value)
        self._texts = None

    def overlapping(self, pattern: str, meter: WorkMeter) -> Iterator[object]:
        if self._texts is None:
            self._texts = sorted(self.literal.keys() | self.prefixed.keys())
            self.lengths = sorted({len(text) for text in self.prefixed})
            meter.spend(len(self._texts))
        star = pattern.find("*")
        text = pattern if star < 0 else pattern[:star]
        meter.spend(1 + len(self.lengths))
        if star < 0:
            yield from self.literal.get(text, ())
        for length in self.lengths:
            if length > len(text) or (star >= 0 and length == len(text)):
                break
            yield from self.prefixed.get(text[:length], ())
        if star < 0:
            return
        texts = self._texts
        at = bisect_left(texts, text)
        while at < len(texts) and texts[at].startswith(text):
            meter.spend(1)
            yield from self.literal.get(texts[at], ())
            yield from self.prefixed.get(texts[at], ())
            at += 1


class LineOverlaps:
    """Lines by their resource, then action patterns: whether some line's patterns
    overlap both of a pair (:meth:`touch`), in steps near the lines that overlap in
    resource, not all the lines."""

    def __init__(self, lines: Iterable[PolicyLine]):
        self.outer = OverlapIndex()
        by_resource: dict[str, OverlapIndex] = {}
        for line in lines:
            resource, action = line.values[2], line.values[3]
            star = resource.find("*")
            meaning = resource if star < 0 else resource[:star + 1]  # what follows "*"
            inner = by_resource.get(meaning)                          # is ignored
            if inner is None:
                inner = by_resource[meaning] = OverlapIndex()
                self.outer.add(meaning, inner)
            inner.add(action, line)

    def touching(self, resource: str, action: str, meter: WorkMeter) -> PolicyLine | None:
        """A line whose resource and action patterns overlap ``resource`` and
        ``action``, or None."""
        for inner in self.outer.overlapping(resource, meter):
            assert isinstance(inner, OverlapIndex)
            for line in inner.overlapping(action, meter):
                assert isinstance(line, PolicyLine)
                return line
        return None


def _indexed(lines: Iterable[PolicyLine]) -> PatternIndex:
    """Resource pattern → (action pattern → lines)."""
    by_resource: dict[str, PatternIndex] = {}
    outer = PatternIndex()
    for line in lines:
        resource, action = line.values[2], line.values[3]
        inner = by_resource.get(resource)
        if inner is None:
            inner = by_resource[resource] = PatternIndex()
            outer.add(resource, inner)
        inner.add(action, line)
    return outer


class CallerReading:
    """The allow and deny lines that apply to ``roles`` in ``account`` (inheritance
    included), read once and indexed; :meth:`decide` answers as keygate's model."""

    def __init__(self, policy: Policy, roles: Sequence[str], account: str,
                 meter: WorkMeter):
        self.roles, self.account, self.meter = tuple(roles), account, meter
        self.allows = policy.lines_of(roles, account, "allow")
        self.denies = policy.lines_of(roles, account, "deny")
        meter.spend(len(self.allows) + len(self.denies))
        self._allow_index = _indexed(self.allows)
        self._deny_index = _indexed(self.denies)
        self._deny_overlaps: LineOverlaps | None = None

    def _matched(self, index: PatternIndex, resource: str, action: str) -> bool:
        for inner in index.matching(resource, self.meter):
            if isinstance(inner, PatternIndex) and inner.matching(action, self.meter):
                return True
        return False

    def denied(self, resource: str, action: str) -> bool:
        """Whether a deny line of these roles matches (whatever allows)."""
        return self._matched(self._deny_index, resource, action)

    def denies_touch(self, resource: str, action: str) -> bool:
        """Whether a deny line of these roles overlaps the patterns ``resource`` and
        ``action`` (some name matches both of each: it takes away part of what a line
        with those patterns grants). Indexed, read when first asked."""
        if self._deny_overlaps is None:
            self.meter.spend(len(self.denies))
            self._deny_overlaps = LineOverlaps(self.denies)
        return self._deny_overlaps.touching(resource, action, self.meter) is not None

    def decide(self, roles: Sequence[str], account: str, resource: str, action: str) -> bool:
        """The model's decision for these roles (those the reading was made for)."""
        if tuple(roles) != self.roles or account != self.account:
            raise ValueError("a reading answers only for the roles and account it read")
        if not self.roles:
            return False
        return (self._matched(self._allow_index, resource, action)
                and not self._matched(self._deny_index, resource, action))


def decider(policy: Policy, reading: CallerReading) -> Decide:
    """The decision the escalation rule asks: the reading's with keygate's model, else
    Casbin's, each question counted as a scan of every line."""
    if decides_as_keygate(policy.model):
        return reading.decide

    def casbin(roles: Sequence[str], account: str, resource: str, action: str) -> bool:
        reading.meter.spend(CASBIN_STEPS_PER_LINE * max(policy.lines, 1))
        return policy.decide(roles, account, resource, action)

    return casbin
