"""The audit log: two streams per account.

``audit`` holds change events, written by the script that makes the change; ``access``
holds access events (sampled denials). They are capped separately, so no volume of
requests, by anyone, can trim a change event. Listing merges them newest first; an
access event's id carries the ``a`` prefix (``ACCESS_ID_PREFIX``) so a cursor says which
stream it came from (the two streams' ids may coincide).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from .core import StoreCore, unavailable
from .records import ACCESS_ID_PREFIX, Actor, AuditEvent, audit_entry, event_fields


def _id_order(event_id: str) -> tuple[int, int]:
    millis, _, seq = event_id.removeprefix(ACCESS_ID_PREFIX).partition("-")
    return int(millis), int(seq or 0)


class AuditLog(StoreCore):
    @unavailable
    async def append_access_event(
        self, account: str, actor: Actor, action: str, target: str, after: Mapping[str, Any]
    ) -> None:
        """An access event (e.g. a sampled denial), in the account's access stream."""
        await self.redis.xadd(
            self.names.account(account, "access"),
            audit_entry(event_fields(self.now_ms(), actor, action, target), {}, after),
            maxlen=self.audit_max_access_events,
            approximate=True,
        )

    @unavailable
    async def audit_policy_reload(
        self, account: str, actor: Actor, before: Mapping[str, Any], after: Mapping[str, Any]
    ) -> None:
        """A policy reload asked through the management API, in the audit log of the
        account of the key that asked (the policy is every account's, the key is one's)."""
        await self.redis.xadd(
            self.names.account(account, "audit"),
            audit_entry(event_fields(self.now_ms(), actor, "policy.reload", "policy"),
                        before, after),
            maxlen=self.audit_max_events,
            approximate=True,
        )

    async def _stream_newest_first(
        self, account: str, stream: str, max_id: str, prefix: str
    ) -> AsyncIterator[AuditEvent]:
        end = max_id
        if end.startswith("(") and not any(int(part) for part in end[1:].split("-")):
            return  # nothing precedes the smallest id (and Redis refuses "(0-0" as a bound)
        while True:
            batch = await self.redis.xrevrange(stream, max=end, min="-", count=200)
            if not batch:
                return
            for event_id, fields in batch:
                yield AuditEvent.from_stream(prefix + event_id, fields, account)
            end = f"({batch[-1][0]}"

    @unavailable
    async def audit_events(
        self,
        account: str,
        *,
        before_id: str | None = None,
        limit: int = 50,
        accept: Callable[[AuditEvent], bool] = lambda e: True,
        scan_limit: int = 10_000,
    ) -> tuple[list[AuditEvent], str | None]:
        """Newest first, after the event ``before_id`` (a cursor: an event id of a
        previous page); returns the page and the next cursor.

        Filtering happens here while paging both streams backwards, bounded by
        ``scan_limit`` events per call so a rare filter cannot scan a huge stream. Events
        with equal ids are ordered change first, then access.
        """
        if before_id is None:
            change_max = access_max = "+"
        elif before_id.startswith(ACCESS_ID_PREFIX):
            bare = before_id[len(ACCESS_ID_PREFIX):]
            change_max = access_max = f"({bare}"
        else:
            change_max, access_max = f"({before_id}", before_id
        streams = [
            self._stream_newest_first(account, self.names.account(account, "audit"),
                                      change_max, ""),
            self._stream_newest_first(account, self.names.account(account, "access"),
                                      access_max, ACCESS_ID_PREFIX),
        ]
        heads: list[AuditEvent | None] = [await anext(it, None) for it in streams]
        found: list[AuditEvent] = []
        scanned = 0
        last_id: str | None = None
        while scanned < scan_limit:
            live = [i for i, head in enumerate(heads) if head is not None]
            if not live:
                return found, None
            # newest first; on equal ids the change stream (index 0) first
            pick = max(live, key=lambda i: (_id_order(heads[i].id), -i))  # type: ignore[union-attr]
            event = heads[pick]
            assert event is not None
            heads[pick] = await anext(streams[pick], None)
            scanned += 1
            last_id = event.id
            if accept(event):
                found.append(event)
                if len(found) == limit:
                    return found, event.id
        return found, last_id
