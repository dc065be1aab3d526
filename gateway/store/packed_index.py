"""Packed sorted sets (scripts/packed.lua) read and written from Python.

A packed set keeps a large sorted set as many small ones, each in Redis's compact
encoding: the same order (score, then member in byte order), a third of the memory per
entry. The scripts that change a key keep them through the fragment itself; this module
reads one in bulk, builds one from a sorted set of an older layout, and is how the tests
check the fragment against Redis's own sorted sets.
"""

from __future__ import annotations

from collections.abc import Iterable

from .lua import Scripts, constant

# the largest score a packed set takes (packed.lua pk_pos)
MAX_SCORE = 2**52 - 1


def counts_of(name: str) -> tuple[str, str]:
    """The hash and field holding how many entries the packed set ``name`` holds: its
    size is one HGET (pipelined beside other reads)."""
    return f"{name}:n", "t"


def whole_score(value: str | None) -> int:
    """A hash's value as the scripts index it (packed.lua pk_whole): a whole number from
    0, and 0 for none or for what is not a number."""
    try:
        number = float(value) if value is not None else 0.0
    except ValueError:
        return 0
    if number != number:  # NaN
        return 0
    return int(min(max(number // 1, 0), MAX_SCORE))


class PackedIndex:
    """One packed set, by name (every name of its tree shares that name's hash slot)."""

    def __init__(self, scripts: Scripts, name: str):
        self.scripts = scripts
        self.name = name

    async def _call(self, *args: object) -> object:
        return await self.scripts.packed_index(keys=[self.name], args=args)

    async def add(self, entries: Iterable[tuple[int, str]]) -> int:
        """Add ``(score, member)`` entries whose members it does not hold; how many were
        added (a member it holds already is left as it is)."""
        flat = [v for score, member in entries for v in (score, member)]
        return int(await self._call("add", *flat)) if flat else 0  # type: ignore[arg-type]

    async def remove(self, entries: Iterable[tuple[int, str]]) -> int:
        """Remove ``(score, member)`` entries; how many it held (at that score)."""
        flat = [v for score, member in entries for v in (score, member)]
        return int(await self._call("remove", *flat)) if flat else 0  # type: ignore[arg-type]

    async def range(self, start: int, count: int,
                    descending: bool = False) -> list[tuple[str, int]]:
        """``count`` entries from rank ``start`` (from the last when ``descending``)."""
        flat = await self._call("range", start, count, "1" if descending else "0")
        return [(member, int(float(score)))
                for member, score in zip(flat[::2], flat[1::2], strict=True)]  # type: ignore[index]

    async def first_in(self, ranges: Iterable[tuple[int, int]],
                       count: int) -> list[list[tuple[str, int]]]:
        """For each ``(low, high)`` range of scores (both in), its first ``count``
        entries; every range read at once (one script: no change falls between)."""
        flat = [v for low, high in ranges for v in (low, high)]
        found = await self._call("from", count, *flat)
        return [[(member, int(float(score)))
                 for member, score in zip(run[::2], run[1::2], strict=True)]
                for run in found]  # type: ignore[union-attr]

    async def count(self, low: int, high: int) -> int:
        """How many entries have a score from ``low`` to ``high``, both included."""
        return int(await self._call("count", low, high))  # type: ignore[arg-type]

    async def rank(self, score: int, member: str) -> int:
        """How many entries come before ``(score, member)`` (held or not)."""
        return int(await self._call("rank", score, member))  # type: ignore[arg-type]

    async def card(self) -> int:
        return int(await self._call("card"))  # type: ignore[arg-type]

    async def drop(self) -> None:
        """Remove the whole set (its root, counts, pages and buckets)."""
        await self._call("drop")

    async def problems(self, caps: tuple[int, int] | None = None) -> list[str]:
        """What breaks the packed set's rules (scripts/packed.lua), read name by name: a
        bucket or page over its cap or out of its fences' order, a count that is not
        what its bucket, page or set holds. Empty for a sound set (the tests check every
        set they change; slow for a large one). ``caps``: the bucket's and the page's,
        when not the script's own."""
        redis, name, found = self.scripts.client, self.name, []
        pack_cap, page_cap = caps or (PACK_CAP, PAGE_CAP)
        counts = await redis.hgetall(f"{name}:n")
        pages = await redis.zrange(name, 0, -1)
        if not pages:
            return [f"counts kept for an empty set: {counts}"] if counts else []
        if pages[0] != "":
            found.append(f"the first page's fence is {pages[0]!r}, not ''")
        entries: list[tuple[int, str]] = []
        total = 0
        for page in pages:
            fences = await redis.zrange(f"{name}:p:{page}", 0, -1)
            if not fences or fences[0] != page:
                found.append(f"page {page!r} does not start with its own fence: {fences[:1]}")
            if len(fences) > page_cap:
                found.append(f"page {page!r} holds {len(fences)} buckets")
            in_page = 0
            for fence in fences:
                held = [(int(float(s)), m) for m, s in
                        await redis.zrange(f"{name}:b:{fence}", 0, -1, withscores=True)]
                if len(held) > pack_cap:
                    found.append(f"bucket {fence!r} holds {len(held)} entries")
                if held and position(*held[0]) < fence.encode():
                    found.append(f"bucket {fence!r} holds {held[0]}, before its fence")
                if entries and position(*entries[-1]) >= fence.encode():
                    found.append(f"{entries[-1]} is held before bucket {fence!r}, past its fence")
                if int(counts.get("b" + fence, 0)) != len(held):
                    found.append(f"bucket {fence!r} counted {counts.get('b' + fence)}, "
                                 f"holds {len(held)}")
                if not held and fence != page:
                    found.append(f"bucket {fence!r} holds no entry and is kept")
                in_page += len(held)
                entries += held
            if in_page == 0 and page != "":
                found.append(f"page {page!r} holds no entry and is kept")
            if int(counts.get("p" + page, 0)) != in_page:
                found.append(f"page {page!r} counted {counts.get('p' + page)}, holds {in_page}")
            total += in_page
        if int(counts.get("t", 0)) != total:
            found.append(f"the set counted {counts.get('t')}, holds {total}")
        positions = [position(s, m) for s, m in entries]
        if positions != sorted(positions) or len(set(positions)) != len(positions):
            found.append("entries out of order across buckets")
        if len({m for _, m in entries}) != len(entries):
            found.append("a member held twice")
        return found


def position(score: int, member: str) -> bytes:
    """An entry's position (packed.lua pk_pos): byte order of positions is the set's."""
    return f"{score:0{PACK_DIGITS}x}".encode() + member.encode()


PACK_CAP = constant("packed", "PACK_CAP")
PAGE_CAP = constant("packed", "PAGE_CAP")
PACK_DIGITS = constant("packed", "PACK_DIGITS")
