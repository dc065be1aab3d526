"""Token renewal and one-time token links (issue items 1, 2 and 6), end to end.

Everything runs on the real stack: the private redis-server, real Casbin with
model.conf and policies/, both aiohttp apps. Whether a token works is always asked of
the proxy (200 or 401), never of the store. Time only moves through the ``clock``
fixture; nothing here sleeps to make an assertion true.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from conftest import ProxyTestServer, on_one_server_and_a_cluster

from gateway.app import build_gateway
from gateway.credentials import new_link_secret
from gateway.management import build_management_app
from gateway.management.metrics import build_metrics_app
from gateway.store import CLI_ACTOR

# the store, cache and revocation behaviour on one server and on a Redis Cluster
redis_url = on_one_server_and_a_cluster()

KEYS = "/api/v1/accounts/acme/keys"
LINK_PATH = re.compile(r"^(?P<base>https?://[^/]+)/api/v1/token-links/(?P<secret>[A-Za-z0-9_-]+)$")
DAY = 86_400.0


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso(clock: Any) -> str:
    return iso(int(clock() * 1000))  # type: ignore[return-value]


def creds(app_key: str, token: str) -> dict[str, str]:
    return {"X-API-AppKey": app_key, "X-API-AppToken": token}


@dataclass
class Reply:
    status: int
    text: str
    headers: Any
    content_type: str

    def json(self) -> Any:
        return orjson.loads(self.text)

    @property
    def code(self) -> str | None:
        body = self.json()
        return body.get("error", {}).get("code") if isinstance(body, dict) else None


_NO_BODY = object()


@dataclass
class Api:
    """The management client as an integrator uses it; keeps every response body so a
    test can check afterwards where tokens did (and did not) appear."""

    client: Any
    headers: dict[str, str]
    bodies: list[str] = field(default_factory=list)

    async def call(self, method: str, path: str, body: Any = _NO_BODY, *,
                   headers: dict[str, str] | None = None, **kwargs: Any) -> Reply:
        if body is not _NO_BODY:
            kwargs["json"] = body
        sent = self.headers if headers is None else headers
        async with self.client.request(method, path, headers=sent, **kwargs) as response:
            text = await response.text()
            reply = Reply(response.status, text, response.headers.copy(),
                          response.content_type)
        self.bodies.append(text)
        return reply

    async def create(self, label: str = "k", roles: list[str] | None = None,
                     **extra: Any) -> dict[str, Any]:
        reply = await self.call("POST", KEYS, {"label": label,
                                               "roles": roles or ["orders-reader"], **extra})
        assert reply.status == 201, reply.text
        return reply.json()

    async def renew(self, app_key: str, body: Any = _NO_BODY, **kwargs: Any) -> Reply:
        return await self.call("POST", f"{KEYS}/{app_key}/token/renew", body, **kwargs)

    async def finish(self, app_key: str, **kwargs: Any) -> Reply:
        return await self.call("POST", f"{KEYS}/{app_key}/token/finish-renewal", **kwargs)

    async def undo(self, app_key: str, **kwargs: Any) -> Reply:
        return await self.call("POST", f"{KEYS}/{app_key}/token/undo-renewal", **kwargs)

    async def get(self, app_key: str) -> dict[str, Any]:
        reply = await self.call("GET", f"{KEYS}/{app_key}")
        assert reply.status == 200, reply.text
        return reply.json()

    async def open_link(self, url: str, headers: dict[str, str] | None = None,
                        **kwargs: Any) -> Reply:
        """Opening a link needs no credentials, so none are sent."""
        return await self.call("POST", link_path(url), headers=headers or {}, **kwargs)

    async def show_link(self, url: str, headers: dict[str, str] | None = None) -> Reply:
        return await self.call("GET", link_path(url), headers=headers or {})


def link_path(url: str) -> str:
    match = LINK_PATH.match(url)
    assert match, url
    return url[len(match["base"]):]


def link_secret(url: str) -> str:
    match = LINK_PATH.match(url)
    assert match, url
    return match["secret"]


def expect_error(reply: Reply, status: int, code: str) -> str:
    assert reply.status == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code, error
    assert error["status"] == status
    return error["message"]


async def works(proxy: Any, app_key: str, token: str) -> bool:
    """Does this key + token get through the proxy? (keys here may read orders)."""
    response = await proxy.get("/orders/1", headers=creds(app_key, token))
    assert response.status in (200, 401), await response.text()
    if response.status == 401:
        assert (await response.json())["error"]["code"] == "invalid_credentials"
    return response.status == 200


@pytest.fixture
def api(management: Any, admin_key: Any) -> Api:
    return Api(management, admin_key.headers)


async def audit_actions(api: Api, app_key: str) -> list[str]:
    reply = await api.call("GET", f"/api/v1/accounts/acme/audit?target={app_key}&limit=500")
    assert reply.status == 200, reply.text
    return [e["action"] for e in reply.json()["items"]]


# -- renewal: later ----------------------------------------------------------------------
async def test_renew_later_keeps_both_tokens_without_time_limit_until_finish(
    api, proxy, make_key, clock
):
    key = await make_key("acme", ["orders-reader"])
    created_at = now_iso(clock)
    before = await api.get(key.app_key)
    assert before["creationDateToken"] == created_at
    assert before["creationDateNewToken"] is None

    clock.advance(3600)
    renewed_at = now_iso(clock)
    reply = await api.renew(key.app_key)  # no body at all: deleteOld defaults to later
    assert reply.status == 200, reply.text
    body = reply.json()
    new_token = body["appToken"]
    assert new_token != key.token
    assert re.fullmatch(r"kgt_[0-9A-Za-z]{36}", new_token)
    assert body["appKey"] == key.app_key
    assert body["creationDateToken"] == created_at
    assert body["creationDateNewToken"] == renewed_at
    assert "tokenLink" not in body

    assert await works(proxy, key.app_key, key.token)
    assert await works(proxy, key.app_key, new_token)
    # no time limit on the overlap: a year and a bit later both still work
    clock.advance(400 * DAY)
    assert await works(proxy, key.app_key, key.token)
    assert await works(proxy, key.app_key, new_token)

    shown = await api.get(key.app_key)
    assert shown["creationDateToken"] == created_at
    assert shown["creationDateNewToken"] == renewed_at
    assert "appToken" not in shown

    finished = await api.finish(key.app_key)
    assert finished.status == 200, finished.text
    fbody = finished.json()
    assert "appToken" not in fbody
    assert fbody["creationDateToken"] == renewed_at
    assert fbody["creationDateNewToken"] is None
    assert not await works(proxy, key.app_key, key.token)
    assert await works(proxy, key.app_key, new_token)
    assert (await api.get(key.app_key))["creationDateToken"] == renewed_at

    expect_error(await api.finish(key.app_key), 404, "no_pending_renewal")
    expect_error(await api.undo(key.app_key), 404, "no_pending_renewal")
    assert await works(proxy, key.app_key, new_token)

    # with nothing pending, a new renewal is allowed again
    again = await api.renew(key.app_key, {"deleteOld": "later"})
    assert again.status == 200, again.text
    assert await works(proxy, key.app_key, new_token)
    assert await works(proxy, key.app_key, again.json()["appToken"])


async def test_second_renewal_while_pending_is_409_saying_what_to_do(api, proxy, make_key):
    key = await make_key("acme", ["orders-reader"])
    first = await api.renew(key.app_key, {"deleteOld": "later"})
    assert first.status == 200
    first_token = first.json()["appToken"]
    for body in ({}, {"deleteOld": "later"}, {"deleteOld": "now"}, {"delivery": "link"}):
        message = expect_error(await api.renew(key.app_key, body), 409, "renewal_pending")
        assert "finish-renewal" in message and "undo-renewal" in message
    # the refusals changed nothing
    assert await works(proxy, key.app_key, key.token)
    assert await works(proxy, key.app_key, first_token)
    shown = await api.get(key.app_key)
    assert shown["creationDateNewToken"] == first.json()["creationDateNewToken"]
    assert await audit_actions(api, key.app_key) == ["token.renew", "key.create"]


async def test_undo_renewal_drops_the_new_token_and_keeps_the_old(api, proxy, make_key, clock):
    key = await make_key("acme", ["orders-reader"])
    created_at = now_iso(clock)
    clock.advance(60)
    new_token = (await api.renew(key.app_key, {"deleteOld": "later"})).json()["appToken"]
    assert await works(proxy, key.app_key, new_token)

    undone = await api.undo(key.app_key)
    assert undone.status == 200, undone.text
    body = undone.json()
    assert "appToken" not in body
    assert body["creationDateToken"] == created_at
    assert body["creationDateNewToken"] is None
    assert not await works(proxy, key.app_key, new_token)
    assert await works(proxy, key.app_key, key.token)

    expect_error(await api.undo(key.app_key), 404, "no_pending_renewal")
    expect_error(await api.finish(key.app_key), 404, "no_pending_renewal")
    assert await works(proxy, key.app_key, key.token)
    assert not await works(proxy, key.app_key, new_token)


async def test_renew_now_stops_the_old_token_at_once(api, proxy, make_key, clock):
    key = await make_key("acme", ["orders-reader"])
    clock.advance(120)
    reply = await api.renew(key.app_key, {"deleteOld": "now"})
    assert reply.status == 200, reply.text
    body = reply.json()
    assert body["creationDateToken"] == now_iso(clock)
    assert body["creationDateNewToken"] is None
    assert not await works(proxy, key.app_key, key.token)
    assert await works(proxy, key.app_key, body["appToken"])
    # nothing is pending after a renew-now
    expect_error(await api.finish(key.app_key), 404, "no_pending_renewal")
    expect_error(await api.undo(key.app_key), 404, "no_pending_renewal")
    assert await works(proxy, key.app_key, body["appToken"])
    # so a renew-now can follow a renew-now
    second = await api.renew(key.app_key, {"deleteOld": "now"})
    assert second.status == 200
    assert not await works(proxy, key.app_key, body["appToken"])
    assert await works(proxy, key.app_key, second.json()["appToken"])


async def test_the_new_token_can_itself_manage_the_key(make_key, management):
    """An admin key that renews its own token can go on with the new one."""
    admin = await make_key("acme", ["user-admin-restricted"], label="self")
    own = Api(management, creds(admin.app_key, admin.token))
    new_token = (await own.renew(admin.app_key)).json()["appToken"]
    with_new = Api(management, creds(admin.app_key, new_token))
    assert (await with_new.finish(admin.app_key)).status == 200
    listing = await own.call("GET", KEYS)
    assert listing.status == 401
    assert (await with_new.call("GET", KEYS)).status == 200


async def test_renewal_validation_and_not_found(api, make_key, management):
    key = await make_key("acme", ["orders-reader"])
    expect_error(await api.renew(key.app_key, {"deleteOld": "never"}), 400, "bad_delete_old")
    expect_error(await api.renew(key.app_key, {"deleteOld": None}), 400, "bad_delete_old")
    expect_error(await api.renew(key.app_key, {"delivery": "pigeon"}), 400, "bad_delivery")
    expect_error(await api.renew(key.app_key, {"deleteOld": "now", "x": 1}), 400,
                 "unknown_field")
    expect_error(await api.renew(key.app_key, [1]), 400, "bad_json")
    # none of those started a renewal
    expect_error(await api.finish(key.app_key), 404, "no_pending_renewal")

    missing = "kgk-acme-0000000000"
    for reply in (await api.renew(missing), await api.finish(missing), await api.undo(missing)):
        expect_error(reply, 404, "key_not_found")

    # a key of another account is not reachable through acme's path
    beta_key = await make_key("beta", ["orders-reader"])
    for reply in (await api.renew(beta_key.app_key), await api.finish(beta_key.app_key),
                  await api.undo(beta_key.app_key)):
        expect_error(reply, 404, "key_not_found")
    beta_admin = await make_key("beta", ["user-admin-restricted"])
    beta_api = Api(management, creds(beta_admin.app_key, beta_admin.token))
    beta_token = f"/api/v1/accounts/beta/keys/{beta_key.app_key}/token"
    assert (await beta_api.call("POST", beta_token + "/renew")).status == 200
    # acme's admin cannot finish beta's renewal through beta's path
    expect_error(await api.call("POST", beta_token + "/finish-renewal"), 403, "no_grant")
    assert (await beta_api.call("POST", beta_token + "/finish-renewal")).status == 200


async def test_renew_token_permission(api, make_key, management, proxy):
    key = await make_key("acme", ["orders-reader"])
    viewer = await make_key("acme", ["api-keys-viewer"])
    writer = await make_key("acme", ["orders-writer"])
    for who in (viewer, writer):
        as_who = Api(management, creds(who.app_key, who.token))
        expect_error(await as_who.renew(key.app_key), 403, "not_permitted")
        expect_error(await as_who.finish(key.app_key), 403, "not_permitted")
        expect_error(await as_who.undo(key.app_key), 403, "not_permitted")
    no_creds = Api(management, {})
    expect_error(await no_creds.renew(key.app_key), 401, "missing_credentials")
    # an owner may renew (owner allows everything in its account)
    owner = await make_key("acme", ["owner"])
    assert (await Api(management, creds(owner.app_key, owner.token)).renew(key.app_key)).status \
        == 200
    assert await works(proxy, key.app_key, key.token)


async def test_renewal_is_audited_with_before_and_after(api, make_key, clock):
    key = await make_key("acme", ["orders-reader"])
    t0 = int(clock() * 1000)
    clock.advance(10)
    t1 = int(clock() * 1000)
    await api.renew(key.app_key)
    clock.advance(10)
    await api.finish(key.app_key)
    clock.advance(10)
    t3 = int(clock() * 1000)
    await api.renew(key.app_key, {"deleteOld": "now"})
    clock.advance(10)
    t4 = int(clock() * 1000)
    await api.renew(key.app_key)
    await api.undo(key.app_key)

    reply = await api.call("GET", f"/api/v1/accounts/acme/audit?target={key.app_key}")
    events = reply.json()["items"]
    assert [e["action"] for e in events] == [
        "token.undo-renewal", "token.renew", "token.renew-now", "token.finish-renewal",
        "token.renew", "key.create",
    ]
    undo, renew2, renew_now, finish, renew1, _ = events
    assert renew1["before"] == {} and renew1["after"] == {"creationDateNewToken": t1}
    assert finish["before"] == {"creationDateToken": t0, "creationDateNewToken": t1}
    assert finish["after"] == {"creationDateToken": t1}
    assert renew_now["before"] == {"creationDateToken": t1}
    assert renew_now["after"] == {"creationDateToken": t3}
    assert renew2["after"] == {"creationDateNewToken": t4}
    assert undo["before"] == {"creationDateNewToken": t4} and undo["after"] == {}
    for event in events[:-1]:
        assert event["actor"] == api.headers["X-API-AppKey"]
        assert event["target"] == key.app_key and event["account"] == "acme"


# -- renewal: concurrency ----------------------------------------------------------------
async def test_fifty_concurrent_renewals_one_wins(api, proxy, make_key):
    key = await make_key("acme", ["orders-reader"])
    replies = await asyncio.gather(*(api.renew(key.app_key) for _ in range(50)))
    assert Counter(r.status for r in replies) == {200: 1, 409: 49}
    assert {r.code for r in replies if r.status == 409} == {"renewal_pending"}
    winner = next(r for r in replies if r.status == 200).json()["appToken"]
    assert await works(proxy, key.app_key, key.token)
    assert await works(proxy, key.app_key, winner)
    # exactly one renewal happened: one audit event, and the pending one is the winner's
    assert await audit_actions(api, key.app_key) == ["token.renew", "key.create"]
    assert (await api.finish(key.app_key)).status == 200
    assert await works(proxy, key.app_key, winner)
    assert not await works(proxy, key.app_key, key.token)


async def test_concurrent_renew_now_leaves_exactly_one_working_token(api, proxy, make_key):
    key = await make_key("acme", ["orders-reader"])
    replies = await asyncio.gather(
        *(api.renew(key.app_key, {"deleteOld": "now"}) for _ in range(20))
    )
    assert {r.status for r in replies} == {200}
    tokens = [r.json()["appToken"] for r in replies] + [key.token]
    assert len(set(tokens)) == 21
    working = [t for t in tokens if await works(proxy, key.app_key, t)]
    assert len(working) == 1
    assert (await api.get(key.app_key))["creationDateNewToken"] is None


@pytest.mark.parametrize("rounds", [15])
async def test_finish_racing_undo_leaves_exactly_one_valid_token(api, proxy, make_key, rounds):
    key = await make_key("acme", ["orders-reader"])
    current = key.token
    outcomes = Counter()
    for i in range(rounds):
        new = (await api.renew(key.app_key)).json()["appToken"]
        # alternate which request is sent first, so both orders get exercised
        calls = {"finish": api.finish(key.app_key), "undo": api.undo(key.app_key)}
        order = ["finish", "undo"] if i % 2 else ["undo", "finish"]
        results = dict(zip(order, await asyncio.gather(*(calls[n] for n in order)),
                           strict=True))
        finish, undo = results["finish"], results["undo"]
        assert sorted([finish.status, undo.status]) == [200, 404], (finish.text, undo.text)
        loser = undo if finish.status == 200 else finish
        assert loser.code == "no_pending_renewal"
        old_works = await works(proxy, key.app_key, current)
        new_works = await works(proxy, key.app_key, new)
        assert old_works != new_works
        if finish.status == 200:
            assert new_works
            current = new
            outcomes["finish"] += 1
        else:
            assert old_works
            outcomes["undo"] += 1
        assert (await api.get(key.app_key))["creationDateNewToken"] is None
    assert sum(outcomes.values()) == rounds


# -- one-time token links ----------------------------------------------------------------
async def test_create_with_link_shows_the_token_exactly_once(api, proxy, clock):
    created = await api.create("via link", delivery="link")
    assert "appToken" not in created
    assert created["creationDateNewToken"] is None
    url = created["tokenLink"]
    secret = link_secret(url)
    assert url.startswith(f"http://{api.client.host}:{api.client.port}/api/v1/token-links/")
    # at least 128 bits of url-safe base64
    assert len(secret) * 6 >= 128
    assert created["tokenLinkExpires"] == iso(int((clock() + DAY) * 1000))

    # GET never consumes the link, whatever it asks for
    for _ in range(3):
        shown = await api.show_link(url, headers={})
        assert shown.status == 200, shown.text
        assert shown.json()["status"] == "unopened"
    page = await api.show_link(url, headers={"Accept": "text/html,*/*;q=0.8"})
    assert page.status == 200 and page.content_type == "text/html"
    assert "<form" in page.text and 'method="post"' in page.text
    assert page.headers["Cache-Control"] == "no-store"

    opened = await api.open_link(url)
    assert opened.status == 200, opened.text
    assert opened.headers["Cache-Control"] == "no-store"
    revealed = opened.json()
    assert set(revealed) == {"appKey", "appToken"}
    assert revealed["appKey"] == created["appKey"]
    assert await works(proxy, created["appKey"], revealed["appToken"])
    assert revealed["appToken"] not in page.text

    message = expect_error(await api.open_link(url), 410, "token_link_gone")
    assert "opened" in message and "expired" in message
    expect_error(await api.show_link(url, headers={}), 410, "token_link_gone")
    assert await works(proxy, created["appKey"], revealed["appToken"])
    assert await audit_actions(api, created["appKey"]) == ["token.link-opened", "key.create"]


async def test_link_can_be_opened_from_the_html_form(api, proxy):
    created = await api.create("browser", delivery="link")
    url = created["tokenLink"]
    page = await api.show_link(url, headers={"Accept": "text/html"})
    opened = await api.open_link(url, data={}, headers={"Accept": "text/html"})
    assert opened.status == 200 and opened.content_type == "text/html"
    for shown in (page, opened):
        # no other site may frame the button, nor the token it reveals
        csp = shown.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "script-src" not in csp
        assert shown.headers["X-Frame-Options"] == "DENY"
        assert shown.headers["Referrer-Policy"] == "no-referrer"
    token = re.search(r"API token <code>(kgt_[0-9A-Za-z]+)</code>", opened.text)
    assert token, opened.text
    assert await works(proxy, created["appKey"], token[1])
    expect_error(await api.open_link(url, data={}), 410, "token_link_gone")


async def test_link_secrets_differ_and_unknown_links_are_gone(api):
    urls = {(await api.create(f"k{i}", delivery="link"))["tokenLink"] for i in range(3)}
    assert len({link_secret(u) for u in urls}) == 3
    fake = "/api/v1/token-links/" + "A" * 43
    expect_error(await api.call("POST", fake, headers={}), 410, "token_link_gone")
    expect_error(await api.call("GET", fake, headers={}), 410, "token_link_gone")


async def test_made_up_links_draw_on_the_failure_budget(api, gateway):
    """A link is a credential: made-up ones were each a store read, without end, from
    an address that a wrong key or token would have had answered 429 long before. They
    are failed authentications now, and past auth_failure_limit the answer is 429."""
    link = (await api.create("budgeted", delivery="link"))["tokenLink"]
    for _ in range(gateway.settings.auth_failure_limit):
        fake = "/api/v1/token-links/" + new_link_secret()
        expect_error(await api.call("POST", fake, headers={}), 410, "token_link_gone")
    for method in ("POST", "GET"):
        fake = "/api/v1/token-links/" + new_link_secret()
        expect_error(await api.call(method, fake, headers={}), 429, "too_many_failures")
    # the address is blocked for links and credentials alike, a real link included
    expect_error(await api.open_link(link), 429, "too_many_failures")
    expect_error(await api.call("GET", "/api/v1/accounts/acme/keys"), 429,
                 "too_many_failures")


async def test_non_ascii_link_secret_is_gone_not_a_server_error(api):
    for method in ("GET", "POST"):
        reply = await api.call(method, "/api/v1/token-links/%C3%A9t%C3%A9", headers={})
        expect_error(reply, 410, "token_link_gone")


async def test_link_uses_management_public_url(make_settings, clock, aiohttp_client):
    gw = build_gateway(make_settings(management_public_url="https://keys.example.com/"),
                       clock=clock)
    try:
        client = await aiohttp_client(build_management_app(gw))
        admin = await gw.lifecycle.create("acme", "admin", ["user-admin-restricted"], CLI_ACTOR)
        api = Api(client, creds(admin.record.app_key, admin.token))
        created = await api.create("public", delivery="link")
        assert created["tokenLink"].startswith("https://keys.example.com/api/v1/token-links/")
        opened = await api.open_link(created["tokenLink"])
        assert opened.status == 200 and opened.json()["appKey"] == created["appKey"]
    finally:
        await gw.close()


async def test_link_behind_a_trusted_proxy_is_where_the_client_reached_it(
    make_settings, clock, aiohttp_client, gateway
):
    """Without management_public_url, a link is built from where the caller reached the
    port: behind a TLS proxy that is https and the proxy's public host, as it says in
    X-Forwarded-Proto/-Host. The link was http:// and the hop's Host: the link's secret
    went in clear over the network to whatever answers plain HTTP there (or nowhere).
    An untrusted peer's headers still change nothing."""
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "keys.example.com"}
    behind = build_gateway(make_settings(store_prefix=gateway.settings.store_prefix,
                                         trusted_proxies=["127.0.0.1/32"]), clock=clock)
    direct = build_gateway(make_settings(store_prefix=gateway.settings.store_prefix,
                                         trusted_proxies=["10.0.0.1/32"]), clock=clock)
    try:
        admin = await gateway.lifecycle.create("acme", "admin", ["user-admin-restricted"],
                                               CLI_ACTOR)
        sent = {**creds(admin.record.app_key, admin.token), **forwarded}
        api = Api(await aiohttp_client(build_management_app(behind)), sent)
        created = await api.create("behind a proxy", delivery="link")
        assert created["tokenLink"].startswith("https://keys.example.com/api/v1/token-links/")
        renewed = await api.renew(created["appKey"], {"delivery": "link"})
        assert renewed.status == 409  # the first link is unopened
        opened = await api.open_link(created["tokenLink"])
        assert opened.status == 200
        renewed = await api.renew(created["appKey"], {"delivery": "link"})
        assert renewed.json()["tokenLink"].startswith("https://keys.example.com/")

        untrusted = Api(await aiohttp_client(build_management_app(direct)), sent)
        created = await untrusted.create("not behind one", delivery="link")
        client = untrusted.client
        assert created["tokenLink"].startswith(f"http://{client.host}:{client.port}/")
    finally:
        await behind.close()
        await direct.close()


