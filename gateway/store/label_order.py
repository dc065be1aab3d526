"""q's matches in label order, read from a second, label-ordered copy of the label index
kept beside the copy's own lines (label_copy.py keeps those in token score order). No I/O.

The listing script finds a page in label order by walking the label index from the
order's first key, checking each key's label for q (~2 µs a key), when it is given only
the number of q's matches. That walk is short when the matches are spread over the
label order, and long when they sit together far from where it starts: labels made in
sequence are (``key 1…`` is the span ``key 1``–``key 199999`` of the label index, and
newest label first the walk starts at ``key 999999``): at 1,000,000 keys, ``q='key 1'``
walked some 890,000 keys, 1.8 s. Handing all 111,111 matches over instead costs ~170 ms.

Here the lines are cut into chunks of about CHUNK_BYTES, and q's matches are counted in
each (in C, the count the listing needs anyway: one pass, as in the token-ordered copy);
the page is then read from the first chunks in the order asked that hold matches, a
match at a time (``bytes.find``/``bytes.rfind``), stopping at the page's last one: a
search costs that pass and the matches up to the page, never the keys between them.

A line is the member lowered as the token-ordered copy lowers its lines (ASCII only,
the prefix every key shares cut off after the NUL), and, when the key's name is not in
lower case, TAG_MARK and the name as it is (past the prefix), from which the member is
named. The lines are those of the token-ordered copy, in the other order. A key read
again since the copy was made (changed, made or deleted: ``AccountCopy.fresh``) is not
blanked here (there is no index by key to find its line): its line is skipped while
reading, its count taken off by what the token-ordered copy held for it (``Fresh.was``),
and the key is searched from what it is now, merged in order. About 30 bytes per key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise

from .label_copy import TAG_MARK, AccountCopy, Fresh, Matches, line_pattern

# matches read for a page, at most (~1 µs each): page 500 of 50; a deeper page is left
# to the other ways
LABEL_READ_LIMIT = 25_000
# the lines are counted in chunks of about this many bytes (~130 at 1,000,000 keys): the
# page is read from the first that hold q's matches, past those that hold none
CHUNK_BYTES = 1 << 18
# what a line whose member lowering changed before its key holds after the lowered
# member: the member as it is (no label or key holds a control character)
WHOLE_MARK = b"\x03"


@dataclass(frozen=True)
class LabelOrder:
    """An account's label index members in its order, lowered (see the module notes),
    and where the chunks they are counted in start (each at a line's start; the last
    entry the end)."""

    lines: bytes  # '\n' + 'lowered member' [+ TAG_MARK + 'key past the prefix'] + '\n', ...
    bounds: list[int]

    @classmethod
    def of(cls, members: Sequence[str], prefix: bytes,
           placed: Sequence[str] | None = None) -> LabelOrder:
        """The lines of ``members`` (in the label index's order), each key's ``prefix``
        cut off (the token-ordered copy's shared prefix); only those in ``placed`` (the
        token-ordered copy's members) when it leaves some out."""
        if placed is not None and len(placed) != len(members):
            kept = set(placed)
            members = [m for m in members if m in kept]
        if not members:
            return cls(b"\n", [1, 1])
        joined = "\n".join(members).encode()
        if prefix:  # each member holds one NUL, before its key
            joined = joined.replace(b"\0" + prefix, b"\0")
        lines = list(map(_line, joined.lower().split(b"\n"), joined.split(b"\n")))
        body = b"\n" + b"\n".join(lines) + b"\n"
        # each chunk's start: the first line starting at or past each CHUNK_BYTES
        starts = list(accumulate(map((1).__add__, map(len, lines)), initial=1))
        bounds, step = [1], CHUNK_BYTES
        for at in starts[1:-1]:
            if at >= bounds[-1] + step:
                bounds.append(at)
        bounds.append(len(body))
        return cls(body, bounds)

    @property
    def nbytes(self) -> int:
        return len(self.lines)


def _line(lowered: bytes, member: bytes) -> bytes:
    """A member's line: lowered, then what lowering changed (the key's name, or in
    a folded label, which keygate never writes, the whole member)."""
    if lowered == member:
        return lowered
    label, _, rest = member.partition(b"\0")
    if lowered.startswith(label + b"\0"):
        return lowered + TAG_MARK + rest
    return lowered + WHOLE_MARK + member


def in_label_order(copy: AccountCopy, needle: bytes, want: int,
                   descending: bool) -> Matches | None:
    """The first ``want`` keys of the listing in label order (``descending``: from the
    last) whose member holds ``needle`` (lowered, with no control character), and how
    many hold it in all: their members, ordered. None when the copy keeps no label order,
    or every key holds the needle (in the shared prefix: a walk finds the page at once)."""
    order, patterns = copy.label_order, copy.patterns_of(needle)
    if order is None or patterns is None:
        return None
    lines, line = order.lines, line_pattern(patterns)
    chunks = list(pairwise(order.bounds))
    counts = [len(line.findall(lines, low, high)) for low, high in chunks]
    fresh = copy.fresh
    # lines held for keys read again since, which hold q: counted above, no longer theirs
    stale = sum(1 for f in fresh.values()
                if f.was is not None and any(p in f.was for p in patterns))
    now = sorted((f.member for f in fresh.values()
                  if f.member is not None and needle in f.member.encode().lower()),
                 reverse=descending)
    found: list[str] = []
    counted = list(zip(chunks, counts, strict=True))
    for (low, high), held in reversed(counted) if descending else counted:
        if held:
            _read(lines, patterns, low, high, want, copy.prefix, fresh, descending, found)
            if len(found) == want:
                break
    members = sorted(found + now[:want], reverse=descending)[:want]
    return Matches(members, sum(counts) - stale + len(now), ordered=True)


def _read(lines: bytes, patterns: list[bytes], low: int, high: int, want: int,
          prefix: bytes, fresh: dict[str, Fresh], descending: bool, found: list[str]) -> None:
    """Add to ``found``, up to ``want`` in all, the members of the lines between ``low``
    and ``high`` that hold one of ``patterns`` (from the last when ``descending``),
    the keys read again (``fresh``) left out."""
    if descending:
        last = [lines.rfind(p, low, high) for p in patterns]
        while (at := max(last)) != -1:
            start = lines.rfind(b"\n", 0, at) + 1
            _take(lines, start, prefix, fresh, found)
            if len(found) == want:
                return
            last = [lines.rfind(p, low, start) if was >= start else was
                    for p, was in zip(patterns, last, strict=True)]
        return
    next_at = [lines.find(p, low, high) for p in patterns]
    while (at := min((a for a in next_at if a != -1), default=-1)) != -1:
        start = lines.rfind(b"\n", 0, at) + 1
        end = _take(lines, start, prefix, fresh, found)
        if len(found) == want:
            return
        next_at = [lines.find(p, end, high) if was != -1 and was < end else was
                   for p, was in zip(patterns, next_at, strict=True)]


def _take(lines: bytes, start: int, prefix: bytes, fresh: dict[str, Fresh],
          found: list[str]) -> int:
    """Add the member of the line starting at ``start`` to ``found`` unless its key was
    read again; where the line ends."""
    end = lines.index(b"\n", start)
    whole = lines.find(WHOLE_MARK, start, end)
    if whole != -1:
        label, _, rest = lines[whole + 1:end].partition(b"\0")
    else:
        nul = lines.index(b"\0", start, end)
        mark = lines.find(TAG_MARK, nul, end)
        label, rest = lines[start:nul], lines[nul + 1:end] if mark == -1 else lines[mark + 1:end]
    key = (prefix + rest).decode()
    if key not in fresh:
        found.append(label.decode() + "\0" + key)
    return end
