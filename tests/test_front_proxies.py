"""``deploy/envoy/envoy.yaml`` and ``deploy/traefik/`` against keygate.

There are no Envoy or Traefik binaries here, so the configs are tested in two steps:

* parsed, and checked against keygate's settings and headers (the Envoy prefix, the
  credential and identity header names, the decision API's address, the upstream), so
  that a renamed setting or header breaks this test rather than a deployment;
* the request each proxy would send, built from the parsed config as that proxy builds
  it (Envoy: the method, ``path_prefix`` + the path, the ``allowed_headers``; Traefik:
  ``GET`` the ``address`` with ``X-Forwarded-Method/-Proto/-Host/-Uri/-For`` and the
  ``authRequestHeaders``), is sent to a live decision API; what the proxy then copies
  upstream (``allowed_upstream_headers``, ``authResponseHeaders``, the header removals)
  or to the client is worked out from the config and the answer, and checked.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from decider import PORTS, Decider, Reply, deciding
from multidict import CIMultiDict

from gateway import decision
from gateway.pipeline.mutators import IdentityHeaders
from gateway.proxy import CLIENT_NEVER_SETS
from gateway.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SETTINGS = load_settings(env={})  # the defaults, which the shipped configs assume
IDENTITY = [str(name) for name in IdentityHeaders(SETTINGS.identity_header_prefix).names]
CREDENTIALS = [SETTINGS.key_header, SETTINGS.token_header]
# what keygate also answers for the upstream: the signed identity token (on routes that
# ask for it), and Authorization and Cookie without keygate's session
SESSION_CARRIERS = [SETTINGS.identity_token_header, "Authorization", "Cookie"]
# the decision API's address and the guarded API's, as the nginx config has them
NGINX = (DEPLOY / "nginx" / "keygate.conf").read_text()
DECISION = re.search(r"upstream keygate_decision \{\s*server ([\d.]+:\d+);", NGINX)[1]
BACKEND = re.search(r"upstream keygate_backend \{\s*server ([\d.]+:\d+);", NGINX)[1]
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade"}


def envoy_config() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text())


def traefik_configs() -> tuple[dict[str, Any], dict[str, Any]]:
    return (yaml.safe_load((DEPLOY / "traefik" / "traefik.yml").read_text()),
            yaml.safe_load((DEPLOY / "traefik" / "dynamic.yml").read_text()))


def matches(matchers: dict[str, Any], name: str) -> bool:
    """Envoy's ListStringMatcher, for the kinds the shipped file uses."""
    for pattern in matchers["patterns"]:
        fold = (lambda s: s.lower()) if pattern.get("ignore_case") else (lambda s: s)
        subject = fold(name)
        if "exact" in pattern and subject == fold(pattern["exact"]):
            return True
        if "prefix" in pattern and subject.startswith(fold(pattern["prefix"])):
            return True
    return False


def exact_names(matchers: dict[str, Any]) -> set[str]:
    assert all(set(p) <= {"exact", "ignore_case"} and p.get("ignore_case")
               for p in matchers["patterns"]), "only case-insensitive exact names"
    return {p["exact"] for p in matchers["patterns"]}


