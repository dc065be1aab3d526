"""Generated keys: create, list, get, change, delete, and token renewal (DESIGN.md §3)."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from ..context import GATEWAY
from ..errors import BadRequest, Conflict, NotFound
from ..pipeline import Identity
from ..renewal import ALERTS, renewal_alert
from ..store import SORT_FIELDS, STATUSES, KeyQuery, KeyRecord, RenewalRefused
from ..views import key_json
from .common import (
    MAX_PER_PAGE,
    actor,
    authorize,
    choice_param,
    delivery_field,
    grant_changes,
    int_param,
    iso,
    json_body,
    json_response,
    label_field,
    renewal_period,
    roles_field,
    secret_fields,
    store_refusals,
)

routes = web.RouteTableDef()


def key_query(request: web.Request, period_months: int, now_ms: int) -> KeyQuery:
    search = request.query.get("q", "")
    if len(search) > 200:
        raise BadRequest("q must be at most 200 characters", code="bad_query")
    renewal = choice_param(request, "renewal", ALERTS)
    return KeyQuery(
        q=search,
        status=choice_param(request, "status", STATUSES),
        role=request.query.get("role") or None,
        sort=choice_param(request, "sort", tuple(SORT_FIELDS)) or "creationDate",
        descending=(choice_param(request, "order", ("asc", "desc")) or "desc") == "desc",
        page=int_param(request, "page", 1, 1, 1_000_000),
        per_page=int_param(request, "perPage", 20, 1, MAX_PER_PAGE),
        where=(
            (lambda r: renewal_alert(r.token_created, period_months, now_ms) == renewal)
            if renewal else None
        ),
    )


# "Renew API token" lets its holder view and renew generated keys' tokens (as in the
# system keygate reproduces): a key with renew-token but not view sees the keys it may
# renew, i.e. act on (gateway.escalation), and no others.
VIEW_OR_RENEW = ("view", "renew-token")


def renewable_only(query: KeyQuery, gateway: Any, identity: Identity) -> KeyQuery:
    """``query`` narrowed to the keys ``identity`` may act on."""
    where = query.where

    def may_renew(record: KeyRecord) -> bool:
        return gateway.delegation.may_act_on(identity, record.app_key, record.roles) and (
            where is None or where(record)
        )

    return dataclasses.replace(query, where=may_renew)


def _missing(app_key: str, account: str) -> NotFound:
    return NotFound(f"no API key {app_key!r} in account {account!r}", code="key_not_found")


async def _target(request: web.Request, identity: Identity) -> KeyRecord:
    """The key a change is about, once the caller has been found allowed to act on it
    (it may assign every role the key holds: see gateway.escalation)."""
    app_key = request.match_info["app_key"]
    gateway = request.app[GATEWAY]
    record = await gateway.store.get_key(identity.account, app_key)
    if record is None:
        raise _missing(app_key, identity.account)
    gateway.delegation.check_act_on(identity, app_key, record.roles)
    return record


@routes.post("/api/v1/accounts/{account}/keys")
async def create_key(request: web.Request) -> web.Response:
    identity = await authorize(request, "edit")
    body = await json_body(
        request, {"label", "roles", "delivery"}, required=frozenset({"label", "roles"})
    )
    label = label_field(body["label"])
    roles = roles_field(request, body["roles"])
    delivery = delivery_field(body.get("delivery", "token"))
    gateway = request.app[GATEWAY]
    gateway.delegation.check_assign(identity, roles)
    issued = await gateway.lifecycle.create(
        identity.account, label, roles, actor(request, identity), delivery
    )
    period = await renewal_period(request, identity.account)
    return json_response(
        {**key_json(issued.record, period, gateway.now_ms()), **secret_fields(request, issued)},
        status=201,
    )


@routes.get("/api/v1/accounts/{account}/keys")
async def list_keys(request: web.Request) -> web.Response:
    identity = await authorize(request, VIEW_OR_RENEW)
    gateway = request.app[GATEWAY]
    period, now = await renewal_period(request, identity.account), gateway.now_ms()
    query = key_query(request, period, now)
    if identity.action != "view":
        query = renewable_only(query, gateway, identity)
    records, total = await gateway.store.list_keys(identity.account, query)
    return json_response(
        {
            "items": [key_json(r, period, now) for r in records],
            "total": total,
            "page": query.page,
            "perPage": query.per_page,
        }
    )


@routes.get("/api/v1/accounts/{account}/keys/{app_key}")
async def get_key(request: web.Request) -> web.Response:
    identity = await authorize(request, VIEW_OR_RENEW)
    app_key = request.match_info["app_key"]
    gateway = request.app[GATEWAY]
    record = await gateway.store.get_key(identity.account, app_key)
    if record is None:
        raise _missing(app_key, identity.account)
    if identity.action != "view":
        gateway.delegation.check_act_on(identity, app_key, record.roles)
    period = await renewal_period(request, identity.account)
    detail = key_json(record, period, gateway.now_ms())
    detail["grantedIn"] = [
        {"account": account, "addedDate": iso(added)} for account, added in record.granted_in
    ]
    return json_response(detail)


@routes.patch("/api/v1/accounts/{account}/keys/{app_key}")
async def update_key(request: web.Request) -> web.Response:
    identity = await authorize(request, "edit")
    changes = await grant_changes(request)
    app_key = request.match_info["app_key"]
    gateway = request.app[GATEWAY]
    current = await gateway.store.get_key(identity.account, app_key)
    if current is None:
        raise _missing(app_key, identity.account)
    gateway.delegation.check_change(identity, app_key, current.roles, changes.get("roles"))
    with store_refusals(app_key, identity.account):
        record = await gateway.store.update_key(
            identity.account, app_key, actor=actor(request, identity),
            expect_roles=current.roles, keep_an_owner=True, **changes,
        )
    if record is None:
        raise _missing(app_key, identity.account)
    period = await renewal_period(request, identity.account)
    return json_response(key_json(record, period, gateway.now_ms()))


@routes.delete("/api/v1/accounts/{account}/keys/{app_key}")
async def delete_key(request: web.Request) -> web.Response:
    identity = await authorize(request, "edit")
    record = await _target(request, identity)
    app_key = record.app_key
    with store_refusals(app_key, identity.account):
        deleted = await request.app[GATEWAY].store.delete_key(
            identity.account, app_key, actor=actor(request, identity),
            expect_roles=record.roles, keep_an_owner=True,
        )
    if not deleted:
        raise _missing(app_key, identity.account)
    return web.Response(status=204)


# -- token renewal ---------------------------------------------------------------------
_TOKEN = "/api/v1/accounts/{account}/keys/{app_key}/token"  # noqa: S105 - a path


@routes.post(_TOKEN + "/renew")
async def renew_token(request: web.Request) -> web.Response:
    identity = await authorize(request, "renew-token")
    body = await json_body(request, {"deleteOld", "delivery"}, empty_ok=True)
    delete_old = body.get("deleteOld", "later")
    if delete_old not in ("later", "now"):
        raise BadRequest("deleteOld must be later or now", code="bad_delete_old")
    delivery = delivery_field(body.get("delivery", "token"))
    record = await _target(request, identity)
    app_key = record.app_key
    gateway = request.app[GATEWAY]
    try:
        with store_refusals(app_key, identity.account):
            issued = await gateway.lifecycle.renew(
                identity.account, app_key, actor(request, identity),
                keep_old=delete_old == "later", delivery=delivery, expect_roles=record.roles,
            )
    except RenewalRefused as refusal:
        if refusal.reason == "pending":
            raise Conflict(
                "a token renewal is already pending for this key: finish it "
                "(POST …/token/finish-renewal) or undo it (POST …/token/undo-renewal) first",
                code="renewal_pending",
            ) from None
        raise Conflict(
            "the one-time link of this key's last token has not been opened yet; open it "
            "or wait until it expires before renewing again",
            code="token_link_pending",
        ) from None
    if issued is None:
        raise _missing(app_key, identity.account)
    period = await renewal_period(request, identity.account)
    return json_response(
        {**key_json(issued.record, period, gateway.now_ms()), **secret_fields(request, issued)}
    )


async def _end_renewal(request: web.Request, finish: bool) -> web.Response:
    identity = await authorize(request, "renew-token")
    record = await _target(request, identity)
    app_key = record.app_key
    gateway = request.app[GATEWAY]
    with store_refusals(app_key, identity.account):
        result = await gateway.store.end_renewal(
            identity.account, app_key, finish=finish, actor=actor(request, identity),
            expect_roles=record.roles,
        )
    if result is None:
        raise _missing(app_key, identity.account)
    if result is False:
        raise NotFound(
            f"no token renewal is pending for API key {app_key!r}", code="no_pending_renewal"
        )
    assert isinstance(result, KeyRecord)
    period = await renewal_period(request, identity.account)
    return json_response(key_json(result, period, gateway.now_ms()))


@routes.post(_TOKEN + "/finish-renewal")
async def finish_renewal(request: web.Request) -> web.Response:
    return await _end_renewal(request, finish=True)


@routes.post(_TOKEN + "/undo-renewal")
async def undo_renewal(request: web.Request) -> web.Response:
    return await _end_renewal(request, finish=False)
