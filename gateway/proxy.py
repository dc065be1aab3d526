"""The proxy port: route → authenticate → authorize → forward, streaming both ways.

Header hygiene, because the upstream trusts what keygate sends it:

* never forwarded: the credential headers (the token is a secret the upstream has no
  business seeing), hop-by-hop headers (RFC 9110 §7.6.1 and whatever ``Connection``
  names), ``Host`` (the upstream gets its own), and any client-sent header in keygate's
  identity namespace or ``Forwarded``/``X-Forwarded-*``/``X-Request-Id`` — those are
  set by keygate alone, so a client cannot claim to be another key or address;
* added: identity headers (key, owner account, target account, roles),
  ``X-Forwarded-For/-Proto/-Host`` and the request id.

Bodies are never read whole: the request body is handed to the client session as a
stream and the response is copied chunk by chunk. Neither side decompresses
(``auto_decompress=False`` on both), so bytes and ``Content-Encoding`` pass unchanged.
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict

from .accesslog import APP_KEY
from .auth import Identity
from .context import GATEWAY, HTTP_CLIENT
from .errors import BadGateway, GatewayTimeout, NotFound
from .middleware import REQUEST_ID_HEADER, errors_as_json, request_id_of
from .routes import Route, normalise_path

log = logging.getLogger("keygate.proxy")

HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
        "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
    }
)
# Set by keygate alone; a client-sent copy would let it spoof what the upstream trusts.
# (Every X-Forwarded-* header is dropped too, by prefix.)
CLIENT_NEVER_SETS = frozenset(
    {
        "host", "forwarded", "x-real-ip", REQUEST_ID_HEADER.lower(), "expect",
        # keygate authorized the method and path of the request line; an upstream that
        # honours these would run another method or path than the one authorized
        "x-http-method-override", "x-http-method", "x-method-override",
        "x-original-url", "x-rewrite-url", "x-original-method",
    }
)
CLIENT_NEVER_SETS_PREFIXES = ("x-forwarded-",)
CHUNK = 64 * 1024


def host_name(host: str) -> str:
    """Host header without port or trailing dot, lower-cased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _canonical(name: str) -> str:
    """Header name as servers may read it: CGI/WSGI turn '_' and '-' alike into '_',
    so ``X-Keygate_Roles`` must be treated as ``X-Keygate-Roles``."""
    return name.lower().replace("_", "-")


def _connection_named(headers: CIMultiDict[str] | aiohttp.typedefs.LooseHeaders) -> set[str]:
    named: set[str] = set()
    for value in headers.getall(hdrs.CONNECTION, ()):  # type: ignore[union-attr]
        named.update(_canonical(token.strip()) for token in value.split(","))
    return named


class Forwarder:
    def __init__(self, credential_headers: tuple[str, ...], identity_prefix: str):
        self.identity_prefix = _canonical(identity_prefix)
        self.dropped = HOP_BY_HOP | CLIENT_NEVER_SETS | {_canonical(h) for h in credential_headers}
        self.identity_names = {
            "key": identity_prefix + "Key",
            "owner": identity_prefix + "Owner-Account",
            "account": identity_prefix + "Account",
            "roles": identity_prefix + "Roles",
        }

    def upstream_headers(self, request: web.Request, identity: Identity) -> CIMultiDict[str]:
        dropped = self.dropped | _connection_named(request.headers)
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            canonical = _canonical(name)
            if (
                canonical in dropped
                or canonical.startswith(self.identity_prefix)
                or canonical.startswith(CLIENT_NEVER_SETS_PREFIXES)
            ):
                continue
            headers.add(name, value)
        names = self.identity_names
        headers[names["key"]] = identity.principal.app_key
        headers[names["owner"]] = identity.principal.owner
        headers[names["account"]] = identity.account
        headers[names["roles"]] = ",".join(identity.roles)
        headers["X-Forwarded-For"] = request.remote or ""
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = request.host
        headers[REQUEST_ID_HEADER] = request_id_of(request)
        return headers

    @staticmethod
    def response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
        headers = CIMultiDict(upstream.headers)
        dropped = HOP_BY_HOP | _connection_named(upstream.headers)
        for name in [n for n in headers if _canonical(n) in dropped]:
            headers.popall(name, None)
        return headers

    async def forward(
        self, request: web.Request, route: Route, path: str, query: str, identity: Identity
    ) -> web.StreamResponse:
        session = request.app[HTTP_CLIENT]
        url = route.upstream_url(path, query)
        body = request.content if request.body_exists else None
        try:
            upstream = await session.request(
                request.method,
                url,
                headers=self.upstream_headers(request, identity),
                data=body,
                allow_redirects=False,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise GatewayTimeout(
                f"the upstream of route {route.name!r} did not answer in time"
            ) from None
        except aiohttp.ClientError as exc:
            log.warning("route %s: upstream %s failed: %r", route.name, url.origin(), exc)
            raise BadGateway(
                f"the upstream of route {route.name!r} could not be reached; "
                "this is not the client's fault"
            ) from None
        async with upstream:
            response = web.StreamResponse(
                status=upstream.status, reason=upstream.reason,
                headers=self.response_headers(upstream),
            )
            response.headers[REQUEST_ID_HEADER] = request_id_of(request)
            try:
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionResetError, TimeoutError, aiohttp.ClientError) as exc:
                # Once headers are out, the only honest signal left is a cut connection;
                # a clean end would pass a truncated body off as complete.
                if not isinstance(exc, ConnectionResetError):  # else: the client left
                    log.warning("route %s: upstream body failed mid-stream: %r", route.name, exc)
                response.force_close()
                if request.transport is not None:
                    request.transport.close()
        return response


async def entry(request: web.Request) -> web.StreamResponse:
    """The proxy app's only handler: every request, errors in the one JSON shape."""
    return await errors_as_json(request, handle)


async def handle(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    raw_path, _, query = request.raw_path.partition("?")
    path = normalise_path(raw_path)
    host = host_name(request.host)
    route = gateway.routes.match(request.method, host, path)
    if route is None:
        raise NotFound(
            f"no route for {request.method} {path} on host {host!r}", code="no_route"
        )
    account = route.account_for(host, path)
    identity = await gateway.gatekeeper.check(
        request.headers, account, route.resource, route.action_for(request.method),
        request_id_of(request),
    )
    request[APP_KEY] = identity.principal.app_key
    return await request.app[FORWARDER].forward(request, route, path, query, identity)


FORWARDER = web.AppKey("forwarder", Forwarder)