@dataclass
class Envoy:
    """What the shipped envoy.yaml makes Envoy do around the decision API."""

    hcm: dict[str, Any]
    ext_authz: dict[str, Any]
    route: dict[str, Any]
    clusters: dict[str, Any]

    @classmethod
    def shipped(cls) -> Envoy:
        config = envoy_config()["static_resources"]
        [listener] = config["listeners"]
        [chain] = listener["filter_chains"]
        [manager] = chain["filters"]
        hcm = manager["typed_config"]
        filters = {f["name"]: f["typed_config"] for f in hcm["http_filters"]}
        [host] = hcm["route_config"]["virtual_hosts"]
        [route] = host["routes"]
        clusters = {c["name"]: c for c in config["clusters"]}
        return cls(hcm, filters["envoy.filters.http.ext_authz"], route, clusters)

    @property
    def service(self) -> dict[str, Any]:
        return self.ext_authz["http_service"]

    def check_request(self, method: str, target: str, headers: list[tuple[str, str]],
                      host: str, client: str) -> tuple[str, str, list[tuple[str, str]]]:
        """The authorization request: the client's method, ``path_prefix`` + its path,
        its ``Host`` and the headers ``allowed_headers`` lets through, with the
        client's address appended to ``X-Forwarded-For`` (``use_remote_address``)."""
        forwarded = [v for n, v in headers if n.lower() == "x-forwarded-for"]
        headers = [(n, v) for n, v in headers if n.lower() != "x-forwarded-for"]
        headers.append(("X-Forwarded-For", ", ".join([*forwarded, client])))
        # Envoy sends Authorization whatever allowed_headers says (its documentation:
        # Host, Method, Path, Content-Length and Authorization are always included)
        sent = [(n, v) for n, v in headers
                if matches(self.ext_authz["allowed_headers"], n) or n.lower() == "authorization"]
        return method, self.service["path_prefix"] + target, [("Host", host), *sent]

    def upstream_headers(self, headers: list[tuple[str, str]], answer: Reply) -> CIMultiDict:
        """Allowed: the answer's headers that ``allowed_upstream_headers`` names replace
        the client's, then the route removes ``request_headers_to_remove``."""
        upstream = CIMultiDict(headers)
        allowed = self.service["authorization_response"]["allowed_upstream_headers"]
        for name in {n for n in answer.headers if matches(allowed, n)}:
            upstream.popall(name, None)
            upstream.extend((name, v) for v in answer.headers.getall(name))
        removed = answer.headers.get("x-envoy-auth-headers-to-remove", "")
        for name in filter(None, (n.strip() for n in removed.split(","))):
            upstream.popall(name, None)
        for name in self.route["request_headers_to_remove"]:
            upstream.popall(name, None)
        return upstream

    def client_headers(self, answer: Reply) -> set[str]:
        """Refused: the answer's headers the client gets (Envoy adds these few of its
        own choosing to ``allowed_client_headers``)."""
        allowed = self.service["authorization_response"]["allowed_client_headers"]
        automatic = {"path", "status", "content-length", "www-authenticate", "location"}
        return {n.lower() for n in answer.headers
                if matches(allowed, n) or n.lower() in automatic}

    async def ask(self, decider: Decider, method: str, target: str,
                  headers: list[tuple[str, str]], client: str) -> Reply:
        called, path, sent = self.check_request(method, target, headers, "api.test", client)
        return await decider.call(called, path, sent)


@dataclass
class Traefik:
    """What the shipped traefik.yml and dynamic.yml make Traefik do."""

    static: dict[str, Any]
    dynamic: dict[str, Any]

    @classmethod
    def shipped(cls) -> Traefik:
        return cls(*traefik_configs())

    @property
    def router(self) -> dict[str, Any]:
        [router] = self.dynamic["http"]["routers"].values()
        return router

    def middleware(self, kind: str) -> dict[str, Any]:
        [found] = [m[kind] for m in self.dynamic["http"]["middlewares"].values() if kind in m]
        return found

    @property
    def forward_auth(self) -> dict[str, Any]:
        return self.middleware("forwardAuth")

    def auth_request(self, method: str, target: str, headers: list[tuple[str, str]],
                     host: str, client: str) -> tuple[str, list[tuple[str, str]]]:
        """ForwardAuth's request: ``GET address``, the client's headers (only
        ``authRequestHeaders`` when set, never hop-by-hop ones), and X-Forwarded-*
        written by Traefik (``trustForwardHeader: false``)."""
        assert self.forward_auth["trustForwardHeader"] is False
        wanted = {n.lower() for n in self.forward_auth.get("authRequestHeaders", [])}
        written = {"x-forwarded-for", "x-forwarded-method", "x-forwarded-proto",
                   "x-forwarded-host", "x-forwarded-uri"}
        sent = [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP | written
                and (not wanted or n.lower() in wanted)]
        sent += [("X-Forwarded-For", client), ("X-Forwarded-Method", method),
                 ("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", host),
                 ("X-Forwarded-Uri", target)]
        return self.forward_auth["address"], sent

    def upstream_headers(self, headers: list[tuple[str, str]], answer: Reply) -> CIMultiDict:
        """Allowed: each ``authResponseHeaders`` name deleted from the request and
        copied from the answer, then the router's later middlewares."""
        upstream = CIMultiDict(headers)
        for name in self.forward_auth["authResponseHeaders"]:
            upstream.popall(name, None)
            upstream.extend((name, v) for v in answer.headers.getall(name, []))
        for name in self.router["middlewares"]:
            headers_middleware = self.dynamic["http"]["middlewares"][name].get("headers")
            for header, value in (headers_middleware or {}).get(
                    "customRequestHeaders", {}).items():
                upstream.popall(header, None)
                if value:
                    upstream[header] = value
        return upstream

    def client_headers(self, answer: Reply) -> set[str]:
        """Refused: every header of the answer but hop-by-hop ones."""
        return {n.lower() for n in answer.headers if n.lower() not in HOP_BY_HOP}

    async def ask(self, decider: Decider, method: str, target: str,
                  headers: list[tuple[str, str]], client: str) -> Reply:
        address, sent = self.auth_request(method, target, headers, "api.test", client)
        path = address.removeprefix("http://" + DECISION)
        assert path != address, "the address is keygate's decision API"
        return await decider.call("GET", path, sent)


