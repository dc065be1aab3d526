"""CSRF: a write whose only credential is the session cookie needs ``X-Keygate-CSRF: 1``,
and an ``Origin`` (and ``Sec-Fetch-Site``), when sent, of the management port's own.

First over plain HTTP against every kind of write, then in Chromium: a page on another
origin (another port of 127.0.0.1 — the same *site*, so the SameSite=Strict cookie is
sent along) posts a form and calls ``fetch`` at a signed-in administrator's keygate,
and changes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from ui_site import CHROMIUM_ARGS, Site, chromium_path, fresh_account, site, sync_playwright

from gateway.app import build_gateway
from gateway.management import build_management_app
from gateway.management.csrf import COOKIE_FREE_ROUTES
from gateway.store import CLI_ACTOR

CSRF = {"X-Keygate-CSRF": "1"}
KEYS = "/api/v1/accounts/acme/keys"
LOGOUT = "/api/v1/auth/logout"
RELOAD = "/api/v1/policy/reload"


async def session_cookie(management: Any, key: Any) -> dict[str, str]:
    login = await management.post("/api/v1/auth/login",
                                  json={"appKey": key.app_key, "appToken": key.token})
    assert login.status == 200, await login.text()
    return {"Cookie": f"keygate_session={(await login.json())['token']}"}


def own_origin(management: Any) -> str:
    return str(management.make_url("")).rstrip("/")


def assert_refused(status: int, body: dict[str, Any], secret: str = "") -> None:
    assert status == 403
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == "csrf_refused" and error["status"] == 403 and error["requestId"]
    assert "X-Keygate-CSRF" in error["message"] or "origin" in error["message"]
    if secret:
        assert secret not in json.dumps(body)


async def writes(management: Any, gateway: Any, make_key: Any) -> list[tuple[str, str, Any]]:
    """One of each kind of write, each allowed to the owner key if it were not forged."""
    target = await make_key("acme", ["orders-reader"], label="target")
    to_finish = await make_key("acme", ["orders-reader"], label="to finish")
    to_undo = await make_key("acme", ["orders-reader"], label="to undo")
    for pending in (to_finish, to_undo):
        await gateway.lifecycle.renew("acme", pending.app_key, CLI_ACTOR, keep_old=True)
    partner = await make_key("beta", ["orders-reader"])
    granted = await make_key("beta", ["orders-reader"])
    await gateway.store.add_grant("acme", granted.app_key, "", ["orders-reader"], CLI_ACTOR)
    return [
        ("POST", KEYS, {"label": "forged", "roles": ["owner"]}),
        ("PATCH", f"{KEYS}/{target.app_key}", {"label": "changed"}),
        ("POST", f"{KEYS}/{target.app_key}/token/renew", None),
        ("POST", f"{KEYS}/{to_finish.app_key}/token/finish-renewal", None),
        ("POST", f"{KEYS}/{to_undo.app_key}/token/undo-renewal", None),
        ("DELETE", f"{KEYS}/{target.app_key}", None),
        ("PUT", "/api/v1/accounts/acme/settings", {"renewalPeriodMonths": 6}),
        ("POST", "/api/v1/accounts/acme/external-keys",
         {"appKey": partner.app_key, "roles": ["orders-reader"]}),
        ("PATCH", f"/api/v1/accounts/acme/external-keys/{granted.app_key}", {"roles": []}),
        ("DELETE", f"/api/v1/accounts/acme/external-keys/{granted.app_key}", None),
        ("POST", RELOAD, None),
    ]


async def snapshot(gateway: Any) -> tuple[Any, ...]:
    """Everything a forged write could have changed in account acme."""
    events, _ = await gateway.store.audit_events("acme", before_id=None, limit=500,
                                                 accept=lambda e: not e.action.startswith(
                                                     "access."))
    return (len(events), await gateway.store.get_settings("acme"),
            sorted((g.app_key, g.roles, g.status) for g in await gateway.store.all_grants("acme")))


@pytest.mark.parametrize("extra", [
    {},
    {"X-Keygate-CSRF": "0"},
    {"X-Keygate-CSRF": "true"},
    {"X-Keygate-CSRF": ""},
    {"X-Keygate-CSRF": "1", "Origin": "http://127.0.0.1:1"},
    {"X-Keygate-CSRF": "1", "Origin": "null"},
    {"X-Keygate-CSRF": "1", "Sec-Fetch-Site": "same-site"},
    {"X-Keygate-CSRF": "1", "Sec-Fetch-Site": "cross-site"},
    {"Authorization": "Basic dXNlcjpwYXNz"},  # a browser adds Basic credentials by itself
])
async def test_every_cookie_authenticated_write_without_the_proof_is_refused(
    management, gateway, make_key, extra
):
    owner = await make_key("acme", ["owner", "policy-admin"], label="owner")
    cookie = await session_cookie(management, owner)
    forged = await writes(management, gateway, make_key)
    before = await snapshot(gateway)
    for method, path, body in forged:
        answer = await management.request(method, path, json=body,
                                          headers={**cookie, **extra})
        assert_refused(answer.status, await answer.json(),
                       cookie["Cookie"].split("=", 1)[1])
    assert await snapshot(gateway) == before  # nothing happened, not even half


async def test_with_the_header_and_the_own_origin_the_cookie_works(management, gateway,
                                                                   make_key):
    owner = await make_key("acme", ["owner", "policy-admin"], label="owner")
    cookie = await session_cookie(management, owner)
    proof = {**cookie, **CSRF, "Origin": own_origin(management), "Sec-Fetch-Site": "same-origin"}
    for method, path, body in await writes(management, gateway, make_key):
        if path == RELOAD:
            continue  # below
        answer = await management.request(method, path, json=body, headers=proof)
        assert answer.status < 300, (method, path, answer.status, await answer.text())


async def test_a_session_may_reload_the_policy_with_the_proof(management, make_key):
    owner = await make_key("acme", ["owner", "policy-admin"], label="owner")
    cookie = await session_cookie(management, owner)
    answer = await management.post(RELOAD, headers={**cookie, **CSRF})
    assert answer.status == 200, await answer.text()


async def test_reads_need_no_proof(management, make_key):
    owner = await make_key("acme", ["owner"])
    cookie = await session_cookie(management, owner)
    answer = await management.get(KEYS, headers={**cookie, "Origin": "http://evil.test",
                                                 "Sec-Fetch-Site": "cross-site"})
    assert answer.status == 200


async def test_writes_with_other_credentials_are_not_the_cookies(management, make_key):
    """The key/token headers and Bearer cannot be added by a browser on its own: such a
    write is the client's, even with a cookie beside it."""
    owner = await make_key("acme", ["owner"])
    cookie = await session_cookie(management, owner)
    session = cookie["Cookie"].split("=", 1)[1]
    for credentials in (owner.headers, {"Authorization": f"Bearer {session}"}):
        answer = await management.post(KEYS, headers={**cookie, **credentials},
                                       json={"label": "ok", "roles": ["orders-reader"]})
        assert answer.status == 201, await answer.text()


