"""Sessions: ``POST /api/v1/auth/login`` trades a key and token for a short-lived session
JWT, ``POST /api/v1/auth/logout`` ends the session and clears its cookie, and
``GET /.well-known/jwks.json`` publishes the keys that verify keygate's tokens.

Login authenticates exactly as the proxy does (same 401 for every wrong pair, the same
failure budgets, so it is no faster way to guess tokens), in the key's own account.
The session is then as good as the pair until it expires, and no better: the
authenticator checks the key's state on every request (see
``gateway.pipeline.authenticators.BearerAuthenticator``).
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from aiohttp import web

from ..accesslog import APP_KEY
from ..context import GATEWAY
from ..errors import BadRequest
from ..pipeline.authenticators import (
    HOST_PREFIX,
    invalid_credentials,
    session_cookie_names,
    session_tokens,
)
from ..ratelimit import attempt
from ..sessions.keys import JWKS_MAX_AGE
from ..sessions.tokens import ExpiredSession, InvalidSession
from ..views import iso
from .common import (
    cached_response,
    client_address,
    credential_headers,
    json_response,
    reached_over_tls,
    strong_etag,
)
from .operations import Operations
from .schema import LOGIN_EXAMPLES, Jwks, Login, Session

operations = Operations("sessions")


def _set_cookie(settings: Any, describe: Any, required: bool) -> dict[str, Any]:
    """The OpenAPI Set-Cookie header of the session cookie, ``describe(name)`` saying
    what it holds; none when cookies are off (`cookie: true` is then refused)."""
    name = settings.session_cookie
    if not name:
        return {}
    return {"Set-Cookie": {"description": describe(name), "required": required,
                           "schema": {"type": "string"}}}


def _session_set_cookie(settings: Any) -> dict[str, Any]:
    """Login's Set-Cookie, under the name the settings give."""
    return _set_cookie(settings, lambda name: (
        f"With `cookie: true`: the session, `{name}=<session JWT>; HttpOnly; "
        f"Max-Age=<session_ttl>; Path=/; SameSite=Strict` (named `{HOST_PREFIX}{name}`, "
        "with `Secure`, when login came over TLS). Not sent without `cookie`."), False)


def _session_clear_cookie(settings: Any) -> dict[str, Any]:
    """Logout's Set-Cookie: both names of the session cookie, cleared."""
    return _set_cookie(settings, lambda name: (
        f"Clears the session cookie: one header for each of its names, `{HOST_PREFIX}{name}` "
        f"and `{name}`, empty and expired (`Max-Age=0`, `Path=/`, `HttpOnly`, "
        "`SameSite=Strict`)."), True)


def _credential(value: str, name: str, limit: int) -> str:
    # the limit is a setting (max_credential_length), so it is checked here, not in
    # the model
    if len(value) > limit or not value.isascii() or not value.isprintable():
        raise BadRequest(f"{name} is longer than {limit} characters or not printable ASCII",
                         code="malformed_credentials")
    return value


@operations.post("/api/v1/auth/login", summary="Trade a key and its token for a session",
                 body=Login, responses={200: Session},
                 errors={400: ("malformed_credentials", "cookies_off"),
                         401: ("invalid_credentials", "key_inactive"),
                         429: ("too_many_failures",), 503: ("store_unavailable",)},
                 examples=LOGIN_EXAMPLES, response_headers={200: _session_set_cookie})
async def login(request: web.Request, body: Login) -> web.Response:
    """Authenticates exactly as the proxy does (the same 401 for every wrong pair, the
    same failure budgets). The session is as good as the pair until it expires, and no
    better: it stops working when the key is deactivated or deleted, or when the token
    it came from does. With `cookie: true` the session is set as the HttpOnly cookie
    and left out of the body (`expires`, `appKey` and `account` stay); without it the
    body carries it as `token`, for `Authorization: Bearer`."""
    gateway = request.app[GATEWAY]
    settings = gateway.settings
    limit = settings.max_credential_length
    app_key = _credential(body.app_key, "appKey", limit)
    token = _credential(body.app_token, "appToken", limit)
    cookie = body.cookie
    # the key's own account (a key that is not one of this deployment's names no
    # account, and fails as an unknown key does, budgets included)
    account = gateway.fmt.key_account(app_key) or "unknown"
    authenticated = await gateway.pipeline.authenticate(
        {settings.key_header: app_key, settings.token_header: token}, account,
        client_address(request),
    )
    principal = authenticated.principal
    request[APP_KEY] = principal.app_key
    found = await gateway.store.auth_lookup(principal.app_key, principal.owner)
    # the stored digest the token matched (the current token, or during a renewal the
    # old or the new one): the session lives as long as that token does
    digest = next((d for d in found.token_digests if gateway.hasher.matches(token, [d])),
                  None)
    if digest is None:  # the token was replaced between the two reads: as if wrong
        raise invalid_credentials()
    session, expires = await gateway.sessions.issue(principal.app_key, principal.owner,
                                                    digest, found.ended_sessions.until)
    answer = {"token": session, "expires": iso(expires * 1000),
              "appKey": principal.app_key, "account": principal.owner}
    if cookie:
        # the cookie carries the session, HttpOnly: the body does not, so no script of
        # the page that asked for the cookie can read it from the answer either
        del answer["token"]
    response = json_response(answer)
    if cookie:
        if not settings.session_cookie:
            raise BadRequest("session cookies are off (setting session_cookie is empty)",
                             code="cookies_off")
        # over TLS the cookie is __Host-: no other host of the site can replace or
        # shadow it (see session_cookie_names), and only that name is read
        secure = reached_over_tls(request)
        response.set_cookie(
            (HOST_PREFIX if secure else "") + settings.session_cookie, session,
            max_age=settings.session_ttl, path="/", httponly=True, samesite="Strict",
            secure=secure,
        )
    response.headers["Cache-Control"] = "no-store"
    return response


