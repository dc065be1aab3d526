"""Generated keys: create, list, get, change, delete, and token renewal (DESIGN.md §3)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from msgspec import UNSET

from ..context import GATEWAY
from ..errors import BadRequest, Conflict, NotFound
from ..lifecycle import CHANGEABLE, BadInput, checked_changes, checked_label, checked_roles
from ..pipeline import Identity
from ..renewal import alert_range, alert_since
from ..store import KeyQuery, KeyRecord, NoRenewalPending, RenewalRefused
from ..views import key_json
from .common import (
    EDIT,
    RENEW_TOKEN,
    VIEW_OR_RENEW,
    actor,
    iso,
    json_response,
    renewal_period,
    secret_fields,
    store_refusals,
)
from .operations import Operations
from .schema import (
    NEW_KEY_EXAMPLES,
    AccountPath,
    AtLeastOneChange,
    Change,
    Key,
    KeyDetail,
    KeyIssued,
    KeyListQuery,
    KeyPage,
    KeyPath,
    NewKey,
    Renewal,
)

operations = Operations("keys")


def key_query(listing: KeyListQuery, period_months: int, now_ms: int) -> KeyQuery:
    renewal = listing.renewal
    return KeyQuery(
        q=listing.q,
        status=listing.status or None,
        role=listing.role or None,
        sort=listing.sort,
        descending=listing.order == "desc",
        page=listing.page,
        per_page=listing.per_page,
        token_created=alert_range(renewal, period_months, now_ms) if renewal else None,
    )


def renewable_only(query: KeyQuery, gateway: Any, identity: Identity) -> KeyQuery:
    """``query`` narrowed to the keys ``identity`` may act on (gateway.escalation's
    rule: it may assign every role the key holds, or it is that key)."""
    def may_assign(role: str) -> bool:
        return gateway.delegation.why_not(identity.roles, identity.account, role) is None

    return dataclasses.replace(
        query, may_act_on=may_assign, own_key=identity.principal.app_key
    )


@contextlib.contextmanager
def bad_input() -> Iterator[None]:
    """The lifecycle's refusal of an input (gateway.lifecycle.BadInput) as the 400 it
    is, under the refusal's own code."""
    try:
        yield
    except BadInput as refusal:
        raise BadRequest(str(refusal), code=refusal.code) from None


def checked_patch(request: web.Request, body: Change) -> dict[str, Any]:
    """A PATCH of a key or a grant, checked by the lifecycle's rules before the caller's
    permission to make it is (a malformed change is refused as such, whoever sends it)."""
    sent = {name: getattr(body, name) for name in CHANGEABLE if getattr(body, name) is not UNSET}
    with bad_input():
        return checked_changes(sent, request.app[GATEWAY].policy)


def _missing(app_key: str, account: str) -> NotFound:
    return NotFound(f"no API key {app_key!r} in account {account!r}", code="key_not_found")


async def _target(request: web.Request, identity: Identity, app_key: str, *,
                  reveals_token: bool = False) -> KeyRecord:
    """The key a change is about, once the caller has been found allowed to act on it:
    it may assign every role the key holds here and, when the change hands the caller
    a token (``reveals_token``), every role other accounts granted the key there too
    (see gateway.escalation)."""
    gateway = request.app[GATEWAY]
    record = await gateway.store.get_key(identity.account, app_key)
    if record is None:
        raise _missing(app_key, identity.account)
    gateway.delegation.check_act_on(identity, app_key, record.roles,
                                    record.roles_elsewhere if reveals_token else ())
    return record


KEYS = "/api/v1/accounts/{account}/keys"
KEY = KEYS + "/{appKey}"
ACT_ON = {403: ("escalation_refused",), 404: ("key_not_found",)}
GUARDED = {**ACT_ON, 409: ("key_changed", "last_owner_key")}


@operations.post(KEYS, summary="Create a generated key", permission=EDIT, params=AccountPath,
                 body=NewKey, responses={201: KeyIssued},
                 errors={400: ("unknown_role", "bad_label"), 403: ("escalation_refused",)},
                 examples=NEW_KEY_EXAMPLES)
