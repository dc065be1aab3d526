"""The proxy port: route → authenticate → authorize → forward, streaming both ways.

Header hygiene, because the upstream trusts what keygate sends it:

* never forwarded: the credential headers (the token is a secret the upstream has no
  business seeing), hop-by-hop headers (RFC 9110 §7.6.1 and whatever ``Connection``
  names), ``Host`` (the upstream gets its own), and any client-sent header in keygate's
  identity namespace or ``Forwarded``/``X-Forwarded-*``/``X-Request-Id`` — those are
  set by keygate alone, so a client cannot claim to be another key or address;
* added: identity headers (key, owner account, target account, roles),
  ``X-Forwarded-For/-Proto/-Host`` and the request id.

Request bodies are never read whole: they are handed to the upstream pool
(``gateway.upstream``) as a stream. A response body is copied chunk by chunk, unless
the upstream announced a small one (``WHOLE_BODY_LIMIT``), which is read whole so that
headers and body leave in one write, as nginx buffers small responses. Neither side
decompresses (``auto_decompress=False`` on both), so bytes and ``Content-Encoding`` pass
unchanged.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDictProxy, istr

from .accesslog import APP_KEY
from .auth import Identity
from .context import Gateway
from .errors import BadGateway, BadRequest, GatewayTimeout, NotFound
from .middleware import REQUEST_ID, REQUEST_ID_HEADER, errors_as_json
from .routes import Route, normalise_path
from .upstream import UnforwardableHeader, UpstreamAnswer, UpstreamPool

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
# An upstream answer of known length up to this size is read whole and sent in one
# write (headers and body together); larger or chunked ones stream.
WHOLE_BODY_LIMIT = 64 * 1024


@functools.lru_cache(maxsize=256)
def host_name(host: str) -> str:
    """Host header without port or trailing dot, lower-cased (memoised: clients send a
    handful of distinct hosts, and this runs on every request)."""
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


@functools.lru_cache(maxsize=256)
def _named_by_connection(value: str) -> frozenset[str]:
    return frozenset(_canonical(token.strip()) for token in value.split(","))


def _connection_named(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """Header names that ``Connection`` makes hop-by-hop for this one message."""
    return _named_by_connection(",".join(headers.getall(hdrs.CONNECTION, ())))


_LONGEST_REMEMBERED_NAME = 128


class _Verdicts(dict[str, istr | None]):
    """Per header name (as sent, any case): the name to pass it on under, or None to
    drop it. Decided once per name rather than once per request; bounded, since clients
    choose the names. The name kept is an ``istr``, whose case-folded form multidict
    keeps, so the copies aiohttp makes of the headers on the way out need not fold
    every name again."""

    def __init__(self, passes: Callable[[str], bool], size: int = 4096):
        super().__init__()
        self.passes = passes
        self.size = size

    def __missing__(self, name: str) -> istr | None:
        verdict = istr(name) if self.passes(name) else None
        if len(name) <= _LONGEST_REMEMBERED_NAME:  # so the memory bound is small too
            if len(self) >= self.size:
                self.clear()
            self[name] = verdict
        return verdict

    def keep(self, headers: CIMultiDictProxy[str]) -> list[tuple[str, str]]:
        kept = [(kept_name, value) for name, value in headers.items()
                if (kept_name := self[name]) is not None]
        if hdrs.CONNECTION in headers:
            named = _connection_named(headers)
            if not named <= HOP_BY_HOP:
                kept = [item for item in kept if _canonical(item[0]) not in named]
        return kept


class Forwarder:
    """Sends an authorized request upstream and its answer back, with header hygiene."""

    def __init__(
        self,
        pool: UpstreamPool,
        credential_headers: tuple[str, ...],
        identity_prefix: str,
    ):
        self.pool = pool
        prefix = _canonical(identity_prefix)
        dropped = HOP_BY_HOP | CLIENT_NEVER_SETS | {_canonical(h) for h in credential_headers}

        def from_client(name: str) -> bool:
            canonical = _canonical(name)
            return not (
                canonical in dropped
                or canonical.startswith(prefix)
                or canonical.startswith(CLIENT_NEVER_SETS_PREFIXES)
            )

        self._from_client = _Verdicts(from_client)
        # The answer's request id is keygate's alone (added in forward), as on the way in.
        from_upstream_dropped = HOP_BY_HOP | {REQUEST_ID_HEADER.lower()}
        self._from_upstream = _Verdicts(
            lambda name: _canonical(name) not in from_upstream_dropped
        )
        self._identity_names = (
            istr(identity_prefix + "Key"),
            istr(identity_prefix + "Owner-Account"),
            istr(identity_prefix + "Account"),
            istr(identity_prefix + "Roles"),
        )

    def upstream_headers(
        self, request: web.BaseRequest, identity: Identity, request_id: str
    ) -> list[tuple[str, str]]:
        headers = self._from_client.keep(request.headers)
        key, owner, account, roles = self._identity_names
        headers += (
            (key, identity.principal.app_key),
            (owner, identity.principal.owner),
            (account, identity.account),
            (roles, ",".join(identity.roles)),
            (hdrs.X_FORWARDED_FOR, request.remote or ""),
            (hdrs.X_FORWARDED_PROTO, request.scheme),
            (hdrs.X_FORWARDED_HOST, request.host),
            (REQUEST_ID_HEADER, request_id),
        )
        return headers

    def response_headers(self, upstream: UpstreamAnswer) -> list[tuple[str, str]]:
        return self._from_upstream.keep(upstream.headers)

    async def forward(
        self,
        request: web.BaseRequest,
        route: Route,
        path: str,
        query: str,
        identity: Identity,
        request_id: str,
    ) -> web.StreamResponse:
        origin = route.origin
        try:
            upstream = await self.pool.send(
                origin,
                request.method,
                route.upstream_target(path, query),
                self.upstream_headers(request, identity, request_id),
                request.content if request.body_exists else None,
                request.content_length,
            )
        except UnforwardableHeader as exc:
            raise BadRequest(str(exc), code="bad_header") from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise _timeout(route) from None
        except aiohttp.ClientError as exc:
            log.warning(
                "route %s: upstream %s://%s:%s failed: %r",
                route.name, origin.scheme, origin.host, origin.port, exc,
            )
            raise _unreachable(route) from None
        async with upstream:
            headers = self.response_headers(upstream)
            headers.append((REQUEST_ID_HEADER, request_id))
            length = upstream.content_length
            if length is not None and length <= WHOLE_BODY_LIMIT:
                # Small and of known length: read whole, answer in one write. If the
                # upstream fails meanwhile, nothing has been sent yet: a clean 502.
                try:
                    body = await upstream.read()
                except (TimeoutError, aiohttp.ServerTimeoutError):
                    raise _timeout(route) from None
                except aiohttp.ClientError as exc:
                    log.warning("route %s: upstream body failed: %r", route.name, exc)
                    raise _unreachable(route) from None
                return web.Response(
                    status=upstream.status, reason=upstream.reason, headers=headers, body=body
                )
            response = web.StreamResponse(
                status=upstream.status, reason=upstream.reason, headers=headers
            )
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


def _timeout(route: Route) -> GatewayTimeout:
    return GatewayTimeout(f"the upstream of route {route.name!r} did not answer in time")


def _unreachable(route: Route) -> BadGateway:
    return BadGateway(
        f"the upstream of route {route.name!r} could not be reached; "
        "this is not the client's fault"
    )


class ProxyPort:
    """The proxy port's one handler (on aiohttp's low-level server: keygate routes by
    itself, so aiohttp's router and middleware chain would be work done twice)."""

    def __init__(self, gateway: Gateway, forwarder: Forwarder):
        self.gateway = gateway
        self.forwarder = forwarder

    def request_handler(self) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
        """What the server calls for every request: :meth:`handle`, errors in the one
        JSON shape (a partial rather than a method, to spare a coroutine per request)."""
        return functools.partial(errors_as_json, handler=self.handle)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        gateway = self.gateway
        request_id = request[REQUEST_ID]
        raw_path, _, query = request.raw_path.partition("?")
        path = normalise_path(raw_path)
        host = host_name(request.host)
        method = request.method
        route = gateway.routes.match(method, host, path)
        if route is None:
            raise NotFound(f"no route for {method} {path} on host {host!r}", code="no_route")
        account = route.account_for(host, path)
        identity = await gateway.gatekeeper.check(
            request.headers, account, route.resource, route.action_for(method), request_id
        )
        request[APP_KEY] = identity.principal.app_key
        return await self.forwarder.forward(request, route, path, query, identity, request_id)
