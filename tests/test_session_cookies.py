"""The session cookie attacked from beside it: cookies that another host of the site
plants next to the administrator's (same name, ``Domain=`` the parent, a longer
``Path`` so they come first), the ``__Host-`` name over TLS, and the places that must
know both names (the CSRF check, what reaches the upstream, sign-out). Real
redis-server, real aiohttp servers, real Casbin."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Key

from gateway.app import build_gateway
from gateway.management import build_management_app
from gateway.pipeline.authenticators import MAX_SESSION_COOKIES
from gateway.store import CLI_ACTOR

LOGIN = "/api/v1/auth/login"
LOGOUT = "/api/v1/auth/logout"
KEYS = "/api/v1/accounts/acme/keys"
OVER_TLS = {"X-Forwarded-Proto": "https"}  # what a trusted TLS front says
PROOF = {"X-Keygate-CSRF": "1"}  # what the admin page sends with every write


async def session_of(management: Any, key: Key, **headers: str) -> str:
    answer = await management.post(LOGIN, json={"appKey": key.app_key,
                                                "appToken": key.token}, headers=headers)
    assert answer.status == 200, await answer.text()
    return (await answer.json())["token"]


def tampered(token: str) -> str:
    head, body, signature = token.split(".")
    return f"{head}.{body}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"


@pytest.fixture
async def behind_tls(gateway, make_settings, clock, aiohttp_client) -> Any:
    """The management port of an instance behind a trusted front that terminates TLS."""
    behind = build_gateway(make_settings(store_prefix=gateway.settings.store_prefix,
                                         trusted_proxies=["127.0.0.1/32"]), clock=clock)
    behind.start()
    yield await aiohttp_client(build_management_app(behind))
    await behind.close()


async def test_a_cookie_planted_before_the_session_does_not_lock_its_holder_out(
    gateway, management, proxy, make_key, upstream
):
    """The first session cookie alone was read: a cookie of the same name that another
    host of the site set for the whole domain, on a longer path, comes first in the
    browser's Cookie header, and every request of the administrator was refused."""
    key = await make_key("acme", ["owner"])
    session = await session_of(management, key)
    ended = await make_key("acme", ["owner"])
    stale = await session_of(management, ended)
    await gateway.store.update_key("acme", ended.app_key, actor=CLI_ACTOR, status="inactive")
    for planted in ("garbage", tampered(session), stale, "a.b.c"):
        cookie = {"Cookie": f"keygate_session={planted}; theme=dark; keygate_session={session}"}
        answer = await proxy.get("/orders/1", headers=cookie)
        assert answer.status == 200, (planted, await answer.text())
        assert upstream.last["headers"]["X-Keygate-Key"] == key.app_key
        assert "keygate_session" not in upstream.last["headers"]["Cookie"]
        assert (await management.get(KEYS, headers=cookie)).status == 200, planted
    # none authenticates: the first refusal is the answer
    only_planted = {"Cookie": f"keygate_session={tampered(session)}; keygate_session={stale}"}
    refused = await proxy.get("/orders/1", headers=only_planted)
    assert refused.status == 401
    assert (await refused.json())["error"]["code"] == "invalid_session"


async def test_only_a_few_session_cookies_are_tried_per_request(management, proxy, make_key):
    """Each cookie may cost a signature check: a request carrying a hundred is not a
    hundred checks. Past MAX_SESSION_COOKIES, the rest are not read."""
    key = await make_key("acme", ["orders-reader"])
    session = await session_of(management, key)
    forged = [tampered(session)[:-4] + f"{i:04d}" for i in range(100)]
    first = "; ".join(f"keygate_session={f}" for f in forged[:MAX_SESSION_COOKIES - 1])
    answer = await proxy.get("/orders/1",
                             headers={"Cookie": f"{first}; keygate_session={session}"})
    assert answer.status == 200
    many = "; ".join(f"keygate_session={f}" for f in forged[:MAX_SESSION_COOKIES])
    answer = await proxy.get("/orders/1",
                             headers={"Cookie": f"{many}; keygate_session={session}"})
    assert answer.status == 401


