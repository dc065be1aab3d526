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
read from the request's headers, as the front proxy passed on the client's. When its
``X-Forwarded-Proto`` says ``https`` (Traefik writes it; the shipped nginx config sends
``$scheme``, the shipped Envoy config passes on the one Envoy writes), the session
cookie is read by its ``__Host-`` name alone, as on keygate's own ports over TLS; a
front proxy that does not say the scheme leaves both names read, as before.

**Who may ask.** Those headers say what a client sent, and only a front proxy may say
it: the peer must be in ``trusted_proxies`` or, when that is empty, on loopback.
Anyone else gets 403 ``untrusted_decision_caller`` before anything but the path it
called is read (the API would otherwise be an oracle for who a pair of credentials
belongs to, and a way around the failure budgets; the path comes first so that the
nginx form's refusals, this one included, are all in the shape nginx can pass on), and
the connection closes after that answer (``gateway.decision_server``).
The client's address, for the budgets and the access log, is walked out of
``X-Forwarded-For`` as :class:`gateway.forwarded.TrustedProxies` walks it (loopback
counting as trusted by default for this port), else taken from ``X-Real-IP``, else the
peer.

**The answer.** Allowed: 200, no body, the identity headers to set upstream (nginx
``auth_request_set``, Traefik ``authResponseHeaders``, Envoy
``allowed_upstream_headers``). Refused: the error in the one JSON shape and its status
(400, 401, 403, 404, 429 with ``Retry-After``, 501, 503), as the proxy port would answer;
a method the proxy port does not serve (``delete``, ``FOO``) is its 501 here too.

**nginx's two limits.** ``auth_request`` understands 2xx, 401 and 403 only (any other
status becomes a 500) and throws the subrequest's body away. So the nginx form answers
a refusal as 401 (for 401) or 403 (for every other status), with the real status in
``X-Keygate-Status`` and the JSON body in ``X-Keygate-Error``; the shipped nginx config
copies both and answers the client with that status and body. And nginx forwards the
path keygate authorized only if it is told it: the nginx form's 200 carries the
normalised path in ``X-Keygate-Path`` (prefix ``identity_header_prefix``), and in
``X-Keygate-Upstream-Path`` the path keygate's proxy port would send upstream for it
(without the route's prefix where it has ``strip_prefix``, after its upstream URL's own
path), which the shipped config forwards
(``proxy_pass http://backend$keygate_upstream_path$is_args$args``).

**Traefik and Envoy forward the path themselves**, after their own normalisation
(Traefik's path sanitising, Envoy's ``normalize_path``/``merge_slashes``), which is not
keygate's rule. So for them keygate authorizes only a path already in its normal form
(up to the case of ``%XX`` escapes): any other is 400 ``path_not_normal``, so that what
they forward is exactly what was authorized.

**This module decides; it does not serve.** :meth:`DecisionPort.answer` takes what a
server read of a decision request (method, target, host, headers, peer, request id) and
gives the whole answer (:class:`DecisionAnswer`: status, headers, body, and what the
access log shows), counting it in the metrics. The port's server is
``gateway.decision_server``: keygate's own HTTP/1.1 protocol behind the connection
guard, which reads each head once and writes the answer's bytes itself.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from time import perf_counter
from typing import NoReturn

from multidict import MultiMapping, istr

from .context import Gateway
from .errors import BadRequest, ConfigError, Forbidden, GatewayError, NotFound
from .forwarded import TrustedProxies, client_over_tls, parse_address
from .http_head import METHODS
from .pipeline import Decision, RequestFacts
from .pipeline.authenticators import credentials_over_tls, without_session_cookie
from .pipeline.identity import carrier_of
from .routes import normalise_path
from .series import ALLOWED, INTERNAL_ERROR, NO_ROUTE
from .settings import Settings

log = logging.getLogger("keygate")

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
HOST = istr("Host")
ENVOY_REMOVE = istr("x-envoy-auth-headers-to-remove")
FORWARDED_METHOD = istr("X-Forwarded-Method")
FORWARDED_URI = istr("X-Forwarded-Uri")
FORWARDED_HOST = istr("X-Forwarded-Host")
FORWARDED_FOR = istr("X-Forwarded-For")
REAL_IP = istr("X-Real-IP")
CONTENT_TYPE = "Content-Type"
JSON = "application/json"
# RFC 9110 §5.6.2 token; methods longer than this are nobody's
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")
# the methods the proxy port serves, as it reads them (gateway.http_head: upper case,
# CONNECT left out)
_SERVED_METHODS = frozenset(method.decode("ascii") for method in METHODS)

NGINX, TRAEFIK, ENVOY = "nginx", "traefik", "envoy"

Headers = MultiMapping[str]


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


class UnservedMethod(GatewayError):
    """A method the proxy port refuses (its ``not_implemented``), refused alike."""

    status = 501
    code = "not_implemented"
    message = "keygate does not implement this method"

    def __init__(self, method: str):
        super().__init__()
        self.method = method


class DecisionAnswer:
    """What to answer: ``status``, ``headers`` (besides those every answer carries: the
    request id, ``Server``, ``Content-Length``, ``Date``) and ``body``; and what the
    access log shows of the request (its error code, route, account, API key, the
    client's address and the original request's method and path), all learned on the
    way, so logging costs no second look at anything. (Defaults on the class: an answer
    sets only what it learned.)"""

    status = 200
    headers: list[tuple[str, str]] = []  # noqa: RUF012 - never changed in place
    body = b""
    error_code: str | None = None
    route: str | None = None
    account: str | None = None
    app_key: str | None = None
    client: str | None = None
    original: tuple[str, str] | None = None  # (method, path without query)


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


def _also_removed(headers: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    """``headers`` with ``name`` added to Envoy's list of request headers to remove."""
    removed = [value for header, value in headers if istr(header) == ENVOY_REMOVE]
    kept = [(header, value) for header, value in headers if istr(header) != ENVOY_REMOVE]
    return [*kept, (ENVOY_REMOVE, ",".join([*removed, name.lower()]))]


class DecisionPort:
    """The decision logic: a request as the port's server read it in (:meth:`answer`),
    a :class:`DecisionAnswer` out, through :meth:`gateway.pipeline.Pipeline.decide`
    (the form is found by one comparison of the path: a router would only add work per
    request). It holds nothing of a connection, so any server can ask it."""

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
        self.upstream_path_header = istr(prefix + "Upstream-Path")
        self.status_header = istr(prefix + "Status")
        self.authorization_header = istr(prefix + "Authorization")
        self.cookie_header = istr(prefix + "Cookie")
        self.session_cookie = settings.session_cookie
        self.identity_token_header = istr(settings.identity_token_header)
        self.error_header = istr(prefix + "Error")
        # None when metrics are off: then answer() neither times nor counts anything
        self.metrics = gateway.telemetry.decision_requests()

    def trusts(self, peer: str) -> bool:
        """Whether ``peer`` may ask: a trusted proxy (loopback when none is listed)."""
        return self.trusted.trusts(peer)

    async def answer(self, method: str, target: str, host: str, headers: Headers,
                     peer: str, trusted: bool, request_id: str) -> DecisionAnswer:
        """The decision on a request as the port's server read it: the method and
        target as sent (path and query), the ``Host`` (else the address the request
        arrived on), the headers, the peer's address and whether it :meth:`trusts`
        it, and the request id the answer carries. Never raises (a bug is a 500 in the
        one error shape, logged with its request id)."""
        metrics = self.metrics
        started = perf_counter() if metrics is not None else 0.0
        answer = DecisionAnswer()
        form: str | None = None
        try:
            # first, so that every refusal on the nginx form is one nginx can pass on
            form = self.form_of(target)
            if not trusted:
                raise UntrustedCaller()
            facts = self.facts(form, method, target, host, headers, peer, request_id,
                               answer)
            decision = await self.pipeline.decide(facts)
            routed = decision.routed
            if routed is not None:
                answer.route = routed.route.name
                answer.account = routed.account
            if decision.refusal is not None:
                raise decision.refusal
            assert routed is not None and decision.identity is not None
            if form != NGINX and facts.raw_path != routed.forward_path:
                self.require_normal(facts.raw_path)
            answer.app_key = decision.identity.principal.app_key
            answer.headers = self.allowed(form, decision, headers)
        except GatewayError as refusal:
            answer.app_key = refusal.app_key  # proven, then refused: for the access log
            if metrics is not None:
                metrics.refused(answer.route or NO_ROUTE, refusal, False, started)
            self.refuse(answer, form, refusal, request_id)
            return answer
        except Exception:
            if metrics is not None:
                metrics.answered(answer.route or NO_ROUTE, 500, INTERNAL_ERROR, started)
            log.exception("unhandled error (request id %s)", request_id)
            self.refuse(answer, None, GatewayError(), request_id)
            return answer
        if metrics is not None:
            metrics.answered(answer.route or NO_ROUTE, 200, ALLOWED, started)
        return answer

    def form_of(self, target: str) -> str:
        """Which front proxy asks, by the path it calls (the operator wrote it into
        that proxy's config; no header the client could add decides it)."""
        if target == NGINX_PATH:  # the Envoy prefix cannot start it (check_settings)
            return NGINX
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

    @staticmethod
    def form_of_refused(start: bytes) -> str | None:
        """The nginx form, if a head refused as it was read (too large, a byte no
        header may hold) called ``/nginx``: nginx passes on every header its client
        sent, and a refusal not in the nginx form is, to ``auth_request``, a broken
        decider (the client's 431 would reach it as a 503). ``start`` is the head's
        first bytes; None for every other form, whose proxies pass a status on."""
        parts = start.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) > 2 and parts[1].partition(b"?")[0] == NGINX_PATH.encode():
            return NGINX
        return None

    def facts(self, form: str, method: str, target: str, host: str, headers: Headers,
              peer: str, request_id: str, answer: DecisionAnswer) -> RequestFacts:
        """The original request's facts as the front proxy reports them."""
        if form == ENVOY:
            original = target[len(self.envoy_prefix):]
        else:
            if form == NGINX:
                method = headers.get(self.method_header) or self.missing(self.method_header)
                original = headers.get(self.uri_header) or self.missing(self.uri_header)
            else:
                method = headers.get(FORWARDED_METHOD) or self.missing(FORWARDED_METHOD)
                original = headers.get(FORWARDED_URI) or self.missing(FORWARDED_URI)
                host = headers.get(FORWARDED_HOST) or self.missing(FORWARDED_HOST)
            if method not in _SERVED_METHODS:
                self.refuse_method(method)
        if not original.startswith("/"):
            raise BadRequest("the original request's path must start with '/'",
                             code="bad_path")
        raw_path, _, query = original.partition("?")
        answer.client = client = self.client(peer, headers)
        answer.original = (method, raw_path)
        # over TLS the session cookie is its __Host- name alone, as on keygate's own
        # ports (a plain-named one may be planted). The TLS that counts is the
        # client's to the front proxy, which only the front proxy's word tells: the
        # peer is trusted (answer() refused it otherwise), and this connection, the
        # front proxy's own, says nothing of the client's. A scheme the front proxy
        # does not say leaves both names read.
        if self.session_cookie and COOKIE in headers and client_over_tls(
                headers, secure=False, trusted_peer=True):
            headers = credentials_over_tls(headers, self.session_cookie)
        return RequestFacts(method, host, raw_path, query, headers, client, request_id)

    @staticmethod
    def refuse_method(method: str) -> NoReturn:
        """A method the proxy port would not serve: not a token (400 ``bad_method``),
        or one it does not implement, in any other case than upper case included (501,
        as the proxy port). Routes, their ``actions`` and the policies know methods in
        upper case: ``delete`` would be authorized as a plain write where ``DELETE`` is
        an admin action, and the upstreams that upper-case the method (Django, Flask)
        would then delete."""
        if _METHOD.fullmatch(method) is None:
            raise BadRequest("the original request's method is not an HTTP method",
                             code="bad_method")
        raise UnservedMethod(method)

    @staticmethod
    def missing(name: istr) -> NoReturn:
        """An original-request header absent or empty: refused."""
        raise MissingOriginal(
            f"this form of decision request must carry the original request's {name} "
            "header; check the front proxy's configuration"
        )

    def client(self, peer: str, headers: Headers) -> str:
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

    def allowed(self, form: str, decision: Decision, sent: Headers) -> list[tuple[str, str]]:
        """The allowed answer's headers: the identity headers to set upstream."""
        headers = decision.headers
        if form == NGINX:
            assert decision.routed is not None
            routed = decision.routed
            headers = [*headers, (self.path_header, routed.forward_path),
                       (self.upstream_path_header,
                        routed.route.upstream_target(routed.forward_path, ""))]
        assert decision.identity is not None
        carrier = carrier_of(decision.identity)
        if carrier or AUTHORIZATION in sent or COOKIE in sent:
            headers = [*headers, *self.credential_headers(form, carrier, sent)]
        if form == ENVOY and not any(
                istr(name) == self.identity_token_header for name, _ in headers):
            # Envoy replaces only what the answer sets, and does not show keygate the
            # header (not in allowed_headers): a client's own copy of the signed identity
            # token, on a route that signs none, would reach the upstream
            headers = _also_removed(headers, self.identity_token_header)
        return headers

    def credential_headers(
        self, form: str, carrier: str, sent: Headers
    ) -> list[tuple[str, str]]:
        """What the front proxy forwards as ``Authorization`` and ``Cookie``: as the client
        sent them, but never keygate's session: not the Bearer JWT that carried the
        credentials, and never the session cookie, whatever carried them (a browser
        signed in to the admin page adds it to every request to the host by itself).

        nginx cannot drop a header by condition, so it is told the values to forward
        (``X-Keygate-Authorization``, ``X-Keygate-Cookie``; absent: forward none).
        Traefik copies the ``authResponseHeaders`` it lists from this answer, removing
        the request's own first: the values to forward, or nothing. Envoy overwrites
        with ``allowed_upstream_headers`` and removes what
        ``x-envoy-auth-headers-to-remove`` names."""
        authorization = "" if carrier == "bearer" else ",".join(sent.getall(AUTHORIZATION, ()))
        cookie = "; ".join(sent.getall(COOKIE, ()))
        if self.session_cookie:
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

    def refuse(self, answer: DecisionAnswer, form: str | None, refusal: GatewayError,
               request_id: str) -> None:
        """The refusal in the one error shape; on the nginx form, as ``auth_request``
        can pass it on: 401 or 403 (it passes on no other, and never the body), the
        real status in ``X-Keygate-Status`` and the body in ``X-Keygate-Error``."""
        body = refusal.body(request_id)
        headers = [*refusal.headers.items(), (CONTENT_TYPE, JSON)]
        status = refusal.status
        if form == NGINX:
            headers.append((self.status_header, str(status)))
            headers.append((self.error_header, header_safe(body)))
            if status not in (401, 403):
                status = 403
        answer.status = status
        answer.headers = headers
        answer.body = body
        answer.error_code = refusal.code