async def test_concurrent_opens_reveal_the_token_once(api, proxy):
    created = await api.create("race", delivery="link")
    replies = await asyncio.gather(*(api.open_link(created["tokenLink"]) for _ in range(25)))
    assert Counter(r.status for r in replies) == {200: 1, 410: 24}
    assert {r.code for r in replies if r.status == 410} == {"token_link_gone"}
    token = next(r for r in replies if r.status == 200).json()["appToken"]
    assert await works(proxy, created["appKey"], token)
    assert await audit_actions(api, created["appKey"]) == ["token.link-opened", "key.create"]


async def test_unopened_link_blocks_renewal_until_opened(api, proxy):
    created = await api.create("blocked", delivery="link")
    app_key = created["appKey"]
    for body in ({}, {"deleteOld": "now"}, {"delivery": "link"}):
        message = expect_error(await api.renew(app_key, body), 409, "token_link_pending")
        assert "link" in message
    token = (await api.open_link(created["tokenLink"])).json()["appToken"]
    assert await works(proxy, app_key, token)
    renewed = await api.renew(app_key)
    assert renewed.status == 200, renewed.text
    assert await works(proxy, app_key, token)
    assert await works(proxy, app_key, renewed.json()["appToken"])


async def test_a_link_taken_by_an_opening_that_did_not_finish_no_longer_blocks_renewal(
    api, proxy, gateway
):
    """A link is taken (GETDEL, in its own slot) before its key forgets it: a store lost
    between the two left the key refusing every renewal until the link's expiry, a day,
    though no one could open the link any more."""
    created = await api.create("half opened", delivery="link")
    app_key = created["appKey"]
    store = gateway.store
    name = await store.redis.hget(store.names.key(app_key), "link")
    assert await store.redis.getdel(name)  # the first step of an opening, alone
    renewed = await api.renew(app_key, {"deleteOld": "now"})
    assert renewed.status == 200, renewed.text
    assert await works(proxy, app_key, renewed.json()["appToken"])
    expect_error(await api.open_link(created["tokenLink"]), 410, "token_link_gone")


