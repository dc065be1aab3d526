"""Cross-site request forgery: a write whose only credential is the session cookie must
prove it comes from keygate's own page.

A browser attaches cookies to requests other sites make it send: a form on another
page, or a ``fetch`` from another origin. ``SameSite=Strict`` stops that only across
*sites*; another port or another subdomain of the same site (``127.0.0.1:9000``,
``other.example.com``) is the same site, and its forms still carry the cookie. So an
unsafe request (POST, PUT, PATCH, DELETE) whose credentials would be read from the
session cookie is refused with ``403 csrf_refused`` unless

* it carries ``X-Keygate-CSRF: 1``: a form cannot send a header, and a script on
  another origin cannot either without a CORS preflight, which keygate never grants
  (it answers no ``OPTIONS``, sends no ``Access-Control-Allow-*``);
* its ``Origin``, when present, is the management port's own origin (as the client
  reached it: through trusted proxies their ``X-Forwarded-Proto``/``-Host``, and
  ``management_public_url``); ``Origin: null`` is not;
* its ``Sec-Fetch-Site``, when present, is ``same-origin``.

Requests that carry the key/token headers or ``Authorization: Bearer`` are not the
cookie's: a browser never adds those by itself. Routes that never read the cookie as a
credential are left alone: login (the key and token are in the body, which must be
JSON, something a form cannot send either), logout (it only clears the cookie), and
the one-time token links (the link is the credential; its page posts a plain form).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDictProxy, istr

from ..context import GATEWAY
from ..errors import Forbidden

CSRF_HEADER = istr("X-Keygate-CSRF")
CSRF_VALUE = "1"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# canonical route paths whose handlers never take the session cookie as credentials
COOKIE_FREE_ROUTES = frozenset({
    "/api/v1/auth/login",
    "/api/v1/auth/logout",
    "/api/v1/token-links/{secret}",
})
_AUTHORIZATION = istr("Authorization")
_COOKIE = istr("Cookie")
_ORIGIN = istr("Origin")
_SEC_FETCH_SITE = istr("Sec-Fetch-Site")


class CsrfRefused(Forbidden):
    code = "csrf_refused"


def _bearer(headers: CIMultiDictProxy[str]) -> bool:
    value = headers.get(_AUTHORIZATION)
    if value is None:
        return False
    scheme, _, token = value.strip().partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def carries_cookie(headers: CIMultiDictProxy[str], cookie: str) -> bool:
    """The session cookie is present, read as the session authenticator reads it."""
    for header in headers.getall(_COOKIE, ()):
        for pair in header.split(";"):
            name, _, value = pair.strip().partition("=")
            if name == cookie and value:
                return True
    return False


def cookie_is_the_credential(request: web.Request) -> bool:
    settings = request.app[GATEWAY].settings
    cookie = settings.session_cookie
    if not cookie:
        return False
    headers = request.headers
    if settings.key_header in headers or settings.token_header in headers or _bearer(headers):
        return False
    return carries_cookie(headers, cookie)


def own_origins(request: web.Request) -> set[str]:
    """The origins the management port is reached at: as this request reached it, and
    the configured public URL's."""
    gateway = request.app[GATEWAY]
    scheme, host = request.scheme, request.host
    if gateway.trusted_proxies is not None:
        forwarding = gateway.trusted_proxies.forwarding(
            request.remote or "", request.headers, scheme, host)
        scheme, host = forwarding.proto, forwarding.host
    origins = {f"{scheme}://{host}".lower()}
    public = urlsplit(gateway.settings.management_public_url)
    if public.scheme and public.netloc:
        origins.add(f"{public.scheme}://{public.netloc}".lower())
    return origins


def refusal(request: web.Request) -> CsrfRefused | None:
    """Why this cookie-authenticated write is refused, or None when it may proceed."""
    if request.headers.get(CSRF_HEADER) != CSRF_VALUE:
        return CsrfRefused(
            f"a write authenticated by the session cookie must carry the header "
            f"{CSRF_HEADER}: {CSRF_VALUE} (keygate's admin page sends it; other clients "
            f"authenticate with the key and token headers or Authorization: Bearer)")
    origin = request.headers.get(_ORIGIN)
    if origin is not None and origin.lower() not in own_origins(request):
        return CsrfRefused(
            "a write authenticated by the session cookie must come from the management "
            "port's own origin; this one came from another page")
    site = request.headers.get(_SEC_FETCH_SITE)
    if site is not None and site != "same-origin":
        return CsrfRefused(
            "a write authenticated by the session cookie must come from the management "
            "port's own origin; the browser says this one was sent by another site or page")
    return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def csrf_protection(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Placed after the error middleware, so that a refusal is the one error shape."""
    if request.method in UNSAFE_METHODS and cookie_is_the_credential(request):
        route = request.match_info.route.resource
        if route is None or route.canonical not in COOKIE_FREE_ROUTES:
            refused = refusal(request)
            if refused is not None:
                raise refused
    return await handler(request)
