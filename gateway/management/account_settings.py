"""``/accounts/{account}/settings``: the renewal-reminder period."""

from __future__ import annotations

from aiohttp import web

from ..context import GATEWAY
from ..pipeline import Identity
from .common import EDIT_SETTINGS, VIEW, actor, json_response, renewal_period
from .keys import bad_input
from .operations import Operations
from .schema import AccountPath, AccountSettings

operations = Operations("settings")

SETTINGS = "/api/v1/accounts/{account}/settings"


@operations.get(SETTINGS, summary="Read the account's settings", permission=VIEW,
                params=AccountPath, responses={200: AccountSettings})
async def get_settings(request: web.Request, identity: Identity, path: AccountPath
                       ) -> web.Response:
    return json_response({"renewalPeriodMonths": await renewal_period(request, identity.account)})


@operations.put(SETTINGS, summary="Change the account's settings", permission=EDIT_SETTINGS,
                params=AccountPath, body=AccountSettings, responses={200: AccountSettings})
async def put_settings(request: web.Request, identity: Identity, path: AccountPath,
                       body: AccountSettings) -> web.Response:
    """The renewal-reminder period: `renewalAlert` turns orange that many months after a
    key's token was issued, red three months later. Tokens never expire because of it."""
    with bad_input():
        months = await request.app[GATEWAY].lifecycle.put_setting(
            identity.account, "renewalPeriodMonths", body.renewal_period_months,
            actor(request, identity),
        )
    return json_response({"renewalPeriodMonths": months})
