"""A copy's lines in last-use order, and the uses taken in since they were put in it.
No I/O (copy_sync.py reads them, search.py decides when).

Last use is not in the copy's lines: it changes with requests, not with changes of a
key, and no audit event says so. So the listing script walked the last-use index for a
page with q or another filter, checking each key: 0.64 s for page 2,000 of a renewal
level at 1,000,000 keys. Here the lines are kept in that order too (ordered_lines.py,
counted in chunks like the others), made when a page in last-use order is first asked
for, beside each line's last use (by the copy's line number).

A use moves a key in that order. The script that writes a batch of last uses
(scripts/record_last_used.lua) appends the keys it moved, with their times, to the
account's moves stream, where one exists: the first process that keeps the account in
last-use order makes it, before it reads the last-use index, so every use written after
that read began is in the stream. Before each search the process reads the stream's
entries after the last it took in (:meth:`UsedOrder.move` for each key): the key's line
is blanked in this order alone, and the key is searched from what its line says, at
its new place, as a key read again is. A key read again (a change named by an audit
event) keeps its last use with it.

The stream keeps its last MOVES_KEPT entries of at most MOVES_PER_ENTRY keys (~45 bytes
each): ~2.9 MB at most per account kept in last-use order. A process that finds the
entries it needs gone (fallen further behind), or more keys moved than one in a hundred
of the copy's (each page checks each of them, ~1.5 µs a key), drops the order and makes
it again for the next page asked in it (5–6 s at 1,000,000 keys, the script
answering meanwhile); q and the other orders go on. While the order is kept, the process
takes in the stream's new entries every second (search.py), so that a page takes in
those of the last second alone (8–11 µs a key moved).
Memory: 8 bytes a key for the last uses and ~50 for the lines and their chunks' token
scores (58 MB at 1,000,000 keys).
"""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from .copy_values import Fresh
from .label_copy import BLANK, TAG_MARK, AccountCopy
from .lua import constant
from .ordered_lines import LAST_USED

# the entries of an account's moves stream kept (scripts/record_last_used.lua)
MOVES_KEPT = constant("record_last_used", "MOVES_KEPT")
# the last use of a line the read of the last-use index missed (read again by key)
UNREAD = -1


@dataclass
class UsedOrder:
    """The last use of each of the copy's lines (by its number; 0: never), the keys used
    since (by key: what their lines say, with their last use now) and the moves stream's
    entry taken in last."""

    last_used: array
    moves_from: str
    moved: dict[str, Fresh] = field(default_factory=dict)

    def move(self, copy: AccountCopy, app_key: str, at: int) -> None:
        """``app_key`` was used at ``at`` (ms): its place in last-use order moves there,
        unless it was used later already."""
        fresh = copy.fresh.get(app_key)
        if fresh is not None:  # read again: searched from what was read, with this use
            if fresh.member is not None and at > fresh.last_used:
                copy.fresh[app_key] = dataclasses.replace(fresh, last_used=at)
            return
        moved = self.moved.get(app_key)
        if moved is not None:
            if at > moved.last_used:
                self.moved[app_key] = dataclasses.replace(moved, last_used=at)
            return
        # a key the copy holds no line for was made since: read again from its event
        read = copy.line_read(app_key)
        if read is None or at <= self.last_used[read[0]]:
            return
        number, line = read
        self.moved[app_key] = Fresh(line.member, line.score, line.roles, line.created, at,
                                    line.lowered)
        copy.orders[LAST_USED].blank(number, copy.scores[number])


def drop_use_order(copy: AccountCopy) -> None:
    """Keep ``copy``'s lines in last-use order no longer (made again when asked for)."""
    copy.orders.pop(LAST_USED, None)
    copy.used = None


def with_uses(copy: AccountCopy, uses: dict[str, int]) -> None:
    """The keys read again with their last ``uses`` (by key), where later than read."""
    for app_key, at in uses.items():
        fresh = copy.fresh.get(app_key)
        if fresh is not None and fresh.member is not None and at > fresh.last_used:
            copy.fresh[app_key] = dataclasses.replace(fresh, last_used=at)


def last_use_by_line(copy: AccountCopy, keys: Sequence[str],
                     times: Sequence[int]) -> tuple[array, list[str]]:
    """The last use of each of ``copy``'s lines from the last-use index's ``keys`` and
    their ``times`` (a line of a key it does not name: UNREAD), and the keys of those
    lines (to read again by key: shifted past a chunk's end while the index was read).
    A blanked line's is 0."""
    prefix, cut = copy.prefix.decode(), len(copy.prefix)
    used = {k[cut:]: t for k, t in zip(keys, times, strict=True) if k.startswith(prefix)}
    lines = bytes(copy.members).split(b"\n")[1:-1]
    names = [line.partition(b"\0")[2].partition(TAG_MARK)[0].decode()
             if not line.startswith(BLANK) else None for line in lines]
    last_used = array("q", [used.get(n, UNREAD) if n is not None else 0 for n in names])
    unread = [prefix + n for n, t in zip(names, last_used, strict=True) if t == UNREAD]
    return last_used, unread
