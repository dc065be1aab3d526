"""The store's layout version: which keygate's way of keeping its records the store
is in, written by ``keygate store migrate`` once every account is in it.

A keygate reads it before it serves and at each readiness probe. A store whose layout is
newer than this keygate's was migrated by a later release, whose records this one would
write in its own way (an older listing would index an account again in the older
layout): this keygate refuses to start on it and is not ready while it runs, so a
rollback or a forgotten old instance stops instead of damaging data. A store whose layout
is older, or that has no version (written before versions were kept), is served: every
account's missing indexes are built on its first listing, and ``keygate store migrate``
builds them all while keygate serves, then records this keygate's layout. A new store
(no version, no account) is recorded in this keygate's layout when keygate starts.

Layouts:

1. the listing indexes in status runs, with label zones and role holders scored by
   token date; the owners sets; the set of known accounts (``accounts.py``).
2. the token date, last-use, status and role holders' indexes packed sets (``tokens``,
   ``uses``, ``statuses``, ``holding:{role}``: scripts/packed.lua), a third of the memory
   of the sorted sets they replace (``tok``, ``used``, ``status``, ``holders:{role}``,
   removed when the account is indexed again).
3. the creation index a packed set too (``created``, in place of the sorted set
   ``keys``: an account's list of keys in an older layout, read to index it and then
   removed), and a key's hash kept short (records.py: its own grant as its roles'
   array, the token's digest in base64url, ``created`` only once a renewal moves the
   token's date; a hash written the older way is read alike).
"""

from __future__ import annotations

from dataclasses import dataclass

from .accounts import AccountRecords
from .core import unavailable

LAYOUT = 3


class NewerLayout(Exception):
    """The store was migrated to a layout newer than this keygate's: nothing is written."""

    def __init__(self, store: int):
        super().__init__(
            f"the key store's layout ({store}) is newer than this keygate's ({LAYOUT}): "
            "a later keygate migrated it; run that release (or a newer one)")
        self.store = store


@dataclass(frozen=True)
class LayoutStatus:
    store: int | None  # None: no version recorded (a store from before versions)
    keygate: int = LAYOUT

    @property
    def newer(self) -> bool:
        return self.store is not None and self.store > self.keygate

    @property
    def migrated(self) -> bool:
        return self.store is not None and self.store >= self.keygate


class StoreLayout(AccountRecords):
    @unavailable
    async def layout(self) -> LayoutStatus:
        """The store's layout version beside this keygate's (one GET). A value that is
        not a number counts as no version: ``migrate`` writes it again."""
        return await self._read_layout()

    @unavailable
    async def layout_at_start(self) -> LayoutStatus:
        """:meth:`layout`, once a new store's is recorded: a store with no version and no
        account (nothing written yet) is in this keygate's layout. Its accounts are read
        as ``accounts()`` reads them (a store kept by an older keygate is scanned once)."""
        status = await self._read_layout()
        if status.store is None and not await self._known_accounts():
            await self._record_layout()
            return LayoutStatus(LAYOUT)
        return status

    async def _read_layout(self) -> LayoutStatus:
        raw = await self.redis.get(self.names.layout_record)
        try:
            return LayoutStatus(int(raw) if raw is not None else None)
        except ValueError:
            return LayoutStatus(None)

    async def _check_layout(self) -> LayoutStatus:
        """The layout, or :class:`NewerLayout` when the store's is newer."""
        status = await self._read_layout()
        if status.newer:
            assert status.store is not None
            raise NewerLayout(status.store)
        return status

    async def _record_layout(self) -> None:
        """Record this keygate's layout, once every account is in it (``migrate``)."""
        await self.redis.set(self.names.layout_record, LAYOUT)
