"""A session planted under the cookie's plain name, on the ports where a browser's API
calls go: the proxy port and the decision API (nginx, Traefik, Envoy in front).

Another host of the site (a cookie for the parent domain) or a plain-HTTP answer can
set ``keygate_session`` in a browser, holding the planter's own valid session; only
``__Host-keygate_session`` is out of their reach. Over TLS a browser that holds no
``__Host-`` cookie must then not act as the planter: the plain name is not read, the
request has no credentials (401). Without TLS, or when the front proxy does not say the
scheme, the plain name is the session cookie as before. Real redis-server, real aiohttp
servers and keygate as ``keygate serve`` runs it, real Casbin; nginx for real where it
is installed."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import aiohttp
import nginx_process
import orjson
import pytest
from conftest import Key, ProxyTestServer
from decider import FORMS, PORTS, Decider, assert_error, deciding, nginx_refusal
from multidict import CIMultiDict, CIMultiDictProxy
from nginx_process import nginx_binary, shipped_site
from ports import free_port
from yarl import URL

from gateway.app import build_gateway, running
from gateway.context import Gateway
from gateway.pipeline.authenticators import credentials_over_tls

OVER_TLS = {"X-Forwarded-Proto": "https"}  # what a trusted front that terminates TLS says


async def session_for(gateway: Gateway, key: Key, account: str = "acme") -> str:
    found = await gateway.store.auth_lookup(key.app_key, account)
    session, _ = await gateway.sessions.issue(key.app_key, account, found.token_digests[0])
    return session


def assert_refused(status: int, body: bytes, request_id: str) -> None:
    """401 ``missing_credentials`` in the one error shape: the planted cookie is no
    credential at all over TLS."""
    assert status == 401, body
    error = orjson.loads(body)["error"]
    assert (error["status"], error["code"]) == (401, "missing_credentials"), error
    assert error["requestId"] == request_id


# -- the proxy port ---------------------------------------------------------------------------

async def test_over_tls_the_proxy_port_reads_only_the_host_cookie(
    gateway, proxy, proxy_with, make_key, upstream
):
    """Behind a trusted front that says https, the proxy port read the plain name too:
    a browser's API call carrying only the planted cookie ran as the planter."""
    behind_tls = await proxy_with(trusted_proxies=["127.0.0.1/32"])
    victim = await make_key("acme", ["orders-writer"])
    planter = await make_key("acme", ["orders-writer"])
    planted, own = await session_for(gateway, planter), await session_for(gateway, victim)
    only_planted = {"Cookie": f"theme=dark; keygate_session={planted}"}
    before = len(upstream.requests)
    for method in ("GET", "POST"):
        answer = await behind_tls.request(method, "/orders/1", headers={
            **only_planted, **OVER_TLS, "X-Keygate-CSRF": "1"})
        assert_refused(answer.status, await answer.read(), answer.headers["X-Request-Id"])
    assert len(upstream.requests) == before
    # the __Host- cookie is the session, and beside it the planted one changes nothing
    for cookie in (f"__Host-keygate_session={own}; theme=dark",
                   f"keygate_session={planted}; theme=dark; __Host-keygate_session={own}"):
        answer = await behind_tls.get("/orders/1", headers={"Cookie": cookie, **OVER_TLS})
        assert answer.status == 200, await answer.text()
        assert upstream.last["headers"]["X-Keygate-Key"] == victim.app_key
        assert upstream.last["headers"]["Cookie"].strip() == "theme=dark"
    # plain HTTP (the front says http, or nothing), or an https said by a peer that is
    # not a trusted proxy: the plain name is the cookie, as before
    for port, headers in ((behind_tls, {}), (behind_tls, {"X-Forwarded-Proto": "http"}),
                          (proxy, OVER_TLS)):
        answer = await port.get("/orders/1", headers={**only_planted, **headers})
        assert answer.status == 200, await answer.text()
        assert upstream.last["headers"]["X-Keygate-Key"] == planter.app_key


