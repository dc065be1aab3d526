"""The proxy port: route → authenticate → authorize → forward, streaming both ways.

Header hygiene, because the upstream trusts what keygate sends it:

* never forwarded: the credential headers (the token is a secret the upstream has no
  business seeing), hop-by-hop headers (RFC 9110 §7.6.1 and whatever ``Connection``
  names), ``Host`` (the upstream gets its own), and any client-sent header in keygate's
  identity namespace or ``Forwarded``/``X-Forwarded-*``/``X-Request-Id`` — those are
  set by keygate alone, so a client cannot claim to be another key or address; nor the
  other client-address headers CDNs and load balancers use (``True-Client-IP``,
  ``CF-Connecting-IP``, …), which an upstream might believe;
* header names are judged as CGI/WSGI servers read them, ``_`` as ``-``: no underscore
  spelling of a dropped header passes, nor of a framing header (``Content_Length``),
  which such a server could take for the real one and so read another body than the
  one keygate framed;
* added: identity headers (key, owner account, target account, roles),
  ``X-Forwarded-For/-Proto/-Host`` (see ``gateway.forwarded``) and the request id.

Answers carry ``Server: keygate`` and no versions; the upstream's own ``Server`` is
dropped (as nginx's ``proxy_hide_header`` does by default).

``Expect: 100-continue`` is answered as nginx answers it: ``100 Continue`` once the
request is authorized, just before its body is read to be forwarded; a refused request
gets its error and no 100 (the client then never sends the body, so the connection is
closed after the error); HTTP/1.0 requests never get a 100; any other expectation is 417.

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
from time import perf_counter
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDictProxy, istr

from .accesslog import ACCOUNT, APP_KEY, CLIENT, ROUTE
from .context import Gateway
from .errors import BadGateway, BadRequest, GatewayError, GatewayTimeout
from .forwarded import Forwarding, client_over_tls
from .middleware import REQUEST_ID, REQUEST_ID_HEADER, error_response, errors_as_json
from .pipeline import RequestFacts
from .pipeline.authenticators import (
    credentials_over_tls,
    sets_session_cookie,
    without_session_cookie,
)
from .pipeline.identity import carrier_of
from .routes import Route
from .series import ALLOWED, INTERNAL_ERROR, NO_ROUTE
from .upstream import UnforwardableHeader, UpstreamAnswer, UpstreamError, UpstreamPool

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
        # where CDNs and load balancers put the client's address; an upstream that
        # believes one would take the client's word for who it is
        "true-client-ip", "x-client-ip", "cf-connecting-ip", "cf-connecting-ipv6",
        "x-cluster-client-ip", "fastly-client-ip", "x-originating-ip", "client-ip",
        "x-remote-ip", "x-remote-addr", "x-forwarded", "forwarded-for",
        "x-original-forwarded-for", "x-envoy-external-address", "x-azure-clientip",
        "x-azure-socketip", "x-proxyuser-ip", "akamai-client-ip",
    }
)
CLIENT_NEVER_SETS_PREFIXES = ("x-forwarded-",)
# Headers that frame a message or pick its target: their underscore spellings never
# pass either way, as a CGI/WSGI server could read them as the real thing.
FRAMING = frozenset({"content-length", "transfer-encoding", "content-encoding", "host"})
SERVER = (hdrs.SERVER, "keygate")
CHUNK = 64 * 1024
# An upstream answer of known length up to this size is read whole and sent in one
# write (headers and body together); larger or chunked ones stream.
WHOLE_BODY_LIMIT = 64 * 1024


def _canonical(name: str) -> str:
    """Header name as servers may read it: CGI/WSGI turn '_' and '-' alike into '_',
    so ``X-Keygate_Roles`` must be treated as ``X-Keygate-Roles``."""
    return name.lower().replace("_", "-")


def _underscored_framing(name: str) -> bool:
    """``Content_Length`` and the like: a framing header's name spelled with '_'."""
    return "_" in name and _canonical(name) in FRAMING


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
            named = _connection_named(headers) - FRAMING  # the message's own framing stays
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
        session_cookie: str = "",
    ):
        self.pool = pool
        self.session_cookie = session_cookie
        prefix = _canonical(identity_prefix)
        # Content-Length too: the pool writes the framing of the body it sends
        dropped = (HOP_BY_HOP | CLIENT_NEVER_SETS | {"content-length"}
                   | {_canonical(h) for h in credential_headers})

        def from_client(name: str) -> bool:
            canonical = _canonical(name)
            return not (
                canonical in dropped
                or canonical.startswith(prefix)
                or canonical.startswith(CLIENT_NEVER_SETS_PREFIXES)
                or _underscored_framing(name)
            )

        self._from_client = _Verdicts(from_client)
        # The answer's request id and Server are keygate's alone (added in forward).
        from_upstream_dropped = HOP_BY_HOP | {REQUEST_ID_HEADER.lower(), "server"}
        self._from_upstream = _Verdicts(
            lambda name: not (_canonical(name) in from_upstream_dropped
                              or _underscored_framing(name))
        )
        # a histogram child (set by ProxyPort when metrics are on): time to the
        # upstream's answer head, timeouts and failures included
        self.upstream_seconds: Any = None

    def upstream_headers(
        self,
        request: web.BaseRequest,
        decided: list[tuple[str, str]],
        request_id: str,
        forwarding: Forwarding | None = None,
        carrier: str = "",
    ) -> list[tuple[str, str]]:
        """The client's headers that may pass, the ``decided`` ones (the pipeline's
        mutators: identity headers), and the forwarding headers. ``forwarding``: what
        trusted proxies said (None: no proxy is trusted, so keygate's own view of the
        connection is all there is). ``carrier``: what carried a keygate session, which
        the upstream never receives (``bearer``: the Authorization header). The session
        cookie never reaches it, whatever authenticated the request: a browser signed
        in to the admin page adds it to every request to this host by itself, and an
        upstream that received it would hold the administrator's session. The
        request's other cookies pass."""
        headers = self._from_client.keep(request.headers)
        if carrier == "bearer" or (self.session_cookie and hdrs.COOKIE in request.headers):
            headers = self._without_session(headers, carrier)
        if forwarding is None:
            forwarded_for, proto, host = request.remote or "", request.scheme, request.host
        else:
            _, forwarded_for, proto, host = forwarding
        headers += decided
        headers += (
            (hdrs.X_FORWARDED_FOR, forwarded_for),
            (hdrs.X_FORWARDED_PROTO, proto),
            (hdrs.X_FORWARDED_HOST, host),
            (REQUEST_ID_HEADER, request_id),
        )
        return headers

    def _without_session(
        self, headers: list[tuple[str, str]], carrier: str
    ) -> list[tuple[str, str]]:
        if carrier == "bearer":
            headers = [item for item in headers if _canonical(item[0]) != "authorization"]
        if not self.session_cookie:
            return headers
        kept = []
        for name, value in headers:
            if _canonical(name) == "cookie":
                value = without_session_cookie(value, self.session_cookie)
                if not value:
                    continue
            kept.append((name, value))
        return kept

    def response_headers(self, upstream: UpstreamAnswer) -> list[tuple[str, str]]:
        """The upstream's headers that may pass, never a ``Set-Cookie`` of keygate's
        session cookie: the cookie is the host's, so an upstream that set it would
        replace (or plant) the admin page's session in the browser."""
        kept = self._from_upstream.keep(upstream.headers)
        if self.session_cookie and hdrs.SET_COOKIE in upstream.headers:
            kept = [(name, value) for name, value in kept
                    if _canonical(name) != "set-cookie"
                    or not sets_session_cookie(value, self.session_cookie)]
        return kept

    async def forward(
        self,
        request: web.BaseRequest,
        route: Route,
        path: str,
        query: str,
        decided: list[tuple[str, str]],
        request_id: str,
        forwarding: Forwarding | None = None,
        send_continue: bool = False,
        carrier: str = "",
    ) -> web.StreamResponse:
        """Forward, adding the headers the decision's mutators ``decided``; with
        ``send_continue``, tell the client to send its body first (``100 Continue``,
        written straight to the transport as aiohttp's documented expect handlers do:
        nothing of the answer has been written yet)."""
        origin = route.origin
        headers = self.upstream_headers(request, decided, request_id, forwarding, carrier)
        body = request.content if request.body_exists else None
        if send_continue and body is not None and request.transport is not None:
            request.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        timer = self.upstream_seconds
        sent = perf_counter() if timer is not None else 0.0
        try:
            upstream = await self.pool.send(
                origin,
                request.method,
                route.upstream_target(path, query),
                headers,
                body,
                request.content_length,
            )
        except UnforwardableHeader as exc:
            raise BadRequest(str(exc), code="bad_header") from None
        except TimeoutError:  # UpstreamTimeout: connecting, or a silent upstream
            raise _timeout(route) from None
        except UpstreamError as exc:
            log.warning(
                "route %s: upstream %s://%s:%s failed: %r",
                route.name, origin.scheme, origin.host, origin.port, exc,
                extra={"event": "upstream.failed"},
            )
            raise _unreachable(route) from None
        finally:
            if timer is not None:
                timer.observe(perf_counter() - sent)
        async with upstream:
            headers = self.response_headers(upstream)
            headers += ((REQUEST_ID_HEADER, request_id), SERVER)
            length = upstream.content_length
            if length is not None and length <= WHOLE_BODY_LIMIT:
                # Small and of known length: read whole, answer in one write. If the
                # upstream fails meanwhile, nothing has been sent yet: a clean 502.
                try:
                    body = await upstream.read()
                except TimeoutError:
                    raise _timeout(route) from None
                except UpstreamError as exc:
                    log.warning("route %s: upstream body failed: %r", route.name, exc,
                                extra={"event": "upstream.body_failed"})
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
            except (ConnectionResetError, TimeoutError, UpstreamError) as exc:
                # Once headers are out, the only honest signal left is a cut connection;
                # a clean end would pass a truncated body off as complete.
                if not isinstance(exc, ConnectionResetError):  # else: the client left
                    log.warning("route %s: upstream body failed mid-stream: %r", route.name,
                                exc, extra={"event": "upstream.cut_mid_stream"})
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


