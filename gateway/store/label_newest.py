"""The newest keys holding q, found in a copy of the label index (label_copy.py) by
reading it backwards: the first pages of the default listing (creation date, newest
first) and of the token date order, whatever the order q's matches were made in. No I/O.

The listing script finds such a page by walking the creation index from its newest key,
checking each key's label (~4.5 µs a key), and is handed only the number of q's matches
when they are too many to hand over. That walk is short when the matches are spread over
the account's history, and long when they were made together long ago: labels made in
sequence (``ci-2023-…``, ``key 1…``) are. At 300,000 keys, ``q='key 1'`` (111,111 keys
made in the account's first third) walked 200,000 keys: 680 ms, where ``q='key 2'`` took
21 ms.

Here the copy is read from its end: its lines are in token score order (each status's
keys by token date), and a token is issued when its key is made or later, never before
(but for instances' clocks disagreeing: CLOCK_MARGIN_MS, as in scripts/list_keys.lua),
so a line's token date bounds the creation date of every line before it. Reading a
status's span backwards, a match at a time (``bytes.rfind``, in C, past every line that
does not hold q), stops once the ``want`` newest matches found are all newer than that
bound. The lines read are the page's matches and those renewed since the page's keys
were made, up to READ_BACK_BUDGET more: past it (an account whose tokens were all
renewed lately, in an order unlike their keys') the page is found as before.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from itertools import pairwise

from .copy_values import INACTIVE_AT, Filters, Matches, token_date
from .key_index import LINES_PER_START
from .label_copy import TAG_MARK, AccountCopy, line_pattern

# lines holding q read back beyond the ``want`` asked for, at most (~4 µs each): past
# them the page is left to the other ways (tokens renewed en masse, in an order unlike
# the keys' creation, leave the creation dates unbounded by the token dates)
READ_BACK_BUDGET = 20_000
# the clocks of keygate's instances may disagree by this much (scripts/list_keys.lua's
# cannot_match): a key may be made up to a day after its token was issued, by the clocks
CLOCK_MARGIN_MS = 86_400_000
# q's matches are counted in chunks of this many lines (~120 at 1,000,000 keys): the
# reading back starts at the last chunk holding one
CHUNK_LINES = 8_192


def newest(copy: AccountCopy, needle: bytes, want: int, filters: Filters,
           by_token: bool = False) -> Matches | None:
    """The ``want`` keys that ``filters`` allow (a tagged role only) whose member holds
    ``needle`` (lowered, with no control character), newest first as the listing orders
    them (creation date, then key, both descending; ``by_token``: token date, then key),
    and how many hold it in all: their members, ordered. None when every key holds it
    (in the shared prefix: the copy's other searches answer that), or when the lines
    read back would exceed their budget."""
    patterns = copy.patterns_of(needle)
    if patterns is None:
        return None
    role = filters.role
    spans = copy.spans_of(filters)
    fresh = copy.fresh_holding(needle, filters)
    # the best ``want`` so far, the least first: (date, key as UTF-8, where its member
    # is: a line's start and end, or the member itself), so that only the page's
    # members are decoded (UTF-8's byte order is the key order)
    best: list[Entry] = []
    for f in fresh:
        assert f.member is not None
        date = token_date(f.score) if by_token else f.created
        _keep(best, want, (date, f.member.partition("\0")[2].encode(), f.member))
    # q's matches (with the role) counted in each chunk of each span, in C: one pass,
    # the count the listing needs anyway, and the reading below then starts at the last
    # chunk holding one, however far from the span's end it is
    tag = copy.tag_pattern(role) if role is not None else b""
    line = line_pattern(patterns, tag)
    counted = [[(low, high, len(line.findall(copy.lowered, low, high)))
                for low, high in _chunks(copy, span_low, span_high)]
               for span_low, span_high in spans]
    budget = [READ_BACK_BUDGET + want]
    for chunks in counted:
        for low, high, held in reversed(chunks):
            if not held:
                continue
            read = _read_back(copy, patterns, low, high, role, want, best, by_token, budget)
            if read is None:
                return None
            if not read:
                break  # no earlier line of the span can be newer
    count = sum(held for chunks in counted for _, _, held in chunks) + len(fresh)
    members, prefix = copy.members, copy.prefix
    return Matches([where if isinstance(where, str)
                    else members[where[0]:where[1]].replace(b"\0", b"\0" + prefix, 1).decode()
                    for _, _, where in sorted(best, reverse=True)], count, ordered=True)


Entry = tuple[int, bytes, "tuple[int, int] | str"]


def _chunks(copy: AccountCopy, low: int, high: int) -> list[tuple[int, int]]:
    """The span [low, high) of the copy's lines cut at every CHUNK_LINES-th line."""
    starts = copy.starts
    inner = starts[bisect_right(starts, low):bisect_left(starts, high)]
    cuts = inner[CHUNK_LINES // LINES_PER_START - 1::CHUNK_LINES // LINES_PER_START]
    bounds = [low, *cuts, high]
    return list(pairwise(bounds))


def _keep(best: list[Entry], want: int, entry: Entry) -> None:
    if len(best) < want:
        heapq.heappush(best, entry)
    elif entry > best[0]:
        heapq.heapreplace(best, entry)


def _read_back(copy: AccountCopy, patterns: list[bytes], low: int, high: int,
               role: str | None, want: int, best: list[Entry], by_token: bool,
               budget: list[int]) -> bool | None:
    """Read the lines holding a pattern between ``low`` and ``high`` from the last into
    ``best``, until no line before the one read can be newer than the ``want``-th best
    (in token order, the lines' own order, none can once one is older). True when every
    one was read, False when the reading stopped before; None when ``budget`` (lines to
    read, shared by all the reading) ran out first. A step per line in Python (~3 µs):
    what it does not need (the key, but for a line that enters ``best``) is left out."""
    lowered, members, prefix = copy.lowered, copy.members, copy.prefix
    starts, scores = copy.starts, copy.scores
    dates = copy.created
    margin = 0 if by_token else CLOCK_MARGIN_MS
    rfind, line_count = lowered.rfind, members.count
    tag_byte, tag_bit = copy.tag_bit(role) if role is not None else (0, 0)
    left = budget[0]
    # where each pattern occurs last before ``end`` (-1: nowhere)
    end = high
    last = [rfind(p, low, end) for p in patterns]
    at = max(last)
    while at != -1:
        start = rfind(b"\n", 0, at) + 1
        block = bisect_right(starts, start) - 1
        number = block * LINES_PER_START + line_count(b"\n", starts[block], start)
        score = scores[number]
        token_date = score - INACTIVE_AT if score >= INACTIVE_AT else score
        if len(best) == want and best[0][0] > token_date + margin:
            budget[0] = left
            return False  # this line and every one before it come after the want-th best
        left -= 1
        if left < 0:
            return None
        member_end = lowered.index(TAG_MARK, at)
        if not tag_bit or lowered[member_end + 1 + tag_byte] & tag_bit:
            date = token_date if by_token else dates[number]
            if len(best) < want or date >= best[0][0]:
                key = prefix + members[members.index(b"\0", start, member_end) + 1:member_end]
                _keep(best, want, (date, key, (start, member_end)))
        end = start
        if len(last) == 1:
            at = rfind(patterns[0], low, end)
        else:
            last = [rfind(p, low, end) if found >= end else found
                    for p, found in zip(patterns, last, strict=True)]
            at = max(last)
    budget[0] = left
    return True
