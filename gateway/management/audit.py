"""``/accounts/{account}/audit``: what changed, who changed it, newest first."""

from __future__ import annotations

from aiohttp import web

from ..context import GATEWAY
from ..errors import BadRequest
from ..pipeline import Identity
from ..store import ACCESS_ID_PREFIX, AuditEvent
from ..views import event_json
from .common import VIEW, json_response
from .operations import Operations
from .schema import AccountPath, AuditPage, AuditQuery

operations = Operations("audit")


@operations.get("/api/v1/accounts/{account}/audit", summary="Read the account's audit log",
                permission=VIEW, params=AccountPath, query=AuditQuery,
                responses={200: AuditPage})
async def list_audit(request: web.Request, identity: Identity, path: AccountPath,
                     query: AuditQuery) -> web.Response:
    """Changes and sampled access denials, newest first, filtered by `action`, `actor`
    and `target`; pass `next` back as `cursor` for the following page."""
    cursor = query.cursor or None
    if cursor is not None and not _is_stream_id(cursor):
        raise BadRequest("cursor must be the 'next' value of a previous page", code="bad_query")

    def accept(event: AuditEvent) -> bool:
        return (
            (not query.action or event.action == query.action)
            and (not query.actor or event.actor == query.actor)
            and (not query.target or event.target == query.target)
        )

    events, next_cursor = await request.app[GATEWAY].store.audit_events(
        identity.account, before_id=cursor, limit=query.limit, accept=accept
    )
    return json_response({"items": [event_json(e) for e in events], "next": next_cursor})


_MAX_ID_PART = 2**64 - 1  # a Redis stream id is two unsigned 64-bit numbers


def _is_stream_id(value: str) -> bool:
    """An event id as a previous page returned it: ``MS-SEQ``, ``a`` before it for an
    access event. Redis refuses parts beyond 64 bits with an error, so they are
    refused here first (as 400, not as a store failure)."""
    millis, _, seq = value.removeprefix(ACCESS_ID_PREFIX).partition("-")
    return (
        value.isascii()
        and millis.isdigit() and seq.isdigit()
        and len(millis) <= 20 and len(seq) <= 20
        and int(millis) <= _MAX_ID_PART and int(seq) <= _MAX_ID_PART
    )
