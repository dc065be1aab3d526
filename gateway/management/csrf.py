"""Cross-site request forgery on the management port (the rule and why:
gateway.pipeline.csrf): a write whose only credential is the session cookie must prove
that keygate's own page sent it.

The port's own origin is the one the client reached it at (through trusted proxies:
their ``X-Forwarded-Proto``/``-Host``) and ``management_public_url``'s. Routes that
never read the cookie as a credential are left alone: login (the key and token are in
the body, which must be JSON, something a form cannot send either) and the one-time
token links (the link is the credential; its page posts a plain form). Logout is not
among them: it ends the session the cookie carries, and without the proof another
origin of the site could sign the administrator out.

The cookie is looked for as the credentials are read (``credential_headers``): over
TLS its ``__Host-`` name alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDictProxy, istr

from ..context import GATEWAY
from ..pipeline.authenticators import carries_session_cookie
from ..pipeline.csrf import SAFE_METHODS, CsrfRefused, forged, origin_of
from .common import credential_headers

# canonical route paths whose handlers never take the session cookie as credentials
COOKIE_FREE_ROUTES = frozenset({
    "/api/v1/auth/login",
    "/api/v1/token-links/{secret}",
})
_AUTHORIZATION = istr("Authorization")


def _bearer(headers: CIMultiDictProxy[str]) -> bool:
    value = headers.get(_AUTHORIZATION)
    if value is None:
        return False
    scheme, _, token = value.strip().partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def cookie_is_the_credential(request: web.Request) -> bool:
    settings = request.app[GATEWAY].settings
    cookie = settings.session_cookie
    if not cookie:
        return False
    headers = credential_headers(request)
    if settings.key_header in headers or settings.token_header in headers or _bearer(headers):
        return False
    return carries_session_cookie(headers, cookie)


def own_origins(request: web.Request) -> set[str]:
    """The origins the management port is reached at: as this request reached it, and
    the configured public URL's."""
    gateway = request.app[GATEWAY]
    scheme, host = request.scheme, request.host
    if gateway.trusted_proxies is not None:
        forwarding = gateway.trusted_proxies.forwarding(
            request.remote or "", request.headers, scheme, host)
        scheme, host = forwarding.proto, forwarding.host
    origins = {origin_of(scheme, host)}
    public = urlsplit(gateway.settings.management_public_url)
    if public.scheme and public.netloc:
        origins.add(origin_of(public.scheme, public.netloc))
    return origins


def refusal(request: web.Request) -> CsrfRefused | None:
    """Why this cookie-authenticated write is refused, or None when it may proceed."""
    origins = own_origins(request)
    return forged(request.headers, origins.__contains__, "management port")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def csrf_protection(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Placed after the error middleware, so that a refusal is the one error shape."""
    if request.method not in SAFE_METHODS and cookie_is_the_credential(request):
        route = request.match_info.route.resource
        if route is None or route.canonical not in COOKIE_FREE_ROUTES:
            refused = refusal(request)
            if refused is not None:
                raise refused
    return await handler(request)