async def test_expired_link_no_longer_blocks_renewal(api, proxy, clock):
    created = await api.create("expiring", delivery="link")
    app_key, url = created["appKey"], created["tokenLink"]
    clock.advance(DAY - 1)
    expect_error(await api.renew(app_key), 409, "token_link_pending")
    clock.advance(2)
    renewed = await api.renew(app_key, {"deleteOld": "now"})
    assert renewed.status == 200, renewed.text
    assert await works(proxy, app_key, renewed.json()["appToken"])
    # the renewal dropped the old link, whose token is dead anyway
    expect_error(await api.open_link(url), 410, "token_link_gone")


async def test_link_past_its_expiry_on_the_gateway_clock_is_gone(api, clock):
    created = await api.create("late", delivery="link")
    clock.advance(DAY - 1)
    assert (await api.show_link(created["tokenLink"])).status == 200
    clock.advance(2)
    # expired on keygate's clock (as renewal sees it), whatever Redis's TTL says
    expect_error(await api.show_link(created["tokenLink"], headers={}), 410, "token_link_gone")
    expect_error(await api.open_link(created["tokenLink"]), 410, "token_link_gone")


async def test_link_ttl_setting_sets_expiry_and_the_store_expires_it(
    make_settings, clock, aiohttp_client
):
    gw = build_gateway(make_settings(token_link_ttl=60), clock=clock)
    try:
        client = await aiohttp_client(build_management_app(gw))
        admin = await gw.lifecycle.create("acme", "admin", ["user-admin-restricted"], CLI_ACTOR)
        api = Api(client, creds(admin.record.app_key, admin.token))
        created = await api.create("short", delivery="link")
        assert created["tokenLinkExpires"] == iso(int((clock() + 60) * 1000))
        secret = link_secret(created["tokenLink"])
        name = f"{gw.settings.store_prefix}link:{hashlib.sha256(secret.encode()).hexdigest()}"
        ttl = await gw.store.redis.pttl(name)
        assert 0 < ttl <= 60_000
        # when the store expires the link (as it does after the TTL), opening it is 410
        await gw.store.redis.pexpire(name, 1)
        for _ in range(500):  # waits for Redis to expire the key; asserts nothing
            if not await gw.store.redis.exists(name):
                break
            await asyncio.sleep(0.01)
        expect_error(await api.open_link(created["tokenLink"]), 410, "token_link_gone")
        expect_error(await api.show_link(created["tokenLink"], headers={}), 410,
                     "token_link_gone")
    finally:
        await gw.close()