async def test_a_forged_write_is_refused_before_authentication(management, gateway,
                                                               make_key):
    """No store read, no failure budget spent: a garbage cookie gets the CSRF refusal,
    not the 401 that would tell the forger anything about the session."""
    answer = await management.post(KEYS, headers={"Cookie": "keygate_session=garbage"},
                                   json={"label": "x", "roles": []})
    assert_refused(answer.status, await answer.json(), "garbage")


async def test_signing_out_with_the_cookie_needs_the_proof(management, proxy, make_key):
    """Sign-out was left out of the check: a form or a fetch of another origin of the
    site (another port, another subdomain) signed the administrator out. Without the
    proof it is refused like any other cookie-authenticated write, and the session goes
    on; with it, or with the session as a Bearer token, it ends as before."""
    owner = await make_key("acme", ["owner"])
    cookie = await session_cookie(management, owner)
    session = cookie["Cookie"].split("=", 1)[1]
    for extra in ({}, {"X-Keygate-CSRF": "0"},
                  {"X-Keygate-CSRF": "1", "Origin": "http://127.0.0.1:1"},
                  {"X-Keygate-CSRF": "1", "Sec-Fetch-Site": "same-site"}):
        answer = await management.post(LOGOUT, headers={**cookie, **extra})
        assert answer.status == 403, (extra, answer.status)
        assert_refused(answer.status, await answer.json(), session)
        assert "Set-Cookie" not in answer.headers
        # the session goes on, on every port
        assert (await management.get(KEYS, headers=cookie)).status == 200, extra
        assert (await proxy.get("/orders/1", headers=cookie)).status == 200, extra
    # no cookie at all: nothing to prove, the cookie is cleared as before
    assert (await management.post(LOGOUT)).status == 204
    signed_out = await management.post(LOGOUT, headers={
        **cookie, **CSRF, "Origin": own_origin(management), "Sec-Fetch-Site": "same-origin"})
    assert signed_out.status == 204
    ended = await management.get(KEYS, headers=cookie)
    assert ended.status == 401 and (await ended.json())["error"]["code"] == "session_ended"
    # a Bearer session signs out without the proof (a browser never adds the header)
    other = (await session_cookie(management, owner))["Cookie"].split("=", 1)[1]
    bearer = {"Authorization": f"Bearer {other}"}
    assert (await management.post(LOGOUT, headers={**bearer, **cookie})).status == 204
    ended = await management.get(KEYS, headers=bearer)
    assert ended.status == 401 and (await ended.json())["error"]["code"] == "session_ended"


