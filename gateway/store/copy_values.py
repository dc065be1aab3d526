"""What a search of a copy is asked and answers, as values: the filters it is counted
within, a key read again, the matches found, and the token score a key is ordered by in
the copy and the token date index. Pure: no I/O (label_copy.py is the copy itself)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property

from .lua import constant
from .records import ACTIVE, INACTIVE

# an inactive key's token score is its token date plus this (scripts/status_runs.lua)
INACTIVE_AT = constant("status_runs", "INACTIVE_AT")


def token_score(date: int | None, active: bool) -> int:
    """A key's score in the token date index, as scripts/status_runs.lua's run_score."""
    at = min(max(date or 0, 0), INACTIVE_AT - 1)
    return at if active else at + INACTIVE_AT


def token_date(score: int) -> int:
    """The token date of a token score (an inactive key's is offset: status_runs.lua)."""
    return score - INACTIVE_AT if score >= INACTIVE_AT else score


@dataclass(frozen=True)
class Filters:
    """The filters a search is counted within: a status (None: any), a token date range
    [start, end) in ms (None: no bound), a role (None: any)."""

    status: str | None = None
    dates: tuple[int | None, int | None] = (None, None)
    role: str | None = None

    @cached_property
    def score_ranges(self) -> list[tuple[int, int]]:
        """The token scores they allow: [low, high) per status (worked out once: a
        search tests every key read again against them)."""
        start, end = self.dates
        low = max(start or 0, 0)
        high = min(INACTIVE_AT if end is None else end, INACTIVE_AT)
        if high <= low:
            return []
        bases = {ACTIVE: (0,), INACTIVE: (INACTIVE_AT,)}.get(self.status or "",
                                                             (0, INACTIVE_AT))
        return [(base + low, base + high) for base in bases]

    def allow(self, score: int, roles: Iterable[str]) -> bool:
        return (any(low <= score < high for low, high in self.score_ranges)
                and (self.role is None or self.role in roles))


# no filter: every key
ANY_KEY = Filters()


@dataclass(frozen=True)
class Fresh:
    """A key read again since the copy was made: its member now (None: none, deleted or
    not in the account), token score, roles, creation date and last use (0: never)."""

    member: str | None
    score: int = 0
    roles: frozenset[str] = frozenset()
    created: int = 0
    last_used: int = 0
    # the member encoded and lowered as q is searched in it (b"": none)
    lowered: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class Matches:
    """q's matches in an account: their members of the label index ('folded label NUL
    key'; None: more than were asked for) and how many there are."""

    members: list[str] | None
    count: int
    # the members are in the listing's order asked for (AccountCopy.ordered), else in
    # none; ordered, they may be the first of the matches only, as many as the pages up
    # to the one asked for hold (label_newest.py), or those from ``first`` on
    # (ordered_lines.py)
    ordered: bool = False
    first: int = 0
    # each member's key's creation date, worked out when asked for (~0.7 µs a match:
    # only creation order needs them), when the copy knows them
    dates: Callable[[], list[int]] | None = None

    @property
    def keys(self) -> list[str] | None:
        if self.members is None:
            return None
        return [member.partition("\0")[2] for member in self.members]