async def test_over_tls_the_cookie_is_host_prefixed_and_wins_over_a_planted_one(
    behind_tls, make_key
):
    """Over TLS, login sets ``__Host-keygate_session``: Secure, Path=/, no Domain, which
    browsers let no other host (nor plain HTTP) set or shadow. It is read first, so a
    session that another host of the site planted under the plain name, even a valid
    one of the planter's own key, does not replace the administrator's."""
    management = behind_tls
    victim = await make_key("acme", ["owner"])
    planter = await make_key("evil", ["owner"])
    answer = await management.post(LOGIN, headers=OVER_TLS, json={
        "appKey": victim.app_key, "appToken": victim.token, "cookie": True})
    assert answer.status == 200
    set_cookie = answer.headers["Set-Cookie"]
    assert set_cookie.startswith("__Host-keygate_session="), set_cookie
    attributes = {part.strip().partition("=")[0].lower() for part in set_cookie.split(";")}
    assert {"secure", "path", "httponly", "samesite"} <= attributes
    assert "domain" not in attributes and "Path=/;" in set_cookie + ";"
    own = answer.cookies["__Host-keygate_session"].value
    management.session.cookie_jar.clear()
    planted = await session_of(management, planter)
    both = {"Cookie": f"keygate_session={planted}; __Host-keygate_session={own}"}
    listed = await management.get(KEYS, headers={**both, **OVER_TLS})
    assert listed.status == 200, await listed.text()  # as the victim, not the planter
    # signing out ends the session of the __Host- cookie and clears both names; the
    # plain-named one is not read over TLS, so the planter's session is not touched
    out = await management.post(LOGOUT, headers={**both, **OVER_TLS, **PROOF})
    assert out.status == 204
    cleared = out.headers.getall("Set-Cookie")
    assert {c.partition("=")[0] for c in cleared} == {"__Host-keygate_session",
                                                      "keygate_session"}
    assert all("Secure" in c for c in cleared if c.startswith("__Host-"))
    again = await management.get(KEYS, headers={"Authorization": f"Bearer {own}"})
    assert again.status == 401
    assert (await again.json())["error"]["code"] == "session_ended"
    still = await management.get("/api/v1/accounts/evil/keys",
                                 headers={"Authorization": f"Bearer {planted}"})
    assert still.status == 200


async def test_over_tls_a_planted_plain_cookie_signs_nobody_in(behind_tls, make_key):
    """Over TLS the plain name was still read beside the ``__Host-`` one: another host
    of the site (or a plain-HTTP answer) could plant the planter's own valid session
    under it, and a browser holding no ``__Host-`` cookie yet was signed in as the
    planter (login fixation). Over TLS only the ``__Host-`` name is read now; without
    TLS the plain name is the cookie, as before."""
    management = behind_tls
    victim = await make_key("acme", ["owner"])
    planter = await make_key("evil", ["owner"])
    planted = await session_of(management, planter)
    only_planted = {"Cookie": f"theme=dark; keygate_session={planted}"}
    for path in ("/api/v1/accounts/evil/me", "/api/v1/accounts/evil/keys"):
        answer = await management.get(path, headers={**only_planted, **OVER_TLS})
        assert answer.status == 401, (path, await answer.text())
        assert (await answer.json())["error"]["code"] == "missing_credentials"
    # a write the page would send (with the proof) is not the planter's either
    write = await management.post("/api/v1/accounts/evil/keys", headers={
        **only_planted, **OVER_TLS, **PROOF}, json={"label": "x", "roles": []})
    assert write.status == 401, await write.text()
    listed = await management.get("/api/v1/accounts/evil/keys", headers=planter.headers)
    assert (await listed.json())["total"] == 1  # nothing was created
    # the __Host- cookie still signs in, and beside it the planted one changes nothing
    own = await session_of(management, victim)
    for cookie in (f"__Host-keygate_session={own}",
                   f"keygate_session={planted}; __Host-keygate_session={own}"):
        me = await management.get("/api/v1/accounts/acme/me",
                                  headers={"Cookie": cookie, **OVER_TLS})
        assert me.status == 200, await me.text()
        assert (await me.json())["appKey"] == victim.app_key
    # plain HTTP (no trusted proxy saying https): the plain name is the cookie
    plain = await management.get("/api/v1/accounts/evil/me", headers=only_planted)
    assert plain.status == 200, await plain.text()
    assert (await plain.json())["appKey"] == planter.app_key


