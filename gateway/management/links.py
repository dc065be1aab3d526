"""One-time token links: ``/api/v1/token-links/{secret}``.

The link is the credential, so opening it needs no API key. ``GET`` only shows a page
with a button and never consumes the link: chat and mail clients fetch URLs to build
previews, and such a fetch must not burn the one chance to read the token. ``POST``
(the button, or any API client) reveals the token and consumes the link atomically;
every later open, and any open after expiry, gets 410.

A link is a credential, so a link that is not (any more) there is a failed
authentication: it draws on the client address's failure budget
(``auth_failure_limit``), and past it the answer is 429 before the store is asked, as
for a wrong key or token, however many are opened at once. (Guessing a link is as
hopeless as guessing a token; what the budget bounds is the store reads a flood of
made-up links costs.)
"""

from __future__ import annotations

import html

from aiohttp import web

from ..context import GATEWAY
from ..credentials import is_link_secret, link_id
from ..errors import Gone, TooManyRequests
from ..middleware import request_id_of
from ..ratelimit import Attempt, attempt
from .common import client_address, json_response
from .operations import Operations
from .schema import LinkPath, LinkStatus, OpenedLink

operations = Operations("token links")

LINK = "/api/v1/token-links/{secret}"
GONE = {410: ("token_link_gone",), 429: ("too_many_failures",), 503: ()}


def gone() -> Gone:
    """A fresh exception per refusal: one shared instance would collect every refused
    request's traceback (its frames, the request and its headers among them) for as
    long as the process lives, as :func:`gateway.auth.invalid_credentials` explains."""
    return Gone(
        "this token link has already been opened or has expired; ask the key's owner "
        "account for a new token renewal",
        code="token_link_gone",
    )


def _budgeted(request: web.Request) -> Attempt:
    """Opening a link as an attempt of the client's address under its failure budget
    (429 once it is spent, before the store is asked)."""
    return attempt(request.app[GATEWAY].pipeline.limiter, client_address(request))


async def _failed(budgeted: Attempt) -> Gone | TooManyRequests:
    """A link that is not there: counted as a failed authentication of the client."""
    wait = await budgeted.failed()
    return TooManyRequests(wait) if wait is not None else gone()


# The pages show a token, or the button that reveals it: no cache keeps them, no other
# site frames them (a framed button is one click away from burning the link unseen).
# Their policy is strict: no inline script or style; the one stylesheet is a file of the
# admin page's (gateway/ui/link.css), named relative to the link so that it is found
# under a management_public_url with a path too.
LINK_STYLESHEET = "../../../admin/link.css"  # from /api/v1/token-links/{secret}
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; form-action 'self'; "
                           "frame-ancestors 'none'; base-uri 'none'")
_NO_STORE = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
}
_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>keygate: API token</title>
<meta name="robots" content="noindex">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{LINK_STYLESHEET}"></head>
<body><h1>API token</h1>{{body}}</body></html>"""


def _wants_html(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "text/html" in accept and "application/json" not in accept


@operations.get(LINK, summary="Show a one-time token link (does not consume it)",
                params=LinkPath, responses={200: {"application/json": LinkStatus,
                                                  "text/html": str}}, errors=GONE)
async def show_link(request: web.Request, path: LinkPath) -> web.Response:
    """No credentials: the link is the credential. HTML (a page with a button) when the
    client asks for `text/html` and not JSON; never consumes the link, so that chat and
    mail clients fetching previews cannot burn it."""
    secret = path.secret
    async with _budgeted(request) as budgeted:
        if not is_link_secret(secret) or not await request.app[GATEWAY].store.link_valid(
            link_id(secret)
        ):
            raise await _failed(budgeted)
    if not _wants_html(request):
        return json_response(
            {"status": "unopened", "message": "POST to this URL to reveal the token, once"},
        )
    body = (
        "<p>This link shows an API token <strong>once</strong>. Reveal it only when you "
        "are ready to store it in your secret manager.</p>"
        '<form method="post"><button type="submit">Reveal the token</button></form>'
    )
    return web.Response(text=_PAGE.format(body=body), content_type="text/html",
                        headers=_NO_STORE)


@operations.post(LINK, summary="Open a one-time token link: reveal the token, once",
                 params=LinkPath, responses={200: {"application/json": OpenedLink,
                                                   "text/html": str}}, errors=GONE)
async def open_link(request: web.Request, path: LinkPath) -> web.Response:
    """Reveals the key and its token and consumes the link atomically; every later open,
    and any open after expiry, is 410. HTML for a browser's form post."""
    async with _budgeted(request) as budgeted:
        opened = await request.app[GATEWAY].lifecycle.open_link(
            path.secret, request_id_of(request)
        )
        if opened is None:
            raise await _failed(budgeted)
    if _wants_html(request) or request.content_type == "application/x-www-form-urlencoded":
        body = (
            f"<p>API key <code>{html.escape(opened.app_key)}</code></p>"
            f"<p>API token <code>{html.escape(opened.token)}</code></p>"
            "<p>This page will not show it again.</p>"
        )
        return web.Response(text=_PAGE.format(body=body), content_type="text/html",
                            headers=_NO_STORE)
    response = json_response({"appKey": opened.app_key, "appToken": opened.token})
    response.headers.update(_NO_STORE)
    return response

