"""The decision API: nginx, Traefik or Envoy forwards, keygate only decides.

Many teams keep nginx, Traefik or Envoy at their edge and will not put a Python proxy
in every request's path. As with Ory Oathkeeper's decision API, the front proxy asks
keygate about each request before it forwards it, and keygate answers with the same
pipeline the proxy port runs (:meth:`gateway.pipeline.Pipeline.decide`: the path
normalised by the same rule, the same route, account, action, authentication, grant,
authorization and mutators), so both front doors allow and refuse exactly alike.

**Which front proxy asks** is told by the path it calls, which the operator writes into
the front proxy's config, never by a header: every one of them passes the client's own
headers on to the decider (nginx all of them, Traefik all unless told otherwise), so a
form chosen by a header would let a client behind Traefik add ``X-Original-URI:
/public`` and have keygate authorize another path than the one forwarded.

================  ==============================  =====================================
path called       original method, path, host     sent by
================  ==============================  =====================================
``/nginx``        ``X-Original-Method``,          nginx ``auth_request`` (header names
                  ``X-Original-URI``, ``Host``     are settings)
``/traefik``      ``X-Forwarded-Method``,         Traefik ForwardAuth
                  ``-Uri``, ``-Host``
``{prefix}/…``    the request's own method, the   Envoy ``ext_authz`` HTTP service
                  path after ``decision_envoy_    (``path_prefix``)
                  prefix``, ``Host``
================  ==============================  =====================================

Anything else is 404 ``unknown_decision_endpoint``; a form without its original-request
headers is 400 ``missing_original_request``. The credentials and everything else are
read from the request's headers, as the front proxy passed on the client's.

**Who may ask.** Those headers say what a client sent, and only a front proxy may say
it: the peer must be in ``trusted_proxies`` or, when that is empty, on loopback.
Anyone else gets 403 ``untrusted_decision_caller`` before anything but the path it
called is read (the API would otherwise be an oracle for who a pair of credentials
belongs to, and a way around the failure budgets; the path comes first so that the
nginx form's refusals, this one included, are all in the shape nginx can pass on).
The client's address, for the budgets and the access log, is walked out of
``X-Forwarded-For`` as :class:`gateway.forwarded.TrustedProxies` walks it (loopback
counting as trusted by default for this port), else taken from ``X-Real-IP``, else the
peer.

**The answer.** Allowed: 200, no body, the identity headers to set upstream (nginx
``auth_request_set``, Traefik ``authResponseHeaders``, Envoy
``allowed_upstream_headers``). Refused: the error in the one JSON shape and its status
(400, 401, 403, 404, 429 with ``Retry-After``, 503), as the proxy port would answer.

**nginx's two limits.** ``auth_request`` understands 2xx, 401 and 403 only (any other
status becomes a 500) and throws the subrequest's body away. So the nginx form answers
a refusal as 401 (for 401) or 403 (for every other status), with the real status in
``X-Keygate-Status`` and the JSON body in ``X-Keygate-Error``; the shipped nginx config
copies both and answers the client with that status and body. And nginx forwards the
path keygate authorized only if it is told it: the nginx form's 200 carries the
normalised path in ``X-Keygate-Path`` (prefix ``identity_header_prefix``), which the
shipped config forwards (``proxy_pass http://backend$keygate_path$is_args$args``).

**Traefik and Envoy forward the path themselves**, after their own normalisation
(Traefik's path sanitising, Envoy's ``normalize_path``/``merge_slashes``), which is not
keygate's rule. So for them keygate authorizes only a path already in its normal form
(up to the case of ``%XX`` escapes): any other is 400 ``path_not_normal``, so that what
they forward is exactly what was authorized.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable
from time import perf_counter

from aiohttp import web
from multidict import CIMultiDictProxy, istr

from .accesslog import ACCOUNT, APP_KEY, CLIENT, ORIGINAL_REQUEST, ROUTE
from .context import Gateway
from .errors import BadRequest, ConfigError, Forbidden, GatewayError, NotFound
from .forwarded import TrustedProxies, parse_address
from .middleware import REQUEST_ID, error_response, errors_as_json
from .pipeline import Decision, RequestFacts
from .pipeline.authenticators import without_session_cookie
from .routes import normalise_path
from .series import ALLOWED, INTERNAL_ERROR, NO_ROUTE
from .settings import Settings

NGINX_PATH = "/nginx"
TRAEFIK_PATH = "/traefik"
# a trusted proxy by default for this port, when trusted_proxies is empty
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# Clients found by the X-Forwarded-For walk, remembered per (peer, header value): a
# front proxy sends the same few (nginx: the client's address alone), and the walk was
# a fifth of the handler's own instructions (bench/run.py --instructions). Bounded,
# since clients choose the values: long ones, and several header lines, are walked
# every time.
CLIENT_MEMORY = 4096
CLIENT_MEMORY_ENTRY = 256

AUTHORIZATION = istr("Authorization")
COOKIE = istr("Cookie")
ENVOY_REMOVE = istr("x-envoy-auth-headers-to-remove")
FORWARDED_METHOD = istr("X-Forwarded-Method")
FORWARDED_URI = istr("X-Forwarded-Uri")
FORWARDED_HOST = istr("X-Forwarded-Host")
FORWARDED_FOR = istr("X-Forwarded-For")
REAL_IP = istr("X-Real-IP")
# RFC 9110 §5.6.2 token; methods longer than this are nobody's
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")

NGINX, TRAEFIK, ENVOY = "nginx", "traefik", "envoy"


class UntrustedCaller(Forbidden):
    code = "untrusted_decision_caller"
    message = (
        "only a front proxy listed in trusted_proxies (loopback when that is empty) may "
        "ask the decision API"
    )


class UnknownEndpoint(NotFound):
    code = "unknown_decision_endpoint"


class MissingOriginal(BadRequest):
    code = "missing_original_request"


def check_settings(settings: Settings) -> str:
    """``decision_envoy_prefix`` as used: a path of its own that cannot be confused
    with the other forms' paths (a ConfigError otherwise, before anything listens)."""
    prefix = settings.decision_envoy_prefix
    problem = None
    if not prefix.startswith("/") or prefix == "/":
        problem = "must be a path such as /envoy (not '/': every path would be Envoy's)"
    elif prefix.endswith("/") or "?" in prefix or "%" in prefix or "//" in prefix:
        problem = "must be a plain path without a trailing '/', '?', '%' or '//'"
    elif prefix in (NGINX_PATH, TRAEFIK_PATH) or not prefix.isascii():
        problem = f"must not be {NGINX_PATH} or {TRAEFIK_PATH} (the other forms' paths)"
    if problem is not None:
        raise ConfigError(f"setting decision_envoy_prefix: {problem}; got {prefix!r}")
    return prefix