# -- the files against keygate's settings ---------------------------------------------------

def test_envoys_config_names_keygates_settings_and_headers():
    envoy = Envoy.shipped()
    hcm = envoy.hcm
    assert hcm["normalize_path"] is True and hcm["merge_slashes"] is True
    assert hcm["use_remote_address"] is True
    assert hcm["common_http_protocol_options"]["headers_with_underscores_action"] \
        == "REJECT_REQUEST"
    names = [f["name"] for f in hcm["http_filters"]]
    assert names.index("envoy.filters.http.ext_authz") < names.index("envoy.filters.http.router")
    ext_authz = envoy.ext_authz
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["status_on_error"] == {"code": "ServiceUnavailable"}
    assert envoy.service["path_prefix"] == SETTINGS.decision_envoy_prefix
    assert decision.check_settings(SETTINGS.with_values(
        decision_envoy_prefix=envoy.service["path_prefix"])) == envoy.service["path_prefix"]
    allowed = exact_names(ext_authz["allowed_headers"])
    assert {h.lower() for h in CREDENTIALS} | {"x-forwarded-for"} <= allowed
    # the client's scheme (Envoy writes it at the edge): over https keygate reads the
    # session cookie by its __Host- name alone
    assert "x-forwarded-proto" in allowed
    response = envoy.service["authorization_response"]
    assert exact_names(response["allowed_upstream_headers"]) == {
        h.lower() for h in [*IDENTITY, *SESSION_CARRIERS]}
    assert {"content-type", "retry-after", "x-request-id"} <= exact_names(
        response["allowed_client_headers"])
    removed = set(envoy.route["request_headers_to_remove"])
    assert {h.lower() for h in CREDENTIALS} <= removed
    # the route's removals run after ext_authz set the identity: removing one of its
    # names would strip keygate's own header
    assert not removed & {h.lower() for h in IDENTITY}
    # addresses: the decision API and the guarded API, as nginx's config has them
    server = envoy.service["server_uri"]
    assert server["uri"] == f"http://{DECISION}"
    assert cluster_address(envoy.clusters[server["cluster"]]) == DECISION
    assert cluster_address(envoy.clusters[envoy.route["route"]["cluster"]]) == BACKEND


def cluster_address(cluster: dict[str, Any]) -> str:
    [group] = cluster["load_assignment"]["endpoints"]
    [endpoint] = group["lb_endpoints"]
    socket = endpoint["endpoint"]["address"]["socket_address"]
    return f"{socket['address']}:{socket['port_value']}"


def test_traefiks_config_names_keygates_settings_and_headers():
    traefik = Traefik.shipped()
    [(entry_name, entry)] = traefik.static["entryPoints"].items()
    assert entry["forwardedHeaders"]["insecure"] is False
    assert "trustedIPs" not in entry["forwardedHeaders"]
    assert entry["http"]["sanitizePath"] is True
    assert entry["http"]["underscoreHeadersStrategy"] == "reject"
    assert traefik.static["providers"]["file"]["filename"].endswith("/dynamic.yml")
    router = traefik.router
    assert router["entryPoints"] == [entry_name]
    forward_auth = traefik.forward_auth
    assert forward_auth["address"] == f"http://{DECISION}{decision.TRAEFIK_PATH}"
    assert forward_auth["trustForwardHeader"] is False
    assert forward_auth["authResponseHeaders"] == [*IDENTITY, *SESSION_CARRIERS]
    assert {*CREDENTIALS, "Authorization", "Cookie"} <= set(forward_auth["authRequestHeaders"])
    # keygate decides with the credentials, then they are removed
    middlewares = traefik.dynamic["http"]["middlewares"]
    kinds = [next(iter(middlewares[name])) for name in router["middlewares"]]
    assert kinds == ["forwardAuth", "headers"]
    stripped = middlewares[router["middlewares"][1]]["headers"]["customRequestHeaders"]
    assert {name: stripped.get(name) for name in CREDENTIALS} == dict.fromkeys(CREDENTIALS, "")
    assert not set(stripped) & set(IDENTITY)
    [server] = traefik.dynamic["http"]["services"][router["service"]]["loadBalancer"]["servers"]
    assert server["url"] == f"http://{BACKEND}"