async def test_login_and_token_links_stay_usable_with_a_cookie(
    management, gateway, make_key
):
    owner = await make_key("acme", ["owner"])
    stale = {"Cookie": "keygate_session=stale.session.value"}
    login = await management.post("/api/v1/auth/login", headers=stale,
                                  json={"appKey": owner.app_key, "appToken": owner.token,
                                        "cookie": True})
    assert login.status == 200, await login.text()
    # a one-time link's page posts a plain form (no header can be added): the link is
    # its credential, and an administrator signed in to the page in the same browser
    # must still be able to open it
    cookie = await session_cookie(management, owner)
    created = await management.post(KEYS, headers=owner.headers,
                                    json={"label": "linked", "roles": ["orders-reader"],
                                          "delivery": "link"})
    link = (await created.json())["tokenLink"]
    path = link[link.index("/api/v1/"):]
    opened = await management.post(path, headers={**cookie, "Origin": "null"})
    assert opened.status == 200, await opened.text()
    assert (await opened.json())["appToken"].startswith("kgt_")


async def test_origins_behind_a_trusted_proxy_and_the_public_url(
    make_settings, clock, aiohttp_client, make_key, gateway
):
    behind = build_gateway(make_settings(store_prefix=gateway.settings.store_prefix,
                                         trusted_proxies=["127.0.0.1/32"],
                                         management_public_url="https://admin.example.com/"),
                           clock=clock)
    management = await aiohttp_client(build_management_app(behind))
    owner = await make_key("acme", ["owner"])
    cookie = await session_cookie(management, owner)
    body = {"label": "x", "roles": ["orders-reader"]}
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "keys.example.com"}
    accepted = [
        {"Origin": "https://keys.example.com", **forwarded},
        {"Origin": "https://admin.example.com"},
        {"Origin": own_origin(management)},
    ]
    refused = [
        {"Origin": "https://keys.example.com"},  # not what the proxy says
        {"Origin": "http://keys.example.com", **forwarded},  # the scheme counts
        {"Origin": "https://admin.example.com.evil.test"},
        {"Origin": "https://keys.example.com", "X-Forwarded-Proto": "https",
         "X-Forwarded-Host": "evil.test"},
    ]

    def sent(headers: dict[str, str]) -> dict[str, str]:
        # over TLS (the trusted proxy says https) the cookie is read by its __Host- name
        # alone, the name login sets there
        over_tls = headers.get("X-Forwarded-Proto") == "https"
        jar = {"Cookie": "__Host-" + cookie["Cookie"]} if over_tls else cookie
        return {**jar, **CSRF, **headers}

    for headers in accepted:
        answer = await management.post(KEYS, json=body, headers=sent(headers))
        assert answer.status == 201, (headers, await answer.text())
    for headers in refused:
        answer = await management.post(KEYS, json=body, headers=sent(headers))
        assert_refused(answer.status, await answer.json())
    await behind.close()


