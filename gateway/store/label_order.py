"""q's matches in label order, read from a second, label-ordered copy of the label index
kept beside the copy's own lines (label_copy.py keeps those in token score order). No I/O.

The listing script finds a page in label order by walking the label index from the
order's first key, checking each key's label for q (~2 µs a key), when it is given only
the number of q's matches. That walk is short when the matches are spread over the
label order, and long when they sit together far from where it starts: labels made in
sequence are (``key 1…`` is the whole span ``key 1``–``key 19999…`` of the label index,
and newest first the walk starts at ``key 999999``): at 1,000,000 keys, ``q='key 1'``
walked some 890,000 keys, 1.8 s. Handing all 111,111 matches over instead costs ~170 ms.

Here the page is read from the end of the order it starts at, a match at a time
(``bytes.find``/``bytes.rfind``, in C, past every line that does not hold q), and the
reading stops at the page's last match: what it costs is the matches up to the page,
never the keys between them. A line is the member lowered as the token-ordered copy
lowers it (ASCII only, the prefix every key shares cut off after the NUL), then, when
it differs, TAG_MARK and the member as it is (so a match is searched in the lowered
member, and the member named from the line itself). A key read again since the copy was
made (``AccountCopy.fresh``: changed, made or deleted) is skipped here and searched from
what it is now, merged in order. About 30 bytes per key (the member, and again for keys
with capitals in their name), no index of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .label_copy import TAG_MARK, AccountCopy, Filters, Matches, line_pattern

# matches read for a page, at most (~1 µs each): page 500 of 50; a deeper page is left
# to the other ways
LABEL_READ_LIMIT = 25_000


@dataclass(frozen=True)
class LabelOrder:
    """An account's label index members in its order, lowered (see the module notes)."""

    lines: bytes  # '\n' + 'lowered member' [+ TAG_MARK + 'member'] + '\n', ...

    @classmethod
    def of(cls, members: Sequence[str], prefix: bytes) -> LabelOrder:
        """The lines of ``members`` (in the label index's order), each key's ``prefix``
        cut off (the token-ordered copy's shared prefix)."""
        if not members:
            return cls(b"\n")
        joined = "\n".join(members).encode()
        if prefix:  # each member holds one NUL, before its key
            joined = joined.replace(b"\0" + prefix, b"\0")
        as_is = joined.split(b"\n")
        lowered = joined.lower().split(b"\n")
        mark = TAG_MARK
        lines = [low if low == member else low + mark + member
                 for low, member in zip(lowered, as_is, strict=True)]
        return cls(b"\n" + b"\n".join(lines) + b"\n")

    @property
    def nbytes(self) -> int:
        return len(self.lines)


def in_label_order(copy: AccountCopy, needle: bytes, want: int,
                   descending: bool) -> Matches | None:
    """The first ``want`` keys of the listing in label order (``descending``: from the
    last) whose member holds ``needle`` (lowered, with no control character), and how
    many hold it in all: their members, ordered. None when the copy keeps no label order,
    or every key holds the needle (in the shared prefix: a walk finds the page at once)."""
    order = copy.label_order
    lowered_prefix = copy.prefix.lower()
    if order is None or needle in lowered_prefix:
        return None
    patterns = [needle] + [b"\0" + needle[i:] for i in range(1, len(needle))
                           if lowered_prefix.endswith(needle[:i])]
    fresh = sorted((f.member for f in copy.fresh.values()
                    if f.member is not None and needle in f.member.encode().lower()),
                   reverse=descending)
    found, every_line_read = _read(order.lines, patterns, want, copy.prefix,
                                   copy.fresh.__contains__, descending)
    members = sorted(found + fresh[:want], reverse=descending)[:want]
    if every_line_read:
        count = len(found) + len(fresh)
    else:  # counted in C, in the token-ordered copy (its lines of fresh keys blanked)
        line = line_pattern(patterns)
        count = sum(len(line.findall(copy.lowered, low, high))
                    for low, high in copy.spans_of(Filters())) + len(fresh)
    return Matches(members, count, ordered=True)


def _read(lines: bytes, patterns: list[bytes], want: int, prefix: bytes,
          is_fresh: Callable[[str], bool], descending: bool) -> tuple[list[str], bool]:
    """The first ``want`` members (from the end when ``descending``) of the lines that
    hold one of ``patterns``, the keys read again left out; and whether every such line
    was read (fewer than ``want``)."""
    found: list[str] = []
    if descending:
        last = [lines.rfind(p) for p in patterns]
        while True:
            at = max(last)
            if at == -1:
                return found, True
            start = lines.rfind(b"\n", 0, at) + 1
            member = _member(lines, start, prefix)
            if not is_fresh(member.partition("\0")[2]):
                found.append(member)
                if len(found) == want:
                    return found, False
            last = [lines.rfind(p, 0, start) if was >= start else was
                    for p, was in zip(patterns, last, strict=True)]
    next_at = [lines.find(p) for p in patterns]
    while True:
        at = min((a for a in next_at if a != -1), default=-1)
        if at == -1:
            return found, True
        start = lines.rfind(b"\n", 0, at) + 1
        end = lines.index(b"\n", at)
        member = _member(lines, start, prefix)
        if not is_fresh(member.partition("\0")[2]):
            found.append(member)
            if len(found) == want:
                return found, False
        next_at = [lines.find(p, end) if was != -1 and was < end else was
                   for p, was in zip(patterns, next_at, strict=True)]


def _member(lines: bytes, start: int, prefix: bytes) -> str:
    """The member of the line starting at ``start``: as it is (after TAG_MARK, when the
    line keeps it), the shared prefix put back before its key."""
    end = lines.index(b"\n", start)
    mark = lines.find(TAG_MARK, start, end)
    as_is = lines[start:end] if mark == -1 else lines[mark + 1:end]
    return as_is.replace(b"\0", b"\0" + prefix, 1).decode()