async def test_renew_with_link_delivery(api, proxy, clock):
    created = await api.create("renew via link")
    app_key, old = created["appKey"], created["appToken"]
    clock.advance(30)
    reply = await api.renew(app_key, {"delivery": "link"})
    assert reply.status == 200, reply.text
    body = reply.json()
    assert "appToken" not in body
    assert body["creationDateNewToken"] == now_iso(clock)
    assert body["tokenLinkExpires"] == iso(int((clock() + DAY) * 1000))
    # a pending renewal is reported before the pending link
    expect_error(await api.renew(app_key), 409, "renewal_pending")
    new = (await api.open_link(body["tokenLink"])).json()["appToken"]
    assert new != old
    assert await works(proxy, app_key, old)
    assert await works(proxy, app_key, new)
    assert (await api.finish(app_key)).status == 200
    assert not await works(proxy, app_key, old)
    assert await works(proxy, app_key, new)
    assert (await api.renew(app_key)).status == 200


async def test_finish_keeps_an_unopened_link_which_still_blocks_renewal(api, proxy):
    created = await api.create("finish first")
    app_key = created["appKey"]
    link = (await api.renew(app_key, {"delivery": "link"})).json()["tokenLink"]
    assert (await api.finish(app_key)).status == 200
    assert not await works(proxy, app_key, created["appToken"])
    expect_error(await api.renew(app_key), 409, "token_link_pending")
    new = (await api.open_link(link)).json()["appToken"]
    assert await works(proxy, app_key, new)
    assert (await api.renew(app_key)).status == 200