# What keygate's proxy port never passes on (gateway/proxy.py) and each front proxy's
# config must remove as well: overrides of the method and path keygate authorized, and
# addresses chosen by the client. Left to the proxy itself: Host, Expect and the request
# id (each sets its own), X-Forwarded-For/-Proto/-Host (each writes its own), Envoy's
# x-envoy-* (stripped from external clients with use_remote_address) and Traefik's
# X-Forwarded-* (forwardedHeaders.insecure: false).
NEVER_FORWARDED = {
    name for name in CLIENT_NEVER_SETS
    if name not in {"host", "expect", "x-request-id"}
}
X_FORWARDED_WRITTEN = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
X_FORWARDED_OTHERS = {"x-forwarded-port", "x-forwarded-prefix", "x-forwarded-server",
                      "x-forwarded-ssl", "x-forwarded-scheme", "x-forwarded-uri"}


def test_every_front_proxy_removes_what_keygates_proxy_port_never_passes_on():
    cleared = {name.lower() for name, value in re.findall(
        r'proxy_set_header\s+(\S+)\s+(""|\$\w+);', NGINX) if value == '""'}
    written = {name.lower() for name, value in re.findall(
        r'proxy_set_header\s+(\S+)\s+(""|\$\w+);', NGINX) if value != '""'}
    assert cleared | written >= NEVER_FORWARDED, NEVER_FORWARDED - cleared - written
    assert cleared >= X_FORWARDED_OTHERS and written >= X_FORWARDED_WRITTEN
    envoy_removed = set(Envoy.shipped().route["request_headers_to_remove"])
    assert NEVER_FORWARDED - {"x-envoy-external-address"} <= envoy_removed, (
        NEVER_FORWARDED - envoy_removed)
    assert envoy_removed >= X_FORWARDED_OTHERS
    traefik = Traefik.shipped()
    middlewares = traefik.dynamic["http"]["middlewares"]
    stripped = middlewares[traefik.router["middlewares"][1]]["headers"]["customRequestHeaders"]
    traefik_removed = {name.lower() for name, value in stripped.items() if value == ""}
    assert NEVER_FORWARDED - {"x-real-ip"} <= traefik_removed, (
        NEVER_FORWARDED - traefik_removed)


def test_every_front_proxy_config_agrees_on_the_addresses():
    """One decision API, one guarded API, one public port, in all three files and in
    the example config's routes and the README."""
    routes = tomllib.loads((DEPLOY / "keygate.toml").read_text())["routes"]
    assert {route["upstream"] for route in routes} == {f"http://{BACKEND}"}
    listen = re.search(r"listen (\d+);", NGINX)[1]
    [listener] = envoy_config()["static_resources"]["listeners"]
    assert str(listener["address"]["socket_address"]["port_value"]) == listen
    static, _ = traefik_configs()
    [entry] = static["entryPoints"].values()
    assert entry["address"] == f":{listen}"
    assert f'decision_listen = "{DECISION}"' in (ROOT / "README.md").read_text()


# -- the requests they send, to a live decision API -----------------------------------------

@pytest.fixture
async def decider(gateway, make_settings) -> AsyncIterator[Decider]:
    settings = make_settings(store_prefix=gateway.settings.store_prefix, auth_failure_limit=3,
                             **PORTS)
    async with aiohttp.ClientSession() as session, deciding(settings, session) as decider:
        yield decider


PROXIES = {"envoy": Envoy.shipped, "traefik": Traefik.shipped}
SPOOFED = [("X-Keygate-Key", "kgk-acme-EVIL000000"), ("X-Keygate-Roles", "owner"),
           ("X-Keygate-Path", "/admin"), ("X-Forwarded-For", "198.51.100.1"),
           ("X-Forwarded-Uri", "/beta/orders/1"), ("X-Original-URI", "/beta/orders/1")]