async def test_the_proxy_ports_own_tls_reads_only_the_host_cookie(
    gateway, make_key, upstream, aiohttp_client, certificate
):
    """A proxy port served over TLS itself (no front proxy) is read as TLS too."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server = ProxyTestServer(gateway)
    await server.start_server(ssl=context)
    client = await aiohttp_client(server, connector=aiohttp.TCPConnector(ssl=False))
    assert str(client.make_url("/")).startswith("https://")
    victim = await make_key("acme", ["orders-reader"])
    planter = await make_key("acme", ["orders-reader"])
    planted, own = await session_for(gateway, planter), await session_for(gateway, victim)
    answer = await client.get("/orders/1", headers={"Cookie": f"keygate_session={planted}"})
    assert_refused(answer.status, await answer.read(), answer.headers["X-Request-Id"])
    answer = await client.get("/orders/1", headers={
        "Cookie": f"keygate_session={planted}; __Host-keygate_session={own}"})
    assert answer.status == 200, await answer.text()
    assert upstream.last["headers"]["X-Keygate-Key"] == victim.app_key


# -- the decision API ---------------------------------------------------------------------

@pytest.fixture
async def decider(gateway, make_settings) -> AsyncIterator[Decider]:
    settings = make_settings(store_prefix=gateway.settings.store_prefix, **PORTS)
    async with aiohttp.ClientSession() as session, deciding(settings, session) as decider:
        yield decider


@pytest.mark.parametrize("form", FORMS)
async def test_over_https_the_decision_api_reads_only_the_host_cookie(
    decider, make_key, form
):
    """Each form carries the client's scheme in X-Forwarded-Proto (Traefik and Envoy
    write it; the shipped nginx config sends $scheme). Over https the plain name was
    read, so a planted session decided a browser's calls as the planter's."""
    victim = await make_key("acme", ["orders-reader"])
    planter = await make_key("acme", ["orders-reader"])
    planted = await session_for(decider.gateway, planter)
    own = await session_for(decider.gateway, victim)
    only_planted = {"Cookie": f"theme=dark; keygate_session={planted}"}
    reply = await decider.ask(form, "GET", "/orders/1", only_planted, scheme="https")
    if form == "nginx":
        nginx_refusal(reply, 401, "missing_credentials")
    else:
        assert_error(reply, 401, "missing_credentials")
    for cookie in (f"__Host-keygate_session={own}",
                   f"keygate_session={planted}; __Host-keygate_session={own}"):
        reply = await decider.ask(form, "GET", "/orders/1", {"Cookie": cookie},
                                  scheme="https")
        assert reply.status == 200, reply.body
        assert reply.identity()["Key"] == [victim.app_key]
    # http, or a form that says no scheme (nginx and Envoy here; Traefik says http):
    # the plain name is read as before
    for scheme in ("http", None):
        reply = await decider.ask(form, "GET", "/orders/1", only_planted, scheme=scheme)
        assert reply.status == 200, reply.body
        assert reply.identity()["Key"] == [planter.app_key]


# -- nginx, for real, terminating TLS with the shipped config ---------------------------------

NGINX = nginx_binary()


@pytest.mark.skipif(NGINX is None, reason="no nginx with the auth_request module "
                    "(install Debian's nginx-light; .ci/run does)")
async def test_the_shipped_nginx_config_over_tls_reads_only_the_host_cookie(
    gateway, make_settings, make_key, upstream, certificate, tmp_path
):
    """The shipped config did not tell keygate the client's scheme: nginx terminating
    TLS passed a planted plain-named cookie on, and keygate allowed it. It now sends
    ``X-Forwarded-Proto $scheme`` with the subrequest (replacing any the client sent)."""
    assert NGINX is not None
    settings = make_settings(store_prefix=gateway.settings.store_prefix,
                             decision_listen="127.0.0.1:0", proxy_listen="127.0.0.1:0",
                             management_listen="127.0.0.1:0", metrics_listen="")
    keygate = build_gateway(settings)
    victim = await make_key("acme", ["orders-reader"])
    planter = await make_key("acme", ["orders-reader"])
    async with running(keygate) as listening, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=False)) as client:
        planted, own = await session_for(keygate, planter), await session_for(keygate, victim)
        port = free_port()
        cert_file, key_file = certificate
        site = shipped_site(URL(listening.decision).port, URL(upstream.url).port, port)
        site = site.replace(f"listen 127.0.0.1:{port};", f"listen 127.0.0.1:{port} ssl; "
                            f"ssl_certificate {cert_file}; ssl_certificate_key {key_file};")
        child = nginx_process.start(NGINX, site, tmp_path, port, workers="1")
        try:
            base = f"https://127.0.0.1:{port}/orders/1"
            # a client's own X-Forwarded-Proto does not make the scheme http
            async with client.get(base, headers={
                    "Cookie": f"keygate_session={planted}",
                    "X-Forwarded-Proto": "http"}) as answer:
                assert_refused(answer.status, await answer.read(),
                               answer.headers["X-Request-Id"])
            async with client.get(base, headers={
                    "Cookie": f"keygate_session={planted}; __Host-keygate_session={own}",
            }) as answer:
                assert answer.status == 200, await answer.text()
            assert upstream.last["headers"]["X-Keygate-Key"] == victim.app_key
            assert "Cookie" not in upstream.last["headers"]
        finally:
            nginx_process.stop(child)


def test_headers_are_copied_only_when_a_cookie_holds_the_plain_name() -> None:
    """The proxy path is hot: a request without the plain-named cookie (the key/token
    headers, other cookies, the ``__Host-`` one) keeps its headers, uncopied."""
    name = "keygate_session"
    for pairs in ([("X-API-AppKey", "k"), ("X-API-AppToken", "t")],
                  [("Cookie", "theme=dark; keygate_sessionx=1")],
                  [("Cookie", f"__Host-{name}=own")]):
        headers = CIMultiDictProxy(CIMultiDict(pairs))
        assert credentials_over_tls(headers, name) is headers
        assert credentials_over_tls(headers, "") is headers
    planted = CIMultiDictProxy(CIMultiDict([
        ("Cookie", f"a=1; {name}=x; __Host-{name}=own"), ("X-Other", "1"),
        ("cookie", f" {name}=y")]))
    assert list(credentials_over_tls(planted, name).items()) == [
        ("Cookie", f"a=1; __Host-{name}=own"), ("X-Other", "1")]
