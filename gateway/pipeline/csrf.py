"""Cross-site request forgery: a write whose only credential is keygate's session
cookie must prove that a page of the origin it was sent to sent it.

A browser attaches cookies to requests that other sites make it send: a form on another
page, or a ``fetch`` from another origin. ``SameSite=Strict`` stops that only across
*sites*; another port or another subdomain of the same site (``127.0.0.1:9000``,
``other.example.com``) is the same site, its forms still carry the cookie, and the
cookie (host-only, ``Path=/``) reaches every port of the host: the management port, the
proxy port and, through the front proxy, the decision API. So an unsafe request (any
method but GET, HEAD and OPTIONS, which routes read as ``read``: POST, PUT, PATCH,
DELETE, and every other method a route may pass on, such as ``PURGE`` or WebDAV's,
which a page of another origin may send once a preflight is granted, and front proxies
often answer preflights by themselves) that the session cookie authenticated is refused
with ``403 csrf_refused`` unless

* it carries ``X-Keygate-CSRF: 1``: a form cannot send a header, and a script of
  another origin cannot either without a CORS preflight;
* its ``Origin``, when present, is the origin it was sent to (``Origin: null`` is not);
* its ``Sec-Fetch-Site``, when present, is ``same-origin`` (so a preflight that an
  upstream behind keygate grants to another origin does not help it either).

Requests that carry the key/token headers or ``Authorization: Bearer`` are not the
cookie's: a browser never adds those by itself. Safe methods change nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from ..errors import Forbidden
from ..routes import READ_METHODS

CSRF_HEADER = "X-Keygate-CSRF"
CSRF_VALUE = "1"
# the methods that need no proof: those routes read as "read"
SAFE_METHODS = READ_METHODS
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


class CsrfRefused(Forbidden):
    code = "csrf_refused"


def origin_of(scheme: str, host: str) -> str:
    """An origin as browsers write it in ``Origin``: lower case, no default port."""
    scheme, host = scheme.lower(), host.lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default and host.endswith(default):
        host = host[: -len(default)]
    return f"{scheme}://{host}"


def forged(
    headers: Mapping[str, str], is_own_origin: Callable[[str], bool], where: str
) -> CsrfRefused | None:
    """Why a write authenticated by the session cookie is refused, or None when it
    proves it was sent by a page of its own origin. ``headers``: case-insensitive;
    ``where``: the port's name, for the messages."""
    if headers.get(CSRF_HEADER) != CSRF_VALUE:
        return CsrfRefused(
            f"a write authenticated by the session cookie must carry the header "
            f"{CSRF_HEADER}: {CSRF_VALUE} (keygate's admin page sends it; other clients "
            f"authenticate with the key and token headers or Authorization: Bearer)")
    origin = headers.get("Origin")
    if origin is not None and not is_own_origin(origin.lower()):
        return CsrfRefused(
            f"a write authenticated by the session cookie must come from the {where}'s "
            "own origin; this one came from another page")
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        return CsrfRefused(
            f"a write authenticated by the session cookie must come from the {where}'s "
            "own origin; the browser says this one was sent by another site or page")
    return None


def forged_request(method: str, headers: Mapping[str, str], host: str) -> CsrfRefused | None:
    """:func:`forged` for a request to a proxied route (the proxy port, or the decision
    API for a front proxy), whose own origin is the host it was sent to: the scheme is
    the front's business, so the origin's host and port are what is compared."""
    if method in SAFE_METHODS:
        return None
    host = host.lower()

    def is_own(origin: str) -> bool:
        try:
            parts = urlsplit(origin)
        except ValueError:  # e.g. an unclosed IPv6 bracket
            return False
        if not parts.scheme or not parts.netloc:
            return False  # "null", or not an origin at all
        return parts.netloc == host or origin == origin_of(parts.scheme, host)

    return forged(headers, is_own, "route")