@pytest.mark.parametrize("proxy", PROXIES)
async def test_an_allowed_request_reaches_the_upstream_with_keygates_identity_only(
    decider, make_key, proxy
):
    front = PROXIES[proxy]()
    key = await make_key("acme", ["orders-reader"])
    client_headers = [*SPOOFED, *key.headers.items(), ("Accept", "application/json")]
    answer = await front.ask(decider, "GET", "/orders/1?page=2", client_headers,
                             "203.0.113.10")
    assert answer.status == 200, answer.body
    # what keygate answers for the upstream is exactly what the config copies there
    answered = {n for n in answer.headers if n.lower().startswith("x-keygate-")}
    assert answered == set(IDENTITY)
    upstream = front.upstream_headers(client_headers, answer)
    assert {name: upstream.getall(name) for name in IDENTITY} == {
        IDENTITY[0]: [key.app_key], IDENTITY[1]: ["acme"], IDENTITY[2]: ["acme"],
        IDENTITY[3]: ["orders-reader"]}
    assert "X-Keygate-Path" not in upstream
    for credential in CREDENTIALS:
        assert credential not in upstream
    assert not any(key.token in value for value in upstream.values())
    assert upstream["Accept"] == "application/json"  # the rest passes


@pytest.mark.parametrize("proxy", PROXIES)
async def test_refusals_reach_the_client_in_keygates_shape(decider, make_key, proxy):
    front = PROXIES[proxy]()
    reader = await make_key("acme", ["orders-reader"])
    last = "y" if reader.token.endswith("x") else "x"
    wrong = [(CREDENTIALS[0], reader.app_key), (CREDENTIALS[1], reader.token[:-1] + last)]
    for method, target, headers, status, code in [
        ("GET", "/orders/1", [], 401, "missing_credentials"),
        ("POST", "/orders/1", [*reader.headers.items()], 403, "not_permitted"),
        ("GET", "/beta/orders/1", [*reader.headers.items()], 403, "no_grant"),
        ("GET", "/nowhere", [*reader.headers.items()], 404, "no_route"),
        ("GET", "/orders/%2f", [*reader.headers.items()], 400, "bad_path"),
        ("GET", "/orders/x/../1", [*reader.headers.items()], 400, "path_not_normal"),
        *[("GET", "/orders/1", wrong, 401, "invalid_credentials")] * 3,
        ("GET", "/orders/1", wrong, 429, "too_many_failures"),
    ]:
        answer = await front.ask(decider, method, target, [*SPOOFED, *headers],
                                 "203.0.113.11")
        assert answer.status == status, answer.body
        error = orjson.loads(answer.body)["error"]
        assert (error["status"], error["code"]) == (status, code)
        seen = front.client_headers(answer)
        assert {"content-type", "x-request-id"} <= seen
        assert status != 429 or "retry-after" in seen
        assert not any(n.startswith("x-keygate-") for n in seen)


@pytest.mark.parametrize("proxy", PROXIES)
async def test_the_client_address_is_the_one_the_proxy_writes(decider, make_key, proxy):
    """A client-sent X-Forwarded-For does not make another address of it: its budget is
    its own address's."""
    front = PROXIES[proxy]()
    unknown = [(CREDENTIALS[0], "kgk-acme-AAAAAAAAAA"), (CREDENTIALS[1], "kgt_" + "A" * 36)]
    for spoofed in ("198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4"):
        answer = await front.ask(decider, "GET", "/orders/1",
                                 [("X-Forwarded-For", spoofed), *unknown], "203.0.113.12")
    assert answer.status == 429, answer.body
    other = await front.ask(decider, "GET", "/orders/1", unknown, "203.0.113.13")
    assert other.status == 401, other.body


async def test_without_the_credentials_in_envoys_allowed_headers_nothing_is_allowed(
    decider, make_key
):
    """The config's allowed_headers is what carries the credentials to keygate: this
    test's Envoy model honours it (a model passing every header would not notice)."""
    envoy = Envoy.shipped()
    envoy.ext_authz["allowed_headers"]["patterns"] = [
        p for p in envoy.ext_authz["allowed_headers"]["patterns"]
        if p["exact"] not in {h.lower() for h in CREDENTIALS}]
    key = await make_key("acme", ["owner"])
    answer = await envoy.ask(decider, "GET", "/orders/1", [*key.headers.items()],
                             "203.0.113.14")
    assert answer.status == 401
    assert orjson.loads(answer.body)["error"]["code"] == "missing_credentials"