async def test_without_tls_the_plain_cookie_is_the_session(management, make_key):
    """A deployment without TLS keeps the plain name: login sets it and it signs in; an
    ``X-Forwarded-Proto: https`` from a peer that is not a trusted proxy changes
    nothing."""
    key = await make_key("acme", ["owner"])
    answer = await management.post(LOGIN, json={"appKey": key.app_key,
                                                "appToken": key.token, "cookie": True})
    assert answer.headers["Set-Cookie"].startswith("keygate_session="), answer.headers
    session = answer.cookies["keygate_session"].value
    management.session.cookie_jar.clear()
    for headers in ({}, OVER_TLS):
        me = await management.get("/api/v1/accounts/acme/me", headers={
            "Cookie": f"keygate_session={session}", **headers})
        assert me.status == 200, await me.text()
        assert (await me.json())["appKey"] == key.app_key


async def test_a_write_that_only_the_host_cookie_authenticates_needs_the_csrf_proof(
    gateway, behind_tls, proxy, make_key, upstream
):
    """The CSRF check looked for the plain name only: a cross-origin form post that
    the ``__Host-`` cookie authenticated went through unchecked."""
    management = behind_tls
    owner = await make_key("acme", ["owner"])
    cookie = {"Cookie": f"__Host-keygate_session={await session_of(management, owner)}"}
    form = {**cookie, **OVER_TLS, "Content-Type": "application/x-www-form-urlencoded",
            "Origin": "https://evil.example.com"}
    answer = await management.post(KEYS, data=b'{"label": "x", "roles": []}', headers=form)
    assert answer.status == 403 and (await answer.json())["error"]["code"] == "csrf_refused"
    listed = await (await management.get(KEYS, headers=owner.headers)).json()
    assert listed["total"] == 1  # the owner alone: nothing was created
    before = len(upstream.requests)
    answer = await proxy.post("/orders/1", data=b"qty=1000", headers=form)
    assert answer.status == 403 and (await answer.json())["error"]["code"] == "csrf_refused"
    assert len(upstream.requests) == before
    # a read needs no proof, and the cookie never reaches the upstream
    read = {"Cookie": cookie["Cookie"] + "; theme=dark"}
    assert (await proxy.get("/orders/1", headers=read)).status == 200
    assert upstream.last["headers"]["Cookie"].strip() == "theme=dark"


async def test_an_upstream_cannot_set_the_session_cookie_under_either_name(proxy, make_key):
    """An upstream's Set-Cookie of the session cookie is dropped whatever spelling a
    browser reads as that name: the ``__Host-`` name, or the name with a space before
    the ``=`` (browsers trim it)."""
    key = await make_key("acme", ["orders-reader"])
    answer = await proxy.get("/orders/1", headers=key.headers, params=[
        ("set_cookie", "__Host-keygate_session=planted; Path=/; Secure"),
        ("set_cookie", "keygate_session =planted; Path=/api"),
        ("set_cookie", "theme=dark; Path=/")])
    assert answer.status == 200
    assert answer.headers.getall("Set-Cookie") == ["theme=dark; Path=/"]


async def test_signing_out_with_forged_sessions_spends_the_failure_budget(
    gateway, make_settings, clock, aiohttp_client, make_key
):
    """Sign-out checks the signature of each session it is sent and answered 204 for
    any, uncounted: anyone could make keygate check forged signatures without end (up
    to four per request). A forged one now counts as a failed authentication does on
    every port; a spent budget is 429 before any check, and a valid or expired
    session, or none, is never counted."""
    limited = build_gateway(make_settings(store_prefix=gateway.settings.store_prefix,
                                          auth_failure_limit=3), clock=clock)
    limited.start()
    management = await aiohttp_client(build_management_app(limited))
    key = await make_key("acme", ["orders-reader"])
    for _ in range(5):  # valid sessions, and none at all, cost nothing
        session = await session_of(management, key)
        assert (await management.post(LOGOUT, headers={
            "Cookie": f"keygate_session={session}", **PROOF})).status == 204
        assert (await management.post(LOGOUT)).status == 204
    forged = {"Cookie": f"keygate_session={tampered(session)}", **PROOF}
    statuses = [(await management.post(LOGOUT, headers=forged)).status for _ in range(5)]
    assert statuses[:3] == [204, 204, 204] and statuses[-1] == 429, statuses
    answer = await management.post(LOGOUT, headers=forged)
    assert answer.status == 429 and "Retry-After" in answer.headers
    error = (await answer.json())["error"]
    assert error["code"] == "too_many_failures" and "Set-Cookie" not in answer.headers
    await limited.close()