async def test_a_cookie_write_to_an_unknown_route_is_a_plain_404(management, make_key):
    owner = await make_key("acme", ["owner"])
    cookie = await session_cookie(management, owner)
    answer = await management.post("/api/v1/nothing/here", headers=cookie)
    assert answer.status in (403, 404, 405)
    assert set(await answer.json()) == {"error"}


@pytest.mark.parametrize("extra", [
    {},
    {"X-Keygate-CSRF": "1", "Origin": "http://127.0.0.1:1"},
    {"X-Keygate-CSRF": "1", "Origin": "null"},
    {"X-Keygate-CSRF": "1", "Origin": "http://[::1"},
    {"X-Keygate-CSRF": "1", "Sec-Fetch-Site": "same-site"},
])
async def test_the_proxy_port_refuses_cookie_writes_without_the_proof(
    management, proxy, make_key, upstream, extra
):
    """The cookie (host-only, Path=/) reaches the proxy port as well: a form on another
    port of the site posting to a proxied route is refused before the upstream, by any
    unsafe method; with the proof from the proxy port's own origin, or with the
    key/token headers, the write passes, and reads need no proof."""
    key = await make_key("acme", ["owner"])
    cookie = await session_cookie(management, key)
    before = len(upstream.requests)
    # every method routes do not read as "read", not only those of forms and REST: a
    # page of another origin sends PURGE or PROPFIND once a preflight is granted, and
    # front proxies often answer preflights by themselves
    for method in ("POST", "PUT", "PATCH", "DELETE", "PURGE", "PROPFIND", "MKCOL"):
        answer = await proxy.request(method, "/orders/1", data=b"qty=1000", headers={
            **cookie, **extra, "Content-Type": "application/x-www-form-urlencoded"})
        assert_refused(answer.status, await answer.json(), cookie["Cookie"])
    assert len(upstream.requests) == before
    own = str(proxy.make_url("")).rstrip("/")
    proven = await proxy.post("/orders/1", data=b"{}", headers={
        **cookie, **CSRF, "Origin": own, "Sec-Fetch-Site": "same-origin"})
    assert proven.status == 200, await proven.text()
    assert (await proxy.get("/orders/1", headers=cookie)).status == 200
    paired = await proxy.post("/orders/1", headers={**key.headers, **cookie})
    assert paired.status == 200, await paired.text()


async def test_a_login_from_another_origin_cannot_plant_a_session_cookie(management, make_key):
    """Login needs no CSRF proof because its body must be JSON, which another origin's
    page cannot make a browser send without a preflight. A body with no Content-Type
    at all it can (``fetch`` of a Blob in ``no-cors`` mode): such a body is not JSON
    (415), so that page cannot sign the administrator's browser in as its own key."""
    attacker = await make_key("evil", ["owner"])
    body = json.dumps({"appKey": attacker.app_key, "appToken": attacker.token,
                       "cookie": True}).encode()
    answer = await management.post(
        "/api/v1/auth/login", data=body, skip_auto_headers=["Content-Type"],
        headers={"Origin": "http://127.0.0.1:9", "Sec-Fetch-Site": "same-site",
                 "Sec-Fetch-Mode": "no-cors"})
    assert answer.status == 415, await answer.text()
    assert (await answer.json())["error"]["code"] == "unsupported_media_type"
    assert "keygate_session" not in answer.cookies
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        answer = await management.post("/api/v1/auth/login", data=body,
                                       headers={"Content-Type": content_type})
        assert answer.status == 415, await answer.text()


async def test_the_routes_left_alone_exist(gateway):
    """A renamed login or link route must not silently fall under the check
    (or out of it): each one named is routed, for POST."""
    app = build_management_app(gateway)
    routed = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource is not None}
    for path in COOKIE_FREE_ROUTES:
        assert ("POST", path) in routed, path


# -- in a browser, from another origin -------------------------------------------------
# function-scoped: while playwright's sync API runs, no asyncio test can (keep async
# tests above this line all the same)
@pytest.fixture
def browser() -> Iterator[Any]:
    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def served(redis_url: str) -> Iterator[Site]:
    with site(redis_url) as running:
        yield running