async def create_key(request: web.Request, identity: Identity, path: AccountPath,
                     body: NewKey) -> web.Response:
    """The answer is the only one that carries the new token (or, with `delivery: link`,
    the one-time link that reveals it). The caller may only hand out roles it could
    assign (no escalation)."""
    gateway = request.app[GATEWAY]
    with bad_input():
        label = checked_label(body.label)
        roles = checked_roles(body.roles, gateway.policy)
    gateway.delegation.check_assign(identity, roles)
    with bad_input():
        issued = await gateway.lifecycle.create(
            identity.account, label, roles, actor(request, identity), body.delivery,
            policy=gateway.policy,
        )
    period = await renewal_period(request, identity.account)
    return json_response(
        {**key_json(issued.record, period, gateway.now_ms()), **secret_fields(request, issued)},
        status=201,
    )


def listed_key(record: KeyRecord, period_months: int, now_ms: int) -> dict[str, Any]:
    """A key as the list shows it: its view, and since when its renewal alert is on (so
    that a caller who may not read the account's settings, such as a renew-only key,
    can still say since when)."""
    view = key_json(record, period_months, now_ms)
    since = alert_since(record.token_created, view["renewalAlert"], period_months)
    view["renewalAlertSince"] = iso(since) if since is not None else None
    return view


@operations.get(KEYS, summary="List generated keys", permission=VIEW_OR_RENEW,
                params=AccountPath, query=KeyListQuery, responses={200: KeyPage})
async def list_keys(request: web.Request, identity: Identity, path: AccountPath,
                    query: KeyListQuery) -> web.Response:
    """Filtered, sorted and paged; each key with `renewalAlertSince`, the date its
    renewal alert began. A caller with `renew-token` but not `view` sees its
    own key and the keys whose roles here it may assign, and no others (a key to which
    another account granted roles it could not assign there is listed, but reading or
    renewing it is refused)."""
    gateway = request.app[GATEWAY]
    period, now = await renewal_period(request, identity.account), gateway.now_ms()
    wanted = key_query(query, period, now)
    if identity.action != "view":
        wanted = renewable_only(wanted, gateway, identity)
    records, total = await gateway.store.list_keys(identity.account, wanted)
    return json_response(
        {
            "items": [listed_key(r, period, now) for r in records],
            "total": total,
            "page": wanted.page,
            "perPage": wanted.per_page,
        }
    )


@operations.get(KEY, summary="Read a generated key", permission=VIEW_OR_RENEW, params=KeyPath,
                responses={200: KeyDetail}, errors=ACT_ON)
async def get_key(request: web.Request, identity: Identity, path: KeyPath) -> web.Response:
    """With `renewalAlert`, `lastUsed` and `grantedIn` (the accounts that granted the key
    roles, and when)."""
    gateway = request.app[GATEWAY]
    record = await gateway.store.get_key(identity.account, path.app_key)
    if record is None:
        raise _missing(path.app_key, identity.account)
    if identity.action != "view":
        gateway.delegation.check_act_on(identity, path.app_key, record.roles,
                                        record.roles_elsewhere)
    period = await renewal_period(request, identity.account)
    detail = key_json(record, period, gateway.now_ms())
    detail["grantedIn"] = [
        {"account": account, "addedDate": iso(added)} for account, added in record.granted_in
    ]
    return json_response(detail)


@operations.patch(KEY, summary="Change a generated key's label, roles or status",
                  permission=EDIT, params=KeyPath, body=AtLeastOneChange,
                  responses={200: Key},
                  errors={**GUARDED, 400: ("empty_change", "unknown_role", "bad_label")})