async def test_renew_now_with_link(api, proxy):
    created = await api.create("now via link")
    app_key = created["appKey"]
    link = (await api.renew(app_key, {"deleteOld": "now", "delivery": "link"})).json()[
        "tokenLink"]
    assert not await works(proxy, app_key, created["appToken"])
    new = (await api.open_link(link)).json()["appToken"]
    assert await works(proxy, app_key, new)


async def test_undo_drops_the_link_of_the_dropped_token(api, proxy):
    created = await api.create("undo link")
    app_key = created["appKey"]
    link = (await api.renew(app_key, {"delivery": "link"})).json()["tokenLink"]
    assert (await api.undo(app_key)).status == 200
    expect_error(await api.open_link(link), 410, "token_link_gone")
    assert await works(proxy, app_key, created["appToken"])
    assert (await api.renew(app_key)).status == 200


async def test_deleting_a_key_kills_its_unopened_link(api):
    created = await api.create("doomed", delivery="link")
    assert (await api.call("DELETE", f"{KEYS}/{created['appKey']}")).status == 204
    expect_error(await api.open_link(created["tokenLink"]), 410, "token_link_gone")
    expect_error(await api.show_link(created["tokenLink"], headers={}), 410, "token_link_gone")


async def test_link_delivery_validation(api):
    reply = await api.call("POST", KEYS, {"label": "x", "roles": [], "delivery": "email"})
    expect_error(reply, 400, "bad_delivery")