def header_safe(body: bytes) -> str:
    """The JSON error body as a header value nginx can copy: one line of printable
    ASCII (non-ASCII and control characters as JSON escapes, so it is still the same
    JSON)."""
    text = body.decode()
    if text.isascii() and text.isprintable():
        return text
    return json.dumps(json.loads(text), ensure_ascii=True, separators=(",", ":")).replace(
        "\x7f", "\\u007f")


class DecisionPort:
    """The decision API's one handler (on aiohttp's low-level server, as the proxy
    port: the form is found by one comparison of the path, so a router would only
    add work per request)."""

    def __init__(self, gateway: Gateway):
        settings = gateway.settings
        self.pipeline = gateway.pipeline
        self.trusted = gateway.trusted_proxies or TrustedProxies(LOOPBACK)
        self.clients: dict[tuple[str, str], str] = {}
        self.envoy_prefix = check_settings(settings)
        self.envoy_start = self.envoy_prefix + "/"
        self.method_header = istr(settings.decision_original_method_header)
        self.uri_header = istr(settings.decision_original_uri_header)
        prefix = settings.identity_header_prefix
        self.path_header = istr(prefix + "Path")
        self.status_header = istr(prefix + "Status")
        self.authorization_header = istr(prefix + "Authorization")
        self.cookie_header = istr(prefix + "Cookie")
        self.session_cookie = settings.session_cookie
        self.error_header = istr(prefix + "Error")
        # None when metrics are off: then handle() neither times nor counts anything
        self.metrics = gateway.telemetry.decision_requests()

    def request_handler(self) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
        """What the server calls for every request: :meth:`handle`, errors in the one
        JSON shape."""
        return functools.partial(errors_as_json, handler=self.handle)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        metrics = self.metrics
        started = perf_counter() if metrics is not None else 0.0
        route_name = NO_ROUTE
        form: str | None = None
        try:
            # first, so that every refusal on the nginx form is one nginx can pass on
            form = self.form_of(request.raw_path)
            peer = request.remote or ""
            hop = self.trusted.hop(peer)
            if hop is None or not hop[1]:
                raise UntrustedCaller()
            facts = self.facts(form, request)
            decision = await self.pipeline.decide(facts)
            routed = decision.routed
            if routed is not None:
                route_name = request[ROUTE] = routed.route.name
                request[ACCOUNT] = routed.account
            if decision.refusal is not None:
                raise decision.refusal
            assert routed is not None and decision.identity is not None
            if form != NGINX and facts.raw_path != routed.forward_path:
                self.require_normal(facts.raw_path)
            request[APP_KEY] = decision.identity.principal.app_key
            response = self.allowed(form, decision, request.headers)
        except GatewayError as refusal:
            if metrics is not None:
                metrics.refused(route_name, refusal, False, started)
            return self.refused(form, refusal, request[REQUEST_ID])
        except Exception:  # a bug: errors_as_json answers it with a 500
            if metrics is not None:
                metrics.answered(route_name, 500, INTERNAL_ERROR, started)
            raise
        if metrics is not None:
            metrics.answered(route_name, 200, ALLOWED, started)
        return response

    def form_of(self, target: str) -> str:
        """Which front proxy asks, by the path it calls (the operator wrote it into
        that proxy's config; no header the client could add decides it)."""
        if target.startswith(self.envoy_start):
            return ENVOY
        called = target.partition("?")[0]
        if called == NGINX_PATH:
            return NGINX
        if called == TRAEFIK_PATH:
            return TRAEFIK
        raise UnknownEndpoint(
            f"the decision API answers {NGINX_PATH} (nginx auth_request), "
            f"{TRAEFIK_PATH} (Traefik ForwardAuth) and {self.envoy_start}… (Envoy "
            "ext_authz)"
        )

    def facts(self, form: str, request: web.BaseRequest) -> RequestFacts:
        """The original request's facts as the front proxy reports them."""
        headers = request.headers
        if form == ENVOY:
            method, host = request.method, request.host
            original = request.raw_path[len(self.envoy_prefix):]
        else:
            if form == NGINX:
                host = request.host
                method = self.original(headers, self.method_header)
                original = self.original(headers, self.uri_header)
            else:
                method = self.original(headers, FORWARDED_METHOD)
                original = self.original(headers, FORWARDED_URI)
                host = self.original(headers, FORWARDED_HOST)
            if _METHOD.fullmatch(method) is None:
                raise BadRequest("the original request's method is not an HTTP method",
                                 code="bad_method")
        if not original.startswith("/"):
            raise BadRequest("the original request's path must start with '/'",
                             code="bad_path")
        raw_path, _, query = original.partition("?")
        client = self.client(request.remote or "", headers)
        request[CLIENT] = client
        request[ORIGINAL_REQUEST] = (method, raw_path)
        return RequestFacts(method, host, raw_path, query, headers, client,
                            request[REQUEST_ID])

    @staticmethod
    def original(headers: CIMultiDictProxy[str], name: istr) -> str:
        value = headers.get(name)
        if not value:
            raise MissingOriginal(
                f"this form of decision request must carry the original request's {name} "
                "header; check the front proxy's configuration"
            )
        return value

    def client(self, peer: str, headers: CIMultiDictProxy[str]) -> str:
        """The client's address (the peer is a trusted proxy): the ``X-Forwarded-For``
        walk, else a well-formed ``X-Real-IP``, else the peer."""
        forwarded_for = headers.getall(FORWARDED_FOR, ())
        if forwarded_for:
            key = (peer, forwarded_for[0])
            client = self.clients.get(key) if len(forwarded_for) == 1 else None
            if client is None:
                client = self.trusted.client_address(peer, forwarded_for)[0]
                if len(forwarded_for) == 1 and len(key[1]) <= CLIENT_MEMORY_ENTRY:
                    if len(self.clients) >= CLIENT_MEMORY:
                        self.clients.clear()
                    self.clients[key] = client
            return client
        real = headers.get(REAL_IP)
        if real is not None:
            address = parse_address(real)
            if address is not None:
                return str(address)
        return peer

    @staticmethod
    def require_normal(raw_path: str) -> None:
        """Behind Traefik or Envoy, which forward the path as they read it: refuse a
        path that keygate's normal form would change, but for the case of escapes."""
        normal = normalise_path(raw_path)
        if normal != raw_path and normal.upper() != raw_path.upper():
            raise BadRequest(
                "the original path is not in its normal form (dot segments, '//' or "
                "escapes of plain characters); the front proxy would forward it as sent, "
                "not as keygate authorized it",
                code="path_not_normal",
            )

    def allowed(
        self, form: str, decision: Decision, sent: CIMultiDictProxy[str]
    ) -> web.Response:
        headers = decision.headers
        if form == NGINX:
            assert decision.routed is not None
            headers = [*headers, (self.path_header, decision.routed.forward_path)]
        assert decision.identity is not None
        carrier = decision.identity.carrier
        if carrier or AUTHORIZATION in sent or COOKIE in sent:
            headers = [*headers, *self.credential_headers(form, carrier, sent)]
        return web.Response(headers=headers)

    def credential_headers(
        self, form: str, carrier: str, sent: CIMultiDictProxy[str]
    ) -> list[tuple[str, str]]:
        """What the front proxy forwards as ``Authorization`` and ``Cookie``: as the client
        sent them, but never keygate's session (when it carried the credentials).

        nginx cannot drop a header by condition, so it is told the values to forward
        (``X-Keygate-Authorization``, ``X-Keygate-Cookie``; absent: forward none).
        Traefik copies the ``authResponseHeaders`` it lists from this answer, removing
        the request's own first: the values to forward, or nothing. Envoy overwrites
        with ``allowed_upstream_headers`` and removes what
        ``x-envoy-auth-headers-to-remove`` names."""
        authorization = "" if carrier == "bearer" else ",".join(sent.getall(AUTHORIZATION, ()))
        cookie = "; ".join(sent.getall(COOKIE, ()))
        if carrier == "cookie":
            cookie = without_session_cookie(cookie, self.session_cookie)
        if form == NGINX:
            names = (self.authorization_header, self.cookie_header)
        else:
            names = (AUTHORIZATION, COOKIE)
        answer = [(name, value) for name, value in zip(names, (authorization, cookie),
                                                      strict=True) if value]
        if form == ENVOY:
            removed = [name.lower() for name, value in zip(
                (AUTHORIZATION, COOKIE), (authorization, cookie), strict=True)
                if not value and name in sent]
            if removed:
                answer.append((ENVOY_REMOVE, ",".join(removed)))
        return answer

    def refused(self, form: str | None, refusal: GatewayError, request_id: str) -> web.Response:
        response = error_response(refusal, request_id)
        if form == NGINX:
            # auth_request passes on 401 and 403 only, and never the body
            if refusal.status not in (401, 403):
                response.set_status(403)
            response.headers[self.status_header] = str(refusal.status)
            response.headers[self.error_header] = header_safe(refusal.body(request_id))
        return response
