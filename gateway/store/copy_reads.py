"""The reads of an account's indexes that q's copy (label_copy.py) is made from, joined
in C: the label index's members put in token score order, each with its key's roles and
creation date, and the keys to read again because a change shifted them while the
indexes were read by ranks (search.py reads them; this module does no I/O)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import is_, is_not

from .copy_values import token_date
from .steps import keyed, mapped, slices

# a member's key (after its NUL), in members joined by newlines
KEY_OF_MEMBER = re.compile("\0([^\n]*)")


def member_of(app_key: str, label: str | None, folded: str | None) -> str | None:
    """A key's member of the label index, as scripts/key_rules.lua's label_member makes
    it: the fold ('lf') when the label is not ASCII, else the label lowered; None when
    the key is not listed (no label: deleted; not ASCII and no fold: not indexed yet)."""
    if label is None:
        return None
    if folded:
        return f"{folded}\0{app_key}"
    if not label.isascii():
        return None
    return f"{label.lower()}\0{app_key}"


@dataclass
class TokenOrder:
    """An account's label index members in token score order (:func:`in_token_order`),
    each key's creation date, and the keys to read again: those whose token score or
    creation date was not read."""

    members: list[str]
    scores: list[int]
    role_bits: list[int]
    created: list[int]
    unplaced: list[str]


def creation_dates(keys: Sequence[str], scores: Sequence[int]) -> dict[str, int]:
    """Each key's creation date, from the creation date index read with its scores
    (status runs, as the token date index's: the status taken off), in steps."""
    return keyed(keys, mapped(token_date, scores))


def in_token_order(members: Sequence[str], keys: Sequence[str], scores: Sequence[int],
                   role_bits: Mapping[str, int],
                   created_of: Mapping[str, int] | None = None) -> TokenOrder:
    """``members`` (of the label index) in the order of ``keys`` (of the token date
    index, with their ``scores``), each with its key's bits in ``role_bits`` (0 when
    none) and creation date in ``created_of`` (none given: all 0). A key of ``keys``
    with no member (a label not indexed, or read twice) is left out; a member whose key
    is not in ``keys``, or a key not in ``created_of``, is named in ``unplaced``. Every
    step in C, no Python line run per key, and each over at most a step's keys
    (steps.py)."""
    member_of_key = keyed([key for part in slices(len(members))
                           for key in KEY_OF_MEMBER.findall("\n".join(members[part]))],
                          members)
    found = mapped(member_of_key.pop, keys, [None] * len(keys))
    placed = mapped(is_not, found, [None] * len(found))
    placed_keys = list(compress(keys, placed))
    if created_of is None:
        created, undated = [0] * len(placed_keys), []
    else:
        dates = mapped(created_of.get, placed_keys)
        # keys that a change meanwhile shifted past a chunk of the creation date index
        undated = list(compress(placed_keys, map(is_, dates, repeat(None))))
        created = [date or 0 for date in dates] if undated else dates
    return TokenOrder(
        list(compress(found, placed)), list(compress(scores, placed)),
        mapped(role_bits.get, placed_keys, [0] * len(placed_keys)), created,
        list(member_of_key) + undated)
