"""``/accounts/{account}/settings``: the renewal-reminder period."""

from __future__ import annotations

from aiohttp import web

from ..context import GATEWAY
from ..errors import BadRequest
from ..renewal import RENEWAL_PERIODS
from .common import actor, authorize, json_body, json_response, renewal_period

routes = web.RouteTableDef()


@routes.get("/api/v1/accounts/{account}/settings")
async def get_settings(request: web.Request) -> web.Response:
    identity = await authorize(request, "view")
    return json_response({"renewalPeriodMonths": await renewal_period(request, identity.account)})


@routes.put("/api/v1/accounts/{account}/settings")
async def put_settings(request: web.Request) -> web.Response:
    identity = await authorize(request, "edit-settings")
    body = await json_body(
        request, {"renewalPeriodMonths"}, required=frozenset({"renewalPeriodMonths"})
    )
    months = body["renewalPeriodMonths"]
    if type(months) is not int or months not in RENEWAL_PERIODS:  # 6.0 and True are not 6
        allowed = " or ".join(str(m) for m in RENEWAL_PERIODS)
        raise BadRequest(
            f"renewalPeriodMonths must be {allowed}, got {months!r}", code="bad_renewal_period"
        )
    await request.app[GATEWAY].store.put_setting(
        identity.account, "renewalPeriodMonths", months, actor(request, identity)
    )
    return json_response({"renewalPeriodMonths": months})