ATTACKER_FORM = """<!doctype html><title>win a prize</title>
<form method="post" action="{target}"></form>
<script>document.forms[0].submit()</script>"""

ATTACKER_FETCH = """<!doctype html><title>win a prize</title>
<script>
window.results = (async () => {{
  const results = {{}};
  try {{
    await fetch("{target}", {{method: "POST", credentials: "include", mode: "no-cors"}});
    results.simple = "sent";
  }} catch (e) {{ results.simple = "failed: " + e; }}
  try {{
    const r = await fetch("{target}", {{method: "POST", credentials: "include",
      headers: {{"X-Keygate-CSRF": "1"}}}});
    results.preflighted = "answered " + r.status;
  }} catch (e) {{ results.preflighted = "blocked"; }}
  try {{
    const r = await fetch("{delete}", {{method: "DELETE", credentials: "include",
      headers: {{"X-Keygate-CSRF": "1", "Content-Type": "application/json"}}}});
    results.deleted = "answered " + r.status;
  }} catch (e) {{ results.deleted = "blocked"; }}
  return results;
}})();
</script>"""


def attacker(served: Site, pages: dict[str, str]) -> str:
    """Another origin: a server of its own on another port of 127.0.0.1."""

    async def start(gateway: Any) -> str:
        app = web.Application()
        for path, html in pages.items():
            async def page(request: web.Request, html: str = html) -> web.Response:
                return web.Response(text=html, content_type="text/html")
            app.router.add_get(path, page)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    return served.call(start)


def sign_in(page: Any, served: Site, key: Any) -> None:
    page.goto(served.management + "/admin/")
    page.get_by_label("API key", exact=True).fill(key.app_key)
    page.get_by_label("API token", exact=True).fill(key.token)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("tab", name="Generated keys").wait_for()


def test_a_page_on_another_origin_cannot_write_with_the_administrators_cookie(
    browser, served
):
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    victim = served.make_key(account, ["orders-reader"], label="victim")

    async def renew(gateway: Any) -> str:
        issued = await gateway.lifecycle.renew(account, victim.app_key, CLI_ACTOR, keep_old=True)
        return issued.token

    new_token = served.call(renew)
    base = f"{served.management}/api/v1/accounts/{account}/keys/{victim.app_key}"
    finish = f"{base}/token/finish-renewal"
    other = attacker(served, {
        "/form": ATTACKER_FORM.format(target=finish),
        "/fetch": ATTACKER_FETCH.format(target=finish, delete=base),
    })
    context = browser.new_context()
    try:
        page = context.new_page()
        sign_in(page, served, owner)
        cookie = next(c for c in context.cookies() if c["name"] == "keygate_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        answers: list[tuple[str, str, int]] = []
        page.on("response", lambda r: answers.append((r.request.method, r.url, r.status)))

        # 1. a form: the browser navigates to keygate's answer
        page.goto(other + "/form")
        page.wait_for_url(finish)
        refusal = json.loads(page.locator("body").inner_text())
        # csrf_refused, not missing_credentials: the cookie was sent (same site), and
        # this is what stopped the write
        assert refusal["error"]["code"] == "csrf_refused", refusal

        # 2. fetch: the simple request is refused; the ones with a header never leave
        # the browser (the preflight gets no CORS grant)
        page.goto(other + "/fetch")
        results = page.evaluate("window.results")
        assert results == {"simple": "sent", "preflighted": "blocked", "deleted": "blocked"}
        page.wait_for_timeout(200)
    finally:
        context.close()
    to_keygate = [(m, u, s) for m, u, s in answers if u.startswith(served.management)]
    posts = [(m, s) for m, u, s in to_keygate if m in ("POST", "DELETE")]
    assert posts == [("POST", 403), ("POST", 403)], to_keygate
    assert all(m == "OPTIONS" or u.startswith(finish) for m, u, _ in to_keygate
               if m not in ("POST", "GET")), to_keygate
    # the renewal is still pending and both tokens work; the key was not deleted
    record = served.key(account, victim.app_key)
    assert record is not None and record.new_token_created is not None
    assert served.through_proxy(account, victim.app_key, victim.token)[0] == 200
    assert served.through_proxy(account, victim.app_key, new_token)[0] == 200