async def update_key(request: web.Request, identity: Identity, path: KeyPath,
                     body: Change) -> web.Response:
    changes = checked_patch(request, body)
    app_key = path.app_key
    gateway = request.app[GATEWAY]
    current = await gateway.store.get_key(identity.account, app_key)
    if current is None:
        raise _missing(app_key, identity.account)
    # no token changes hands: the roles other accounts granted the key are theirs to
    # take back, and do not stop its own account from changing or switching it off
    gateway.delegation.check_change(identity, app_key, current.roles, changes.get("roles"))
    with bad_input(), store_refusals(app_key, identity.account):
        record = await gateway.lifecycle.update(
            identity.account, app_key, actor=actor(request, identity), policy=gateway.policy,
            expect_roles=current.roles, keep_an_owner=True, **changes,
        )
    if record is None:
        raise _missing(app_key, identity.account)
    period = await renewal_period(request, identity.account)
    return json_response(key_json(record, period, gateway.now_ms()))


@operations.delete(KEY, summary="Delete a generated key", permission=EDIT, params=KeyPath,
                   responses={204: None}, errors=GUARDED)
async def delete_key(request: web.Request, identity: Identity, path: KeyPath) -> web.Response:
    """Irreversible: the key's name is never issued again."""
    record = await _target(request, identity, path.app_key)
    app_key = record.app_key
    with store_refusals(app_key, identity.account):
        deleted = await request.app[GATEWAY].lifecycle.delete(
            identity.account, app_key, actor=actor(request, identity),
            expect_roles=record.roles, keep_an_owner=True,
        )
    if not deleted:
        raise _missing(app_key, identity.account)
    return web.Response(status=204)


# -- token renewal ---------------------------------------------------------------------
TOKEN = KEY + "/token"  # noqa: S105 - a path


@operations.post(TOKEN + "/renew", summary="Issue a new token", permission=RENEW_TOKEN,
                 params=KeyPath, body=Renewal, body_optional=True, responses={200: KeyIssued},
                 errors={**GUARDED, 409: ("renewal_pending", "token_link_pending",
                                          "key_changed")})
async def renew_token(request: web.Request, identity: Identity, path: KeyPath,
                      body: Renewal) -> web.Response:
    """With `deleteOld: later` (the default) both tokens work until finish-renewal or
    undo-renewal; with `now` the old one stops at once. 409 while a renewal, or an
    unopened one-time link, is pending."""
    record = await _target(request, identity, path.app_key, reveals_token=True)
    app_key = record.app_key
    gateway = request.app[GATEWAY]
    try:
        with bad_input(), store_refusals(app_key, identity.account):
            issued = await gateway.lifecycle.renew(
                identity.account, app_key, actor(request, identity),
                keep_old=body.delete_old == "later", delivery=body.delivery,
                expect_roles=record.roles, expect_elsewhere=record.roles_elsewhere,
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


async def _end_renewal(request: web.Request, identity: Identity, app_key: str,
                       finish: bool) -> web.Response:
    record = await _target(request, identity, app_key)
    gateway = request.app[GATEWAY]
    try:
        with store_refusals(app_key, identity.account):
            result = await gateway.lifecycle.end_renewal(
                identity.account, app_key, finish=finish, actor=actor(request, identity),
                expect_roles=record.roles,
            )
    except NoRenewalPending:
        raise NotFound(
            f"no token renewal is pending for API key {app_key!r}", code="no_pending_renewal"
        ) from None
    if result is None:
        raise _missing(app_key, identity.account)
    period = await renewal_period(request, identity.account)
    return json_response(key_json(result, period, gateway.now_ms()))


PENDING = {**GUARDED, 404: ("key_not_found", "no_pending_renewal")}


@operations.post(TOKEN + "/finish-renewal", summary="Finish a token renewal",
                 permission=RENEW_TOKEN, params=KeyPath, responses={200: Key}, errors=PENDING)
async def finish_renewal(request: web.Request, identity: Identity, path: KeyPath
                         ) -> web.Response:
    """The old token stops working; the new one stays."""
    return await _end_renewal(request, identity, path.app_key, finish=True)


@operations.post(TOKEN + "/undo-renewal", summary="Undo a token renewal",
                 permission=RENEW_TOKEN, params=KeyPath, responses={200: Key}, errors=PENDING)
async def undo_renewal(request: web.Request, identity: Identity, path: KeyPath
                       ) -> web.Response:
    """The new token is dropped; the old one stays."""
    return await _end_renewal(request, identity, path.app_key, finish=False)
