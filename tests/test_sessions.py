"""Sessions end to end: login, Bearer and cookie on every port, the key's state checked
on every request, rotation across instances, identity tokens verified by an upstream
against the JWKS. Real redis-server, real aiohttp servers, real Casbin."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import jwt
import pytest
from aiohttp import web
from conftest import Key, ProxyTestServer, default_routes

from gateway.app import build_gateway
from gateway.management import build_management_app
from gateway.store import CLI_ACTOR
from gateway.store.lookup import ENDED_SESSIONS_KEPT

LOGIN = "/api/v1/auth/login"


async def login(management: Any, key: Key, **extra: Any) -> dict[str, Any]:
    answer = await management.post(LOGIN, json={"appKey": key.app_key, "appToken": key.token,
                                                **extra})
    assert answer.status == 200, await answer.text()
    return await answer.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_login_gives_a_session_that_works_on_the_proxy_port(
    management, proxy, make_key, upstream
):
    key = await make_key("acme", ["orders-reader"])
    session = await login(management, key)
    assert set(session) == {"token", "expires", "appKey", "account"}
    assert session["appKey"] == key.app_key and session["account"] == "acme"
    claims = jwt.decode(session["token"], options={"verify_signature": False})
    header = jwt.get_unverified_header(session["token"])
    assert header["alg"] == "ES256" and header["kid"]
    assert {"iss", "aud", "sub", "acct", "iat", "nbf", "exp", "jti", "gen"} <= set(claims)
    assert claims["exp"] - claims["iat"] == 6 * 3600
    answer = await proxy.get("/orders/1", headers=bearer(session["token"]))
    assert answer.status == 200
    forwarded = upstream.last["headers"]
    assert "Authorization" not in forwarded  # keygate's session never reaches the upstream
    assert forwarded["X-Keygate-Key"] == key.app_key
    assert forwarded["X-Keygate-Roles"] == "orders-reader"
    # authorization runs as for the pair: orders-reader may not write
    denied = await proxy.post("/orders/1", headers=bearer(session["token"]))
    assert denied.status == 403 and (await denied.json())["error"]["code"] == "not_permitted"


async def test_a_cookie_login_keeps_the_session_out_of_the_body(management, make_key):
    """With ``cookie: true`` the session is in the HttpOnly cookie alone: a script of the
    page that signed in cannot read it from the answer either. Without it the body is
    the only place an API client finds it."""
    key = await make_key("acme", ["api-keys-viewer"])
    answer = await management.post(LOGIN, json={"appKey": key.app_key,
                                                "appToken": key.token, "cookie": True})
    assert answer.status == 200, await answer.text()
    body = await answer.json()
    assert set(body) == {"expires", "appKey", "account"}, body
    assert body["appKey"] == key.app_key and body["account"] == "acme"
    session = answer.cookies["keygate_session"].value
    assert session not in await answer.text()
    management.session.cookie_jar.clear()
    me = await management.get("/api/v1/accounts/acme/me", headers=bearer(session))
    assert me.status == 200, await me.text()  # the cookie's value is the session itself
    assert (await me.json())["appKey"] == key.app_key
    plain = await login(management, key, cookie=False)
    assert set(plain) == {"token", "expires", "appKey", "account"}


async def test_wrong_credentials_get_the_proxys_401_and_logins_are_budgeted(
    gateway, make_settings, clock, aiohttp_client, make_key
):
    key = await make_key("acme", ["orders-reader"])
    limited = build_gateway(make_settings(store_prefix=gateway.settings.store_prefix,
                                          auth_failure_limit=3), clock=clock)
    management = await aiohttp_client(build_management_app(limited))
    bodies = []
    wrong = key.token[:-1] + ("x" if key.token[-1] != "x" else "y")
    for body in ({"appKey": key.app_key, "appToken": wrong},
                 {"appKey": "kgk_acme_nonexistent", "appToken": key.token},
                 {"appKey": "garbage", "appToken": "garbage"}):
        answer = await management.post(LOGIN, json=body)
        assert answer.status == 401
        bodies.append((await answer.json())["error"])
    assert {b["code"] for b in bodies} == {"invalid_credentials"}
    assert len({b["message"] for b in bodies}) == 1
    statuses = [(await management.post(LOGIN, json={"appKey": key.app_key,
                                                    "appToken": "kgt_wrong"})).status
                for _ in range(3)]
    assert 429 in statuses  # the budget (3 per window) is spent
    # once spent, even the right pair waits: logins are no faster way to guess tokens
    blocked = await management.post(LOGIN, json={"appKey": key.app_key, "appToken": key.token})
    assert blocked.status == 429 and "Retry-After" in blocked.headers
    await limited.close()


@pytest.mark.parametrize("body,code", [
    ("null", "bad_json"), ([], "bad_json"), ({}, "missing_field"),
    ({"appKey": "k"}, "missing_field"), ({"appKey": 1, "appToken": "t"}, None),
    ({"appKey": "k", "appToken": "t", "extra": 1}, "unknown_field"),
    ({"appKey": "k" * 300, "appToken": "t"}, None),
    ({"appKey": "k\x00", "appToken": "t"}, None),
    ({"appKey": "k", "appToken": "t", "cookie": "yes"}, None),
])
async def test_malformed_logins_are_400s(management, body, code):
    if isinstance(body, str):
        answer = await management.post(LOGIN, data=body,
                                       headers={"Content-Type": "application/json"})
    else:
        answer = await management.post(LOGIN, json=body)
    assert answer.status == 400, await answer.text()
    error = (await answer.json())["error"]
    assert code is None or error["code"] == code
    assert "\x00" not in error["message"]


async def test_a_session_stops_on_the_next_request_when_its_key_is_deactivated_or_deleted(
    gateway, management, proxy, make_key
):
    key = await make_key("acme", ["orders-reader"])
    token = (await login(management, key))["token"]
    assert (await proxy.get("/orders/1", headers=bearer(token))).status == 200
    await gateway.store.update_key("acme", key.app_key, actor=CLI_ACTOR, status="inactive")
    answer = await proxy.get("/orders/1", headers=bearer(token))
    assert answer.status == 401 and (await answer.json())["error"]["code"] == "key_inactive"
    await gateway.store.update_key("acme", key.app_key, actor=CLI_ACTOR, status="active")
    assert (await proxy.get("/orders/1", headers=bearer(token))).status == 200
    await gateway.store.delete_key("acme", key.app_key, actor=CLI_ACTOR)
    answer = await proxy.get("/orders/1", headers=bearer(token))
    assert answer.status == 401 and (await answer.json())["error"]["code"] == "invalid_session"


async def test_a_session_loses_a_role_on_the_next_request_after_it_is_taken(
    management, proxy, make_key
):
    """A session carries no roles: the key's roles (its own, and a grant of another
    account) are read as for the pair on every request, through the warm credential
    cache, so a role taken from the key is gone from its session on the next request."""
    owner = await make_key("acme", ["owner"], label="owner")
    admin = await make_key("acme", ["user-admin-restricted", "orders-reader"], label="admin")
    partner = await make_key("beta", ["orders-reader"], label="partner")
    granted = await management.post(
        "/api/v1/accounts/acme/external-keys",
        json={"appKey": partner.app_key, "roles": ["api-keys-viewer", "orders-reader"]},
        headers=owner.headers)
    assert granted.status == 201, await granted.text()
    keys = "/api/v1/accounts/acme/keys"
    for key, path in ((admin, f"{keys}/{admin.app_key}"),
                      (partner, f"/api/v1/accounts/acme/external-keys/{partner.app_key}")):
        session = bearer((await login(management, key))["token"])
        for _ in range(2):  # the key's state is in the credential cache now
            assert (await management.get(keys, headers=session)).status == 200
        taken = await management.patch(path, json={"roles": ["orders-reader"]},
                                        headers=owner.headers)
        assert taken.status == 200, await taken.text()
        answer = await management.get(keys, headers=session)
        assert answer.status == 403, await answer.text()
        assert (await answer.json())["error"]["code"] == "not_permitted"
        assert (await proxy.get("/orders/1", headers=session)).status == 200  # what it kept


async def test_a_session_lives_only_as_long_as_the_token_it_came_from(
    gateway, management, proxy, make_key, admin_key
):
    key = await make_key("acme", ["orders-reader"])
    old_session = (await login(management, key))["token"]
    base = f"/api/v1/accounts/acme/keys/{key.app_key}/token"
    later = await management.post(base + "/renew", headers=admin_key.headers,
                                  json={"deleteOld": "later"})
    assert later.status == 200, await later.text()
    new_token = (await later.json())["appToken"]
    # during the overlap both tokens work, and so do sessions from either
    new_session = (await login(management, Key(key.app_key, new_token)))["token"]
    for token in (old_session, new_session):
        assert (await proxy.get("/orders/1", headers=bearer(token))).status == 200
    finish = await management.post(base + "/finish-renewal", headers=admin_key.headers)
    assert finish.status == 200, await finish.text()
    answer = await proxy.get("/orders/1", headers=bearer(old_session))
    assert answer.status == 401 and (await answer.json())["error"]["code"] == "invalid_session"
    assert (await proxy.get("/orders/1", headers=bearer(new_session))).status == 200
    now = await management.post(base + "/renew", headers=admin_key.headers,
                                json={"deleteOld": "now"})
    assert now.status == 200, await now.text()
    answer = await proxy.get("/orders/1", headers=bearer(new_session))
    assert answer.status == 401


async def test_bearer_works_on_the_management_api(management, admin_key):
    token = (await login(management, admin_key))["token"]
    answer = await management.get("/api/v1/accounts/acme/keys", headers=bearer(token))
    assert answer.status == 200
    other = await management.get("/api/v1/accounts/beta/keys", headers=bearer(token))
    assert other.status == 403


async def test_the_session_cookie_authenticates_and_never_reaches_the_upstream(
    management, proxy, make_key, upstream
):
    key = await make_key("acme", ["orders-reader"])
    answer = await management.post(LOGIN, json={"appKey": key.app_key,
                                                "appToken": key.token, "cookie": True})
    assert answer.status == 200
    cookie = answer.headers["Set-Cookie"]
    assert "keygate_session=" in cookie and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie and "Path=/" in cookie
    token = answer.cookies["keygate_session"].value
    headers = {"Cookie": f"theme=dark; keygate_session={token}; lang=en"}
    assert (await proxy.get("/orders/1", headers=headers)).status == 200
    forwarded = upstream.last["headers"]
    assert token not in str(forwarded)
    assert forwarded["Cookie"].replace(" ", "") == "theme=dark;lang=en"
    # the key/token headers authenticate; the cookie that a signed-in browser adds to
    # every request to this host still never reaches the upstream
    other = await make_key("acme", ["orders-reader"])
    assert (await proxy.get("/orders/1", headers={**other.headers, **headers})).status == 200
    forwarded = upstream.last["headers"]
    assert token not in str(forwarded)
    assert forwarded["Cookie"].replace(" ", "") == "theme=dark;lang=en"
    # the client's jar holds the cookie: a sign-out it carries needs the CSRF proof
    logout = await management.post("/api/v1/auth/logout", headers={"X-Keygate-CSRF": "1"})
    assert logout.status == 204 and "keygate_session=" in logout.headers["Set-Cookie"]


async def test_signing_out_ends_that_session_on_every_port_and_no_other(
    management, proxy, make_key
):
    key = await make_key("acme", ["orders-reader"])
    first, second = (await login(management, key))["token"], (await login(management, key))["token"]
    assert (await proxy.get("/orders/1", headers=bearer(first))).status == 200  # now cached
    assert (await management.post("/api/v1/auth/logout", headers=bearer(first))).status == 204
    for client, path in ((proxy, "/orders/1"), (management, "/api/v1/accounts/acme/keys")):
        ended = await client.get(path, headers=bearer(first))
        assert ended.status == 401, path
        assert (await ended.json())["error"]["code"] == "session_ended"
        assert (await client.get(path, headers=bearer(second))).status in (200, 403), path
    # the ended session cannot sign out again, nor does a forged or foreign token count
    for token in (first, "not-a-jwt", jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256")):
        assert (await management.post("/api/v1/auth/logout", headers=bearer(token))).status == 204
    assert (await proxy.get("/orders/1", headers=bearer(second))).status == 200


async def test_a_cookie_session_signed_out_is_refused_though_the_cookie_is_replayed(
    management, proxy, make_key
):
    key = await make_key("acme", ["orders-reader"])
    answer = await management.post(LOGIN, json={"appKey": key.app_key,
                                                "appToken": key.token, "cookie": True})
    token = answer.cookies["keygate_session"].value
    management.session.cookie_jar.clear()
    replayed = {"Cookie": f"keygate_session={token}"}
    assert (await proxy.get("/orders/1", headers=replayed)).status == 200
    out = await management.post("/api/v1/auth/logout",
                                headers={**replayed, "X-Keygate-CSRF": "1"})
    assert out.status == 204 and "keygate_session=" in out.headers["Set-Cookie"]
    assert (await proxy.get("/orders/1", headers=replayed)).status == 401


async def test_signing_out_again_and_again_keeps_a_keys_hash_small(
    gateway, management, proxy, make_key
):
    """A key holder who signs in and out without end cannot grow the key's hash: past
    the sessions a key keeps ended by name, the next sign-out ends every session issued
    until then (one signed in later still works)."""
    key = await make_key("acme", ["orders-reader"])
    tokens = [(await login(management, key))["token"] for _ in range(ENDED_SESSIONS_KEPT + 1)]
    for token in tokens[:-1]:
        assert (await management.post("/api/v1/auth/logout", headers=bearer(token))).status == 204
    assert (await proxy.get("/orders/1", headers=bearer(tokens[-1]))).status == 200
    name = gateway.store.names.key(key.app_key)
    before = len(await gateway.store.redis.hget(name, "sessEnd"))
    assert (await management.post("/api/v1/auth/logout",
                                  headers=bearer(tokens[-1]))).status == 204
    assert len(await gateway.store.redis.hget(name, "sessEnd")) < before / 10
    for token in (tokens[0], tokens[-2], tokens[-1]):  # (each a failure, as a wrong token)
        assert (await proxy.get("/orders/1", headers=bearer(token))).status == 401
    later = (await login(management, key))["token"]  # in the same second, too
    assert (await proxy.get("/orders/1", headers=bearer(later))).status == 200


async def test_signing_out_through_an_instance_whose_clock_differs_ends_what_it_should(
    gateway, make_key
):
    """Past the sessions kept by name, a sign-out ends every session issued until the
    signing instance's now: an instance whose clock is behind must not move that back
    (bringing back sessions already ended), and the session signed out of ends though an
    instance whose clock is ahead issued it."""
    key = await make_key("acme", ["orders-reader"])
    store, now = gateway.store, 1_790_000_000

    async def sign_out_many(clock: int, last_issued: int) -> None:
        for i in range(ENDED_SESSIONS_KEPT):
            await store.end_session(key.app_key, f"{clock}-{i}", clock - 60, clock + 3600,
                                    clock)
        await store.end_session(key.app_key, f"{clock}-last", last_issued, clock + 3600, clock)

    await sign_out_many(now, now)
    assert (await store.auth_lookup(key.app_key, "acme")).ended_sessions.ends("b", now - 2)
    await sign_out_many(now - 5, now + 3)  # a clock 5 s behind; the session from one ahead
    ended = (await store.auth_lookup(key.app_key, "acme")).ended_sessions
    assert ended.ends("b", now - 2)  # ended at the first overflow, still ended
    assert ended.ends(f"{now - 5}-last", now + 3)  # the session signed out of
    assert not ended.ends("c", now + 4)  # a later one lives


async def test_a_session_signed_in_the_second_every_session_was_ended_lives(
    gateway, management, proxy, make_key
):
    """Past the sessions kept by name, a sign-out ends every session issued until that
    second (sessions carry whole seconds), here through an instance whose clock runs 2 s
    ahead. A sign-in right after it got a session already ended (401 at once); it is now
    stamped the second after, which every instance accepts within the leeway."""
    key = await make_key("acme", ["orders-reader"])
    ahead = int(time.time()) + 2
    for i in range(ENDED_SESSIONS_KEPT + 1):
        await gateway.store.end_session(key.app_key, f"s{i}", ahead - 60, ahead + 3600, ahead)
    assert (await gateway.store.auth_lookup(key.app_key, "acme")).ended_sessions.until == ahead
    fresh = (await login(management, key))["token"]
    assert (await proxy.get("/orders/1", headers=bearer(fresh))).status == 200
    claims = jwt.decode(fresh, options={"verify_signature": False})
    assert claims["iat"] == claims["nbf"] == ahead + 1


async def test_a_session_signed_out_stays_ended_through_the_leeway_after_its_expiry(
    gateway, make_settings, clock, aiohttp_client, make_key
):
    """A session is accepted until its expiry plus the leeway (jwt_leeway): signing out of
    another must not forget it before then, nor may it work again in that time."""
    key = await make_key("acme", ["orders-reader"])
    short = build_gateway(make_settings(store_prefix=gateway.settings.store_prefix,
                                        session_ttl=1, jwt_leeway=10), clock=clock)
    short.start()
    management = await aiohttp_client(build_management_app(short))
    first = (await login(management, key))["token"]
    assert (await management.post("/api/v1/auth/logout", headers=bearer(first))).status == 204
    await asyncio.sleep(2.01)  # past its expiry (sessions carry the system clock's seconds)
    second = (await login(management, key))["token"]
    assert (await management.post("/api/v1/auth/logout", headers=bearer(second))).status == 204
    for token in (first, second):
        answer = await management.get("/api/v1/accounts/acme/keys", headers=bearer(token))
        assert answer.status == 401 and (await answer.json())["error"]["code"] == "session_ended"
    await short.close()


async def test_an_upstream_cannot_set_the_session_cookie(proxy, make_key):
    """The session cookie is the host's: an upstream that set it would replace the admin
    page's session in the browser (or plant one of its choosing). Its other cookies
    pass."""
    key = await make_key("acme", ["orders-reader"])
    answer = await proxy.get("/orders/1", headers=key.headers, params=[
        ("set_cookie", "keygate_session=planted; Path=/; HttpOnly"),
        ("set_cookie", " keygate_session=planted2"),
        ("set_cookie", "theme=dark; Path=/"),
        ("set_cookie", "keygate_session_hint=fine")])
    assert answer.status == 200
    assert answer.headers.getall("Set-Cookie") == ["theme=dark; Path=/",
                                                   "keygate_session_hint=fine"]


async def test_an_upstreams_own_bearer_token_is_not_keygates_and_passes_with_the_pair(
    proxy, make_key, upstream
):
    key = await make_key("acme", ["orders-reader"])
    theirs = jwt.encode({"sub": "user-7"}, "their-secret" * 4, algorithm="HS256")
    alone = await proxy.get("/orders/1", headers=bearer(theirs))
    assert alone.status == 401
    assert (await alone.json())["error"]["code"] == "missing_credentials"
    both = await proxy.get("/orders/1", headers={**key.headers, **bearer(theirs)})
    assert both.status == 200
    assert upstream.last["headers"]["Authorization"] == f"Bearer {theirs}"


async def test_a_keygate_session_beside_the_pair_never_reaches_the_upstream(
    management, proxy, make_key, upstream
):
    """The pair authenticates, but a session in the Authorization header is keygate's all
    the same (another key's here): an upstream that received it could call keygate as
    that key until the session expires."""
    key = await make_key("acme", ["orders-reader"])
    admin = await make_key("acme", ["owner"])
    session = (await login(management, admin))["token"]
    both = await proxy.get("/orders/1", headers={**key.headers, **bearer(session)})
    assert both.status == 200
    forwarded = upstream.last["headers"]
    assert "Authorization" not in forwarded and session not in str(forwarded)
    assert forwarded["X-Keygate-Key"] == key.app_key


@pytest.mark.parametrize("mangle", ["tamper", "identity", "truncate", "swap_kid"])
async def test_forged_sessions_are_refused(gateway, management, proxy, make_key, mangle):
    key = await make_key("acme", ["orders-reader"])
    token = (await login(management, key))["token"]
    head, body, signature = token.split(".")
    if mangle == "tamper":
        forged = f"{head}.{body[:-2]}{'A' if body[-2] != 'A' else 'B'}{body[-1]}.{signature}"
    elif mangle == "truncate":
        forged = f"{head}.{body}.{signature[:-4]}"
    elif mangle == "swap_kid":
        stranger = jwt.encode({"sub": key.app_key}, "x" * 32, algorithm="HS256",
                              headers={"kid": jwt.get_unverified_header(token)["kid"],
                                       "typ": "keygate-session+jwt"})
        forged = stranger
    else:  # an identity token (for upstreams) presented as a session
        forged = gateway.sessions.identity_token(key.app_key, "acme", "acme",
                                                 ["owner"], "orders", "write")
    answer = await proxy.get("/orders/1", headers=bearer(forged))
    assert answer.status == 401
    assert (await answer.json())["error"]["code"] in ("invalid_session", "missing_credentials")


async def test_rotation_reaches_every_instance_and_keeps_old_sessions(
    gateway, make_settings, clock, management, aiohttp_client, make_key
):
    key = await make_key("acme", ["orders-reader"])
    before = (await login(management, key))["token"]
    other = build_gateway(make_settings(store_prefix=gateway.settings.store_prefix),
                          clock=clock)
    other.start()
    try:
        other_proxy = await aiohttp_client(ProxyTestServer(other))
        other_management = await aiohttp_client(build_management_app(other))
        first_kid = (await (await other_management.get("/.well-known/jwks.json")).json())[
            "keys"][0]["kid"]
        assert first_kid == jwt.get_unverified_header(before)["kid"]  # one key, shared
        rotated = await gateway.sessions.rotate()
        for _ in range(200):  # the other instance hears of it on the channel
            if other.sessions.ring is not None and rotated.kid in other.sessions.ring.keys:
                break
            await asyncio.sleep(0.01)
        # published at once, beside the key that still signs: a verifier that fetches
        # the JWKS now knows the new key before any token carries it
        jwks = await (await other_management.get("/.well-known/jwks.json")).json()
        assert [k["kid"] for k in jwks["keys"]] == [first_kid, rotated.kid]
        meanwhile = (await login(other_management, key))["token"]
        assert jwt.get_unverified_header(meanwhile)["kid"] == first_kid
        assert other.sessions.ring.changes_at == rotated.signs_from
        # (the switch when its time comes: test_session_service.py)
        for token in (before, meanwhile):
            assert (await other_proxy.get("/orders/1", headers=bearer(token))).status == 200
    finally:
        await other.close()


async def test_a_rotation_at_once_signs_with_the_new_key_from_the_next_token(
    gateway, management, make_key
):
    """`keygate jwt rotate --now`, for a key believed leaked: no waiting for verifiers'
    caches, and a rotation already waiting for its time is overtaken, not kept."""
    key = await make_key("acme", ["orders-reader"])
    first = jwt.get_unverified_header((await login(management, key))["token"])["kid"]
    waiting = await gateway.sessions.rotate()
    urgent = await gateway.sessions.rotate(at_once=True)
    after = (await login(management, key))["token"]
    assert jwt.get_unverified_header(after)["kid"] == urgent.kid
    jwks = await (await management.get("/.well-known/jwks.json")).json()
    assert [k["kid"] for k in jwks["keys"]][0] == urgent.kid
    assert {first, waiting.kid} < {k["kid"] for k in jwks["keys"]}  # still verifying


async def test_after_a_rotation_at_once_both_live_keys_sessions_work_on_both_ports(
    gateway, management, proxy, make_key
):
    """Two live keys: after `keygate jwt rotate --now` the new key signs, and a session
    the previous key signed still works, on the proxy port and the management port
    alike, until its expiry; the JWKS publishes both, the signing key first."""
    key = await make_key("acme", ["user-admin-restricted", "orders-reader"], label="both")
    old_session = (await login(management, key))["token"]
    old_kid = jwt.get_unverified_header(old_session)["kid"]
    new = await gateway.sessions.rotate(at_once=True)
    assert new.kid != old_kid
    new_session = (await login(management, key))["token"]
    assert jwt.get_unverified_header(new_session)["kid"] == new.kid
    for token in (old_session, new_session):
        assert (await proxy.get("/orders/1", headers=bearer(token))).status == 200
        answer = await management.get("/api/v1/accounts/acme/keys", headers=bearer(token))
        assert answer.status == 200, await answer.text()
        refused = await management.get("/api/v1/accounts/beta/keys", headers=bearer(token))
        assert refused.status == 403  # authorized as the key, not merely let through
    jwks = await (await management.get("/.well-known/jwks.json")).json()
    assert [k["kid"] for k in jwks["keys"]] == [new.kid, old_kid]


async def test_an_upstream_verifies_the_identity_token_against_the_jwks(
    make_settings, clock, aiohttp_client, aiohttp_server, upstream
):
    """Oathkeeper's id_token mutator: the upstream fetches keygate's JWKS and verifies."""
    seen: list[dict[str, Any]] = []
    jwks_url: list[str] = []

    async def verifying(request: web.Request) -> web.Response:
        client = jwt.PyJWKClient(jwks_url[0])
        token = request.headers["X-Keygate-Identity"]
        signing = await asyncio.to_thread(client.get_signing_key_from_jwt, token)
        claims = jwt.decode(token, signing.key, algorithms=["ES256", "EdDSA"],
                            audience="keygate-upstream", issuer="keygate")
        seen.append(claims)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", verifying)
    verifier = await aiohttp_server(app)
    routes = [*default_routes(upstream.url),
              {"name": "signed", "path_prefix": "/signed", "account": "acme",
               "resource": "orders", "upstream": str(verifier.make_url("")).rstrip("/"),
               "identity_token": True}]
    gw = build_gateway(make_settings(routes=routes), clock=clock)
    gw.start()
    try:
        management = await aiohttp_client(build_management_app(gw))
        jwks_url.append(str(management.make_url("/.well-known/jwks.json")))
        proxy = await aiohttp_client(ProxyTestServer(gw))
        issued = await gw.lifecycle.create("acme", "k", ["orders-writer"], CLI_ACTOR)
        spoofed = {"X-API-AppKey": issued.record.app_key, "X-API-AppToken": issued.token,
                   "X-Keygate-Identity": "forged"}
        answer = await proxy.post("/signed/7", headers=spoofed)
        assert answer.status == 200, await answer.text()
        claims = seen[-1]
        assert claims["sub"] == issued.record.app_key and claims["account"] == "acme"
        assert claims["roles"] == ["orders-writer"]
        assert (claims["resource"], claims["action"]) == ("orders", "write")
        assert claims["exp"] - claims["iat"] == 60
        # a route without identity_token sends none
        assert (await proxy.get("/orders/1", headers=spoofed)).status == 200
        assert "X-Keygate-Identity" not in upstream.last["headers"]
    finally:
        await gw.close()


async def test_a_route_signs_identity_tokens_for_its_own_audience(
    make_settings, clock, aiohttp_client, upstream
):
    """One audience for every upstream let an upstream replay a token it received to
    another: a route's identity_token_audience gives its upstream tokens that no other
    upstream checking its own audience accepts."""
    routes = [{"name": name, "path_prefix": "/" + name, "account": "acme",
               "resource": "orders", "upstream": upstream.url, "identity_token": True,
               **({"identity_token_audience": "billing-api"} if name == "billing" else {})}
              for name in ("billing", "shipping")]
    gw = build_gateway(make_settings(routes=routes), clock=clock)
    gw.start()
    try:
        proxy = await aiohttp_client(ProxyTestServer(gw))
        issued = await gw.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
        pair = {"X-API-AppKey": issued.record.app_key, "X-API-AppToken": issued.token}
        ring = await gw.sessions.ready()
        audiences = {}
        for name in ("billing", "shipping"):
            assert (await proxy.get(f"/{name}/1", headers=pair)).status == 200
            token = upstream.last["headers"]["X-Keygate-Identity"]
            public = ring.verifying(jwt.get_unverified_header(token)["kid"]).public_key
            audiences[name] = jwt.decode(token, public, algorithms=["ES256", "EdDSA"],
                                         options={"verify_aud": False})["aud"]
            other = "keygate-upstream" if name == "billing" else "billing-api"
            with pytest.raises(jwt.InvalidAudienceError):
                jwt.decode(token, public, algorithms=["ES256", "EdDSA"], audience=other)
        assert audiences == {"billing": "billing-api", "shipping": "keygate-upstream"}
    finally:
        await gw.close()


async def test_no_session_token_is_logged(management, proxy, make_key, caplog):
    caplog.set_level(logging.DEBUG)
    key = await make_key("acme", ["orders-reader"])
    token = (await login(management, key))["token"]
    await proxy.get("/orders/1", headers=bearer(token))
    await proxy.get("/orders/1", headers=bearer(token[:-3] + "abc"))
    assert token not in caplog.text and key.token not in caplog.text


async def test_pem_signing_keys_from_settings(tmp_path, make_settings, clock, aiohttp_client):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    (tmp_path / "signing.pem").write_bytes(pem)
    gw = build_gateway(make_settings(jwt_private_key_files=[str(tmp_path / "signing.pem")]),
                       clock=clock)
    gw.start()
    try:
        management = await aiohttp_client(build_management_app(gw))
        jwks = await (await management.get("/.well-known/jwks.json")).json()
        assert [k["alg"] for k in jwks["keys"]] == ["EdDSA"]
        issued = await gw.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
        session = await login(management, Key(issued.record.app_key, issued.token))
        assert jwt.get_unverified_header(session["token"])["alg"] == "EdDSA"
        with pytest.raises(Exception, match="jwt_private_key_files"):
            await gw.sessions.rotate()
        assert await gw.store.signing_keys() == []  # nothing of it went to the store
    finally:
        await gw.close()


async def test_the_jwks_is_served_where_verifiers_look_and_under_the_api_prefix(management):
    root = await management.get("/.well-known/jwks.json")
    prefixed = await management.get("/api/v1/.well-known/jwks.json")
    assert root.status == prefixed.status == 200
    assert await root.json() == await prefixed.json()
    assert "max-age=" in root.headers["Cache-Control"]
    [key] = (await root.json())["keys"]
    assert {"kty", "crv", "x", "kid", "alg", "use"} <= set(key) and "d" not in key
