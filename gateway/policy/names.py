"""The accounts, resources and actions a policy speaks of, and stand-ins for "any other".

Questions over "every account" or "every resource" (a decision table's ``never`` rows,
``keygate policy diff``) cannot try infinitely many names, and need not: a line applies
to an account only when it names that account or ``*``, so every account the lines do
not name is decided alike, and one fresh name that no line names stands in for all of
them. Resources and actions work the same way through Casbin ``keyMatch``: a literal
matches itself, a pattern matches every name starting with its text before the ``*``.
So the names worth asking about are every literal the lines (and the routes and the
management API) name, plus for each pattern one *stand-in*: its prefix followed by a
character no name may hold, a name matched by that pattern and by every broader one,
and by no narrower one nor any literal. A question then covers "any other name this
pattern matches".
"""

from __future__ import annotations

from collections.abc import Iterable

from ..credentials import is_valid_account
from .files import Policy

ANY = "*"
# What follows a pattern's prefix in its stand-in: a character no policy name may hold
# (files.NAME_RE), so that no narrower pattern ("orders/a*" under "orders/*") matches
# the stand-in — else one deny on the narrower pattern would seem to cover every other
# name of the broader one. Read as "any other".
STAND_IN_WORD = "…"


def is_pattern(name: str) -> bool:
    return ANY in name


def named_accounts(policies: Iterable[Policy]) -> list[str]:
    """Every account a ``p`` line names (not ``*``), sorted."""
    return sorted({
        line.values[1] for policy in policies for line in policy.p_lines
        if line.values[1] != ANY
    })


def fresh_account(taken: Iterable[str]) -> str:
    """An account name that no line names: it stands in for every such account."""
    taken = set(taken)
    candidate, n = "any-other-account", 1
    while candidate in taken or not is_valid_account(candidate):
        n += 1
        candidate = f"any-other-account-{n}"
    return candidate


def stand_in(name: str) -> str:
    """``name`` itself when it is a literal; for a pattern, a name only patterns match
    (its prefix and a character no policy name holds), standing for "any other name it
    matches"."""
    star = name.find(ANY)
    return name if star < 0 else name[:star] + STAND_IN_WORD


def named_resources_and_actions(policies: Iterable[Policy]) -> tuple[set[str], set[str]]:
    """The resources and the actions ``p`` lines name, literals and patterns alike."""
    resources: set[str] = set()
    actions: set[str] = set()
    for policy in policies:
        for line in policy.p_lines:
            resources.add(line.values[2])
            actions.add(line.values[3])
    return resources, actions