# -- no token anywhere it should not be --------------------------------------------------
async def _redis_dump(gateway: Any) -> str:
    """Every value the gateway stored under its prefix, as one string."""
    r = gateway.store.redis
    parts: list[str] = []
    async for name in r.scan_iter(match=gateway.settings.store_prefix + "*"):
        kind = await r.type(name)
        parts.append(name)
        if kind == "hash":
            parts.append(orjson.dumps(await r.hgetall(name)).decode())
        elif kind == "string":
            parts.append(await r.get(name))
        elif kind == "zset":
            parts.append(orjson.dumps(await r.zrange(name, 0, -1)).decode())
        elif kind == "set":
            parts.append(orjson.dumps(sorted(await r.smembers(name))).decode())
        elif kind == "stream":
            parts.append(orjson.dumps(await r.xrange(name)).decode())
        else:
            raise AssertionError(f"unexpected {kind} {name}")
    return "\n".join(parts)


async def test_no_response_log_line_or_audit_event_contains_a_token(
    api, proxy, gateway, make_key, caplog, clock, management, aiohttp_client
):
    caplog.set_level(logging.DEBUG)
    issued_by_api: list[str] = []  # each must appear in exactly one response
    stored_only: list[str] = []  # tokens made outside the API: in no response at all
    links: list[str] = []
    admin = await make_key("acme", ["user-admin-restricted"], label="second admin")
    stored_only += [api.headers["X-API-AppToken"], admin.token]
    direct = await make_key("acme", ["orders-reader"], label="direct")
    stored_only.append(direct.token)

    created = await api.create("plain", ["orders-reader"])
    issued_by_api.append(created["appToken"])
    via_link = await api.create("linked", ["orders-reader"], delivery="link")
    links.append(via_link["tokenLink"])
    await api.show_link(via_link["tokenLink"])
    await api.show_link(via_link["tokenLink"], headers={"Accept": "text/html"})
    issued_by_api.append((await api.open_link(via_link["tokenLink"])).json()["appToken"])
    await api.open_link(via_link["tokenLink"])  # 410

    for app_key in (created["appKey"], direct.app_key):
        clock.advance(5)
        issued_by_api.append((await api.renew(app_key)).json()["appToken"])
        await api.renew(app_key)  # 409
        await api.finish(app_key)
        issued_by_api.append((await api.renew(app_key, {"deleteOld": "now"})).json()[
            "appToken"])
        issued_by_api.append((await api.renew(app_key)).json()["appToken"])
        await api.undo(app_key)
        renewed = (await api.renew(app_key, {"delivery": "link"})).json()
        links.append(renewed["tokenLink"])
        issued_by_api.append((await api.open_link(renewed["tokenLink"])).json()["appToken"])
        await api.finish(app_key)
        await api.call("PATCH", f"{KEYS}/{app_key}", {"label": "relabelled"})

    # proxy traffic: successes, a wrong token, a denial (sampled into the audit log)
    for token in issued_by_api[-1:] + [issued_by_api[0]]:
        await proxy.get("/orders/1", headers=creds(direct.app_key, token))
    await proxy.post("/orders/1", headers=creds(direct.app_key, issued_by_api[-1]))
    await gateway.denials.drain()
    await gateway.last_used.flush()

    await api.call("PUT", "/api/v1/accounts/acme/settings", {"renewalPeriodMonths": 6})
    await api.call("DELETE", f"{KEYS}/{created['appKey']}")
    for path in (KEYS, f"{KEYS}?sort=lastUsed", f"{KEYS}/{direct.app_key}",
                 "/api/v1/accounts/acme/audit?limit=500", "/api/v1/accounts/acme/settings"):
        assert (await api.call("GET", path)).status == 200
    # the metrics port, after a count of the renewal gauge, is a response like the others
    await gateway.renewal_gauge.refresh()
    scraper = Api(await aiohttp_client(build_metrics_app(gateway)), {}, api.bodies)
    assert (await scraper.call("GET", "/metrics")).status == 200
    as_second = Api(management, creds(admin.app_key, admin.token), api.bodies)
    assert (await as_second.call("GET", "/api/v1/accounts/acme/audit")).status == 200

    tokens = issued_by_api + stored_only
    assert len(set(tokens)) == len(tokens) == 13
    digests = {t: gateway.hasher.digest(t) for t in tokens}
    bodies = api.bodies
    for token in issued_by_api:
        assert sum(token in b for b in bodies) == 1, "a token was shown more than once"
    for token in stored_only:
        assert not any(token in b for b in bodies)
    for digest in digests.values():
        assert not any(digest in b for b in bodies)

    # the audit log, raw from the store (every field of every event) and through the API
    stream = [
        event
        for kind in ("audit", "access")  # change events, then access events
        for event in await gateway.store.redis.xrange(gateway.store.names.account("acme", kind))
    ]
    raw_events = orjson.dumps(stream).decode()
    actions = {fields["action"] for _, fields in stream}
    assert actions >= {"key.create", "key.update", "key.delete", "token.renew",
                       "token.renew-now", "token.finish-renewal", "token.undo-renewal",
                       "token.link-opened", "settings.update", "access.denied"}
    for token, digest in digests.items():
        assert token not in raw_events and digest not in raw_events

    # log lines, at DEBUG, as records and as formatted text
    assert caplog.records, "expected some log output (at least the access log)"
    log_text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    for token, digest in digests.items():
        assert token not in log_text and digest not in log_text

    # the store keeps digests, never a token in clear and never a link's secret
    dump = await _redis_dump(gateway)
    for token in tokens:
        assert token not in dump
    for url in links:
        assert link_secret(url) not in dump


async def test_proxy_app_logs_no_token_at_debug(make_settings, clock, aiohttp_client, caplog):
    """The same check with an app pair built from scratch, covering start-up logging."""
    caplog.set_level(logging.DEBUG)
    gw = build_gateway(make_settings(), clock=clock)
    try:
        proxy = await aiohttp_client(ProxyTestServer(gw))
        issued = await gw.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
        token = issued.token
        assert token is not None
        assert (await proxy.get("/orders/1", headers=creds(issued.record.app_key, token))).status \
            == 200
        assert (await proxy.delete("/orders/1",
                                   headers=creds(issued.record.app_key, token))).status == 403
        await gw.denials.drain()
    finally:
        await gw.close()
    log_text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert token not in log_text
    assert gw.hasher.digest(token) not in log_text