class ExpectationFailed(GatewayError):
    status = 417
    code = "expectation_failed"
    message = "the only expectation keygate meets is 'Expect: 100-continue'"


def _expects_continue(request: web.BaseRequest, expect: str) -> bool:
    """Whether to send ``100 Continue`` before the body; 417 for another expectation.
    An HTTP/1.0 client never gets a 100 (RFC 9110 §10.1.1: it would not understand)."""
    value = expect.strip().lower()
    if value == "100-continue":
        return request.version >= aiohttp.HttpVersion11
    if value:
        raise ExpectationFailed(
            "unsupported expectation: only 'Expect: 100-continue' is met",
        )
    return False


class ProxyPort:
    """The proxy port's one handler (on aiohttp's low-level server: keygate routes by
    itself, so aiohttp's router and middleware chain would be work done twice)."""

    def __init__(self, gateway: Gateway, forwarder: Forwarder):
        self.gateway = gateway
        self.pipeline = gateway.pipeline
        self.forwarder = forwarder
        self.trusted_proxies = gateway.trusted_proxies
        self.session_cookie = gateway.settings.session_cookie
        # None when metrics are off: then handle() neither times nor counts anything
        self.metrics = gateway.telemetry.requests
        if self.metrics is not None:
            forwarder.upstream_seconds = self.metrics.upstream

    def request_handler(self) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
        """What the server calls for every request: :meth:`handle`, errors in the one
        JSON shape (a partial rather than a method, to spare a coroutine per request)."""
        return functools.partial(errors_as_json, handler=self.handle)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The request's facts to the pipeline; forward what it allows, with the headers
        its mutators decided."""
        metrics = self.metrics
        started = perf_counter() if metrics is not None else 0.0
        route_name = NO_ROUTE  # for counting: how far the request got
        allowed = False
        request_id = request[REQUEST_ID]
        expect = request.headers.get(hdrs.EXPECT)
        try:
            send_continue = expect is not None and _expects_continue(request, expect)
            raw_path, _, query = request.raw_path.partition("?")
            client = peer = request.remote or ""
            forwarding = None
            trusted = self.trusted_proxies
            if trusted is not None:  # else the peer is the client
                forwarding = trusted.forwarding(
                    peer, request.headers, request.scheme, request.host
                )
                client = request[CLIENT] = forwarding.client
            headers = request.headers
            if self.session_cookie and hdrs.COOKIE in headers and client_over_tls(
                    headers, secure=request.secure,
                    trusted_peer=trusted is not None and trusted.trusts(peer)):
                # over TLS the session cookie is its __Host- name alone, as on the
                # management port (a plain-named one may be planted)
                headers = credentials_over_tls(headers, self.session_cookie)
            decision = await self.pipeline.decide(RequestFacts(
                request.method, request.host, raw_path, query, headers, client, request_id,
            ))
            routed = decision.routed
            if routed is not None:
                route_name = request[ROUTE] = routed.route.name  # for the access log
                request[ACCOUNT] = routed.account
            if decision.refusal is not None:
                raise decision.refusal
            assert routed is not None and decision.identity is not None
            allowed = True
            request[APP_KEY] = decision.identity.principal.app_key
            response = await self.forwarder.forward(
                request, routed.route, routed.forward_path, query, decision.headers,
                request_id, forwarding, send_continue, carrier_of(decision.identity),
            )
        except GatewayError as refusal:
            if refusal.app_key is not None:  # proven, then refused: for the access log
                request[APP_KEY] = refusal.app_key
            if metrics is not None:
                metrics.refused(route_name, refusal, allowed, started)
            if not expect:
                raise
            # The client holds its body back for a 100 that a refusal never sends: close
            # the connection, or its next request would be read as that body.
            response = error_response(refusal, request_id)
            response.force_close()
            return response
        except Exception:  # a bug: errors_as_json answers it with a 500
            if metrics is not None:
                metrics.answered(route_name, 500, ALLOWED if allowed else INTERNAL_ERROR,
                                 started)
            raise
        if metrics is not None:
            metrics.answered(route_name, response.status, ALLOWED, started)
        return response