@pytest.mark.parametrize("proxy", PROXIES)
async def test_a_session_authenticates_and_never_reaches_the_upstream(
    decider, make_key, proxy, gateway
):
    """Bearer or cookie through the front proxy's request form: allowed, and what
    carried keygate's session is gone upstream while the client's other cookies and an
    Authorization header that is not keygate's pass."""
    front = PROXIES[proxy]()
    key = await make_key("acme", ["orders-reader"])
    found = await gateway.store.auth_lookup(key.app_key, "acme")
    session, _ = await gateway.sessions.issue(key.app_key, "acme", found.token_digests[0])
    cases = [
        ([("Authorization", f"Bearer {session}")], None, None),
        ([("Cookie", f"theme=dark; keygate_session={session}")], None, "theme=dark"),
        # the name login gives it over TLS, beside a cookie another host planted
        ([("Cookie", f"keygate_session=planted; __Host-keygate_session={session}; a=b")],
         None, "a=b"),
        ([*key.headers.items(), ("Authorization", "Bearer upstream-own")],
         "Bearer upstream-own", None),
        # the pair authenticates; the cookie a signed-in browser adds still stays out
        ([*key.headers.items(), ("Cookie", f"theme=dark; keygate_session={session}")],
         None, "theme=dark"),
        # and so does a keygate session in the Authorization header beside the pair
        ([*key.headers.items(), ("Authorization", f"Bearer {session}")], None, None),
    ]
    for client_headers, authorization, cookie in cases:
        answer = await front.ask(decider, "GET", "/orders/1", client_headers, "203.0.113.10")
        assert answer.status == 200, answer.body
        upstream = front.upstream_headers(client_headers, answer)
        assert upstream.get("Authorization") == authorization
        assert (upstream.get("Cookie") or "").replace(" ", "") == (cookie or "")
        assert session not in str(upstream)
        assert upstream[IDENTITY[0]] == key.app_key


@pytest.mark.parametrize("proxy", PROXIES)
async def test_a_write_the_session_cookie_authenticates_needs_the_csrf_proof(
    decider, make_key, proxy, gateway
):
    """The cookie reaches the front proxy's host like any other port of the site: a
    form posted from another page of the site carries it, and is refused as on the
    management port (gateway.pipeline.csrf); with the proof it is allowed."""
    front = PROXIES[proxy]()
    key = await make_key("acme", ["orders-writer"])
    found = await gateway.store.auth_lookup(key.app_key, "acme")
    session, _ = await gateway.sessions.issue(key.app_key, "acme", found.token_digests[0])
    cookie = ("Cookie", f"keygate_session={session}")
    for extra in ([], [("Origin", "http://127.0.0.1:9"), ("Sec-Fetch-Site", "same-site")],
                  [("X-Keygate-CSRF", "1"), ("Sec-Fetch-Site", "cross-site")],
                  [("X-Keygate-CSRF", "1"), ("Origin", "null")]):
        answer = await front.ask(decider, "POST", "/orders/1", [cookie, *extra],
                                 "203.0.113.12")
        assert answer.status == 403, answer.body
        assert orjson.loads(answer.body)["error"]["code"] == "csrf_refused"
    proven = await front.ask(decider, "POST", "/orders/1",
                             [cookie, ("X-Keygate-CSRF", "1"), ("Sec-Fetch-Site", "same-origin")],
                             "203.0.113.12")
    assert proven.status == 200, proven.body
    read = await front.ask(decider, "GET", "/orders/1", [cookie], "203.0.113.12")
    assert read.status == 200, read.body


@pytest.mark.parametrize("proxy", PROXIES)
async def test_a_clients_own_identity_token_never_reaches_the_upstream(
    decider, make_key, proxy
):
    """On a route that signs no identity token, keygate's answer sets none, and Envoy
    replaces only what the answer sets: the client's own copy is removed by name."""
    front = PROXIES[proxy]()
    key = await make_key("acme", ["orders-reader"])
    sent = [*key.headers.items(), (SETTINGS.identity_token_header, "eyJhbGciOiJub25lIn0.e30."),
            ("Cookie", "theme=dark")]
    answer = await front.ask(decider, "GET", "/orders/1", sent, "203.0.113.13")
    assert answer.status == 200, answer.body
    upstream = front.upstream_headers(sent, answer)
    assert SETTINGS.identity_token_header not in upstream
    assert upstream.get("Cookie") == "theme=dark"
    assert upstream[IDENTITY[0]] == key.app_key