@operations.post("/api/v1/auth/logout", summary="End the session and clear its cookie",
                 responses={204: None}, response_headers={204: _session_clear_cookie},
                 errors={403: ("csrf_refused",), 429: ("too_many_failures",),
                         503: ("store_unavailable",)})
async def logout(request: web.Request) -> web.Response:
    """Ends the session the request carries (the Bearer token, else the session cookie,
    each one the browser sent): every instance refuses it from its next request, on
    every port, while the key's other sessions go on. A key keeps the last 64 sessions
    it ended by name; one more ends every session issued until then. Then clears the
    session cookie (both its names): 204 whether or not a valid session came with the
    request, or 503 with the cookie kept when the store could not record the end (the
    session lives on: sign out again). Renew the key's token (`deleteOld: now`) to end
    every session made from it for good; deactivating the key stops them only while it
    stays inactive (activated again, they work).

    A sign-out that only the session cookie carries is a write like any other: without
    the CSRF proof (`X-Keygate-CSRF: 1`, from the port's own origin) it is refused
    with 403 `csrf_refused` and the session goes on, so another origin of the site
    cannot sign the administrator out. A Bearer sign-out needs no proof. Over TLS only
    the cookie's `__Host-` name is read.

    A session that does not verify costs a signature check, as on every port, so it
    counts against the client's failure budget as there: a client that spent it gets
    429 (the cookie kept) before any check, and cannot make keygate check signatures
    without end here either."""
    gateway = request.app[GATEWAY]
    name = gateway.settings.session_cookie
    presented = session_tokens(credential_headers(request), name)
    # only a request that presents a session is checked under the address's budget
    client = client_address(request) if presented else ""
    async with attempt(gateway.pipeline.limiter, client) as budgeted:
        forged = False
        for token, _ in presented:
            try:
                claims = await gateway.sessions.verify(token)
            except ExpiredSession:
                claims = None  # nothing to end
            except InvalidSession:
                claims, forged = None, True  # forged, or signed by a key long retired
            if claims is not None:
                request[APP_KEY] = claims.app_key
                # named until no instance accepts it: its expiry and the leeway after it
                accepted = claims.expires + math.ceil(gateway.sessions.leeway)
                await gateway.store.end_session(claims.app_key, claims.jti, claims.issued,
                                                accepted, int(gateway.sessions.clock()))
        if forged:  # counted; what was ended stays ended, cookie cleared
            await budgeted.failed()
    response = web.Response(status=204)
    for cookie in session_cookie_names(name):
        secure = cookie.startswith(HOST_PREFIX) or reached_over_tls(request)
        response.del_cookie(cookie, path="/", secure=secure, httponly=True,
                            samesite="Strict")
    return response


def _jwks(operation_id: str, path: str) -> None:
    @operations.get(path, summary="The keys that verify keygate's tokens",
                    operation_id=operation_id, responses={200: Jwks, 304: None},
                    errors={503: ("store_unavailable",)}, head=True, cached=True)
    async def jwks(request: web.Request) -> web.Response:
        """For upstreams verifying identity tokens, and for anyone verifying a session
        token. Cacheable for a few minutes; a rotated key stays listed while tokens it
        signed may live. The `ETag` is a hash of the key set: revalidate with
        `If-None-Match` (304 while the keys are the same). HEAD answers with the
        headers alone."""
        ring = await request.app[GATEWAY].sessions.ready()
        body = orjson.dumps(ring.jwks())
        return cached_response(request, body, strong_etag(body), JWKS_MAX_AGE)


# where verifiers look for it by convention, and under /api/v1 with the rest of the API
_jwks("jwks", "/.well-known/jwks.json")
_jwks("jwksV1", "/api/v1/.well-known/jwks.json")

