"""Renewal reminders, account settings, the audit log, sampled denials and last-used times
(issue items 3, 4 and 5), on the real stack (private redis-server, real Casbin, both apps).

Time moves only through the ``clock`` fixture (a FakeClock injected into the gateway);
background writers are drained explicitly (``gateway.denials.drain()``,
``gateway.last_used.flush()``), so nothing here depends on timing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from conftest import ProxyTestServer, on_one_server_and_a_cluster
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import build_gateway
from gateway.management import build_management_app
from gateway.management.metrics import build_metrics_app
from gateway.renewal import add_months, renewal_alert
from gateway.store import CLI_ACTOR, KeyQuery, Store

# the store, audit and export behaviour on one server and on a Redis Cluster
redis_url = on_one_server_and_a_cluster()

KEYS = "/api/v1/accounts/acme/keys"
SETTINGS = "/api/v1/accounts/acme/settings"
AUDIT = "/api/v1/accounts/acme/audit"
_NO_BODY = object()


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def iso(value: int | None) -> str | None:
    if value is None:
        return None
    moment = datetime.fromtimestamp(value / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_ms(clock: Any) -> int:
    return int(clock() * 1000)


def creds(app_key: str, token: str) -> dict[str, str]:
    return {"X-API-AppKey": app_key, "X-API-AppToken": token}


def set_time(clock: Any, moment: datetime) -> None:
    clock.now = moment.timestamp()


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any

    @property
    def code(self) -> str | None:
        return self.body.get("error", {}).get("code") if isinstance(self.body, dict) else None


async def call(client: Any, method: str, path: str, headers: dict[str, str],
               body: Any = _NO_BODY, **kwargs: Any) -> Reply:
    if body is not _NO_BODY:
        kwargs["json"] = body
    async with client.request(method, path, headers=headers, **kwargs) as response:
        raw = await response.read()
        parsed = orjson.loads(raw) if response.content_type == "application/json" else raw
        return Reply(response.status, parsed, response.headers.copy())


def expect_error(reply: Reply, status: int, code: str) -> str:
    assert reply.status == status, reply.body
    assert reply.body["error"]["code"] == code, reply.body
    return reply.body["error"]["message"]


@pytest.fixture
async def metrics(gateway: Any, aiohttp_client: Callable[..., Any]) -> Any:
    """The metrics port's application (its own port, not the management API)."""
    return await aiohttp_client(build_metrics_app(gateway))


@pytest.fixture
def admin(management: Any, admin_key: Any) -> Callable[..., Any]:
    """``await admin(method, path[, body], headers=…)`` as acme's key administrator."""

    async def run(method: str, path: str, body: Any = _NO_BODY, **kwargs: Any) -> Reply:
        headers = {**admin_key.headers, **kwargs.pop("headers", {})}
        return await call(management, method, path, headers, body, **kwargs)

    return run


async def key_view(admin: Any, app_key: str) -> dict[str, Any]:
    reply = await admin("GET", f"{KEYS}/{app_key}")
    assert reply.status == 200, reply.body
    return reply.body


async def alert_of(admin: Any, app_key: str) -> str:
    return (await key_view(admin, app_key))["renewalAlert"]


async def audit(admin: Any, query: str = "", account: str = "acme") -> list[dict[str, Any]]:
    reply = await admin("GET", f"/api/v1/accounts/{account}/audit?limit=500&{query}")
    assert reply.status == 200, reply.body
    assert reply.body["next"] is None
    return reply.body["items"]


def stream_order(event_id: str) -> tuple[int, int]:
    millis, seq = event_id.split("-")
    return int(millis), int(seq)


# -- renewal.add_months / renewal_alert: pure --------------------------------------------
@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (utc(2027, 1, 31, 12), 1, utc(2027, 2, 28, 12)),
        (utc(2028, 1, 31, 12), 1, utc(2028, 2, 29, 12)),  # leap year
        (utc(2027, 3, 31), 1, utc(2027, 4, 30)),
        (utc(2026, 11, 30), 3, utc(2027, 2, 28)),
        (utc(2027, 8, 31), 6, utc(2028, 2, 29)),
        (utc(2026, 12, 15, 8, 30, 5), 1, utc(2027, 1, 15, 8, 30, 5)),  # across the year
        (utc(2027, 1, 31), 13, utc(2028, 2, 29)),
        (utc(2028, 2, 29), 12, utc(2029, 2, 28)),
        (utc(2027, 5, 10), 0, utc(2027, 5, 10)),
        (utc(2027, 10, 31), 24, utc(2029, 10, 31)),
    ],
)
def test_add_months_is_calendar_months(start, months, expected):
    assert add_months(start, months) == expected


def test_add_months_keeps_microseconds_and_zone():
    start = datetime(2027, 1, 31, 23, 59, 59, 999_000, tzinfo=UTC)
    assert add_months(start, 1) == datetime(2027, 2, 28, 23, 59, 59, 999_000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "orange_at", "red_at"),
    [
        (3, utc(2027, 4, 30, 12), utc(2027, 7, 31, 12)),
        (6, utc(2027, 7, 31, 12), utc(2027, 10, 31, 12)),
    ],
)
def test_renewal_alert_boundaries(period, orange_at, red_at):
    start = ms(utc(2027, 1, 31, 12))
    assert renewal_alert(start, period, start) == "none"
    assert renewal_alert(start, period, start - 1) == "none"  # a clock behind the store
    assert renewal_alert(start, period, ms(orange_at) - 1) == "none"
    assert renewal_alert(start, period, ms(orange_at)) == "orange"
    assert renewal_alert(start, period, ms(red_at) - 1) == "orange"
    assert renewal_alert(start, period, ms(red_at)) == "red"
    assert renewal_alert(start, period, ms(utc(2040, 1, 1))) == "red"


def test_red_counts_from_the_start_not_from_the_orange_date():
    # 31 Jan + 3 months = 30 Apr, + 3 more from there would be 30 Jul; from the start it is
    # 31 Jul (6 months), which is the documented "3 or more months past the period".
    start = ms(utc(2027, 1, 31, 12))
    assert renewal_alert(start, 3, ms(utc(2027, 7, 30, 12))) == "orange"
    assert renewal_alert(start, 3, ms(utc(2027, 7, 31, 12))) == "red"


# -- settings ----------------------------------------------------------------------------
async def test_settings_default_read_and_change(admin, admin_key, make_key, management, clock):
    viewer = await make_key("acme", ["api-keys-viewer"])
    as_viewer = creds(viewer.app_key, viewer.token)
    reply = await call(management, "GET", SETTINGS, as_viewer)
    assert (reply.status, reply.body) == (200, {"renewalPeriodMonths": 3})

    changed = await admin("PUT", SETTINGS, {"renewalPeriodMonths": 6},
                          headers={"X-Request-Id": "settings-req-0001"})
    assert (changed.status, changed.body) == (200, {"renewalPeriodMonths": 6})
    reply = await call(management, "GET", SETTINGS, as_viewer)
    assert reply.body == {"renewalPeriodMonths": 6}
    assert (await admin("PUT", SETTINGS, {"renewalPeriodMonths": 3})).status == 200
    assert (await admin("GET", SETTINGS)).body == {"renewalPeriodMonths": 3}

    first, second = reversed(await audit(admin, "action=settings.update"))
    assert first["before"] == {} and first["after"] == {"renewalPeriodMonths": 6}
    assert second["before"] == {"renewalPeriodMonths": 6}
    assert second["after"] == {"renewalPeriodMonths": 3}
    assert first["requestId"] == "settings-req-0001"
    for event in (first, second):
        assert event["actor"] == admin_key.app_key
        assert event["account"] == "acme" and event["target"] == "acme"
        assert event["time"] == iso(now_ms(clock))


async def test_settings_are_per_account(admin, make_key, management):
    assert (await admin("PUT", SETTINGS, {"renewalPeriodMonths": 6})).status == 200
    beta = await make_key("beta", ["user-admin-restricted"])
    reply = await call(management, "GET", "/api/v1/accounts/beta/settings",
                       creds(beta.app_key, beta.token))
    assert reply.body == {"renewalPeriodMonths": 3}
    forbidden = await admin("GET", "/api/v1/accounts/beta/settings")
    expect_error(forbidden, 403, "no_grant")


@pytest.mark.parametrize("value", [1, 0, -3, 12, 4, "3", "6", None, True, 3.5, [3], {"m": 3}])
async def test_settings_refuse_other_values_listing_the_allowed(admin, value):
    reply = await admin("PUT", SETTINGS, {"renewalPeriodMonths": value})
    message = expect_error(reply, 400, "bad_renewal_period")
    assert "3" in message and "6" in message
    assert (await admin("GET", SETTINGS)).body == {"renewalPeriodMonths": 3}
    assert await audit(admin, "action=settings.update") == []


async def test_settings_body_errors(admin):
    expect_error(await admin("PUT", SETTINGS, {}), 400, "missing_field")
    expect_error(await admin("PUT", SETTINGS, {"renewalPeriodMonths": 3, "x": 1}), 400,
                 "unknown_field")
    expect_error(await admin("PUT", SETTINGS, [6]), 400, "bad_json")


async def test_settings_float_period_does_not_break_the_account(
    admin, make_key, gateway, metrics
):
    key = await make_key("acme", ["orders-reader"])
    put = await admin("PUT", SETTINGS, {"renewalPeriodMonths": 6.0})
    got = await admin("GET", SETTINGS)
    listing = await admin("GET", KEYS)
    one = await admin("GET", f"{KEYS}/{key.app_key}")
    await gateway.renewal_gauge.refresh()  # the background count reads the setting too
    scrape = await metrics.get("/metrics")
    assert (got.status, listing.status, one.status, scrape.status) == (200, 200, 200, 200)
    assert renewal_gauge(await scrape.text())[("acme", "none")] == 2
    if put.status == 200:
        assert got.body == {"renewalPeriodMonths": 6}
    else:
        expect_error(put, 400, "bad_renewal_period")


async def test_settings_permissions(admin, make_key, management):
    viewer = await make_key("acme", ["api-keys-viewer"])
    writer = await make_key("acme", ["orders-writer"])
    expect_error(await call(management, "PUT", SETTINGS, creds(viewer.app_key, viewer.token),
                            {"renewalPeriodMonths": 6}), 403, "not_permitted")
    expect_error(await call(management, "GET", SETTINGS, creds(writer.app_key, writer.token)),
                 403, "not_permitted")
    expect_error(await call(management, "GET", SETTINGS, {}), 401, "missing_credentials")
    owner = await make_key("acme", ["owner"])
    assert (await call(management, "PUT", SETTINGS, creds(owner.app_key, owner.token),
                       {"renewalPeriodMonths": 6})).status == 200


# -- renewalAlert ------------------------------------------------------------------------
async def test_renewal_alert_moves_with_the_clock_and_never_blocks(admin, make_key, proxy,
                                                                     clock):
    set_time(clock, utc(2026, 11, 30, 12))
    key = await make_key("acme", ["orders-reader"])
    assert await alert_of(admin, key.app_key) == "none"
    # 30 Nov + 3 months = 28 Feb (calendar months, clamped to the month's end)
    clock.now = utc(2027, 2, 28, 12).timestamp() - 0.001
    assert await alert_of(admin, key.app_key) == "none"
    set_time(clock, utc(2027, 2, 28, 12))
    assert await alert_of(admin, key.app_key) == "orange"
    clock.now = utc(2027, 5, 30, 12).timestamp() - 0.001
    assert await alert_of(admin, key.app_key) == "orange"
    set_time(clock, utc(2027, 5, 30, 12))
    assert await alert_of(admin, key.app_key) == "red"
    set_time(clock, utc(2031, 1, 1))
    assert await alert_of(admin, key.app_key) == "red"
    # tokens never expire because of it
    response = await proxy.get("/orders/1", headers=key.headers)
    assert response.status == 200


async def test_leap_year_month_end(admin, make_key, clock):
    set_time(clock, utc(2027, 11, 30, 6))
    key = await make_key("acme", ["orders-reader"])
    clock.now = utc(2028, 2, 29, 6).timestamp() - 0.001
    assert await alert_of(admin, key.app_key) == "none"
    set_time(clock, utc(2028, 2, 29, 6))
    assert await alert_of(admin, key.app_key) == "orange"


async def test_period_setting_changes_the_alert(admin, make_key, clock):
    set_time(clock, utc(2027, 1, 31, 12))
    key = await make_key("acme", ["orders-reader"])
    set_time(clock, utc(2027, 5, 1))  # 3 months after 31 Jan is 30 Apr: orange under 3
    assert await alert_of(admin, key.app_key) == "orange"
    assert (await admin("PUT", SETTINGS, {"renewalPeriodMonths": 6})).status == 200
    assert await alert_of(admin, key.app_key) == "none"
    set_time(clock, utc(2027, 7, 31, 12))  # 6 months: red under 3, orange under 6
    assert await alert_of(admin, key.app_key) == "orange"
    assert (await admin("PUT", SETTINGS, {"renewalPeriodMonths": 3})).status == 200
    assert await alert_of(admin, key.app_key) == "red"
    assert (await admin("PUT", SETTINGS, {"renewalPeriodMonths": 6})).status == 200
    set_time(clock, utc(2027, 10, 31, 12))  # 9 months: red under 6 as well
    assert await alert_of(admin, key.app_key) == "red"


async def test_renewal_restarts_the_reminder(admin, make_key, clock):
    key = await make_key("acme", ["orders-reader"])
    other = await make_key("acme", ["orders-reader"])
    clock.advance(400 * 86_400)
    assert await alert_of(admin, key.app_key) == "red"
    now_reply = await admin("POST", f"{KEYS}/{key.app_key}/token/renew", {"deleteOld": "now"})
    assert now_reply.body["renewalAlert"] == "none"
    assert await alert_of(admin, key.app_key) == "none"

    # a pending renewal leaves creationDateToken, and so the alert, alone until finished
    later = await admin("POST", f"{KEYS}/{other.app_key}/token/renew")
    assert later.body["renewalAlert"] == "red"
    assert await alert_of(admin, other.app_key) == "red"
    finished = await admin("POST", f"{KEYS}/{other.app_key}/token/finish-renewal")
    assert finished.body["renewalAlert"] == "none"
    assert await alert_of(admin, other.app_key) == "none"


@pytest.fixture
async def aged_keys(make_key, clock, admin_key) -> dict[str, str]:
    """admin + old made at 21 Sep 2026, mid at 21 Jan 2027, new at 21 Apr 2027 (now)."""
    assert datetime.fromtimestamp(clock(), UTC) == utc(2026, 9, 21, 14, 13, 20)
    old = await make_key("acme", ["orders-reader"], label="old")
    set_time(clock, utc(2027, 1, 21, 14, 13, 20))
    mid = await make_key("acme", ["orders-reader"], label="mid")
    set_time(clock, utc(2027, 4, 21, 14, 13, 20))
    new = await make_key("acme", ["orders-reader"], label="new")
    return {"admin": admin_key.app_key, "old": old.app_key, "mid": mid.app_key,
            "new": new.app_key}


async def test_list_carries_and_filters_by_renewal_alert(admin, aged_keys):
    listing = await admin("GET", f"{KEYS}?perPage=100")
    alerts = {item["appKey"]: item["renewalAlert"] for item in listing.body["items"]}
    assert alerts == {aged_keys["admin"]: "red", aged_keys["old"]: "red",
                      aged_keys["mid"]: "orange", aged_keys["new"]: "none"}
    expected = {"red": {"admin", "old"}, "orange": {"mid"}, "none": {"new"}}
    for level, names in expected.items():
        reply = await admin("GET", f"{KEYS}?renewal={level}")
        assert reply.status == 200
        assert {i["appKey"] for i in reply.body["items"]} == {aged_keys[n] for n in names}
        assert reply.body["total"] == len(names)
        assert {i["renewalAlert"] for i in reply.body["items"]} == {level}
    # combined with paging and another filter
    page = await admin("GET", f"{KEYS}?renewal=red&perPage=1&page=2&sort=label&order=asc")
    assert page.body["total"] == 2
    assert [i["label"] for i in page.body["items"]] == ["old"]
    reply = await admin("GET", f"{KEYS}?renewal=red&q=adm")
    assert [i["appKey"] for i in reply.body["items"]] == [aged_keys["admin"]]
    message = expect_error(await admin("GET", f"{KEYS}?renewal=yellow"), 400, "bad_query")
    assert all(level in message for level in ("none", "orange", "red"))


def renewal_gauge(text: str) -> dict[tuple[str, str], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name == "keygate_keys_renewal_alert":
            for sample in family.samples:
                found[(sample.labels["account"], sample.labels["level"])] = sample.value
    return found


async def scrape_renewal_gauge(gateway: Any, metrics: Any) -> dict[tuple[str, str], float]:
    """The gauge after a background count has run (a scrape only renders the last one)."""
    await gateway.renewal_gauge.refresh()
    response = await metrics.get("/metrics")
    assert response.status == 200
    return renewal_gauge(await response.text())


async def test_metrics_count_keys_per_account_and_level(
    admin, aged_keys, gateway, metrics, make_key
):
    await make_key("beta", ["orders-reader"])
    await gateway.renewal_gauge.refresh()
    response = await metrics.get("/metrics")
    assert response.status == 200
    gauge = renewal_gauge(await response.text())
    assert gauge == {
        ("acme", "none"): 1, ("acme", "orange"): 1, ("acme", "red"): 2,
        ("beta", "none"): 1, ("beta", "orange"): 0, ("beta", "red"): 0,
    }
    # acme's own period is used for acme's keys
    assert (await admin("PUT", SETTINGS, {"renewalPeriodMonths": 6})).status == 200
    gauge = await scrape_renewal_gauge(gateway, metrics)
    assert gauge[("acme", "none")] == 2 and gauge[("acme", "orange")] == 2
    assert gauge[("acme", "red")] == 0 and gauge[("beta", "none")] == 1
    # a deleted key is no longer counted
    assert (await admin("DELETE", f"{KEYS}/{aged_keys['mid']}")).status == 204
    gauge = await scrape_renewal_gauge(gateway, metrics)
    assert gauge[("acme", "none")] == 1


# -- audit log ---------------------------------------------------------------------------
async def test_key_changes_are_audited_with_before_after_and_request_id(
    admin, admin_key, clock
):
    actor = admin_key.app_key
    created = await admin("POST", KEYS, {"label": "audited", "roles": ["orders-reader"]},
                          headers={"X-Request-Id": "create-request-1"})
    app_key, t_create = created.body["appKey"], now_ms(clock)
    clock.advance(1)
    patches = [
        ({"label": "renamed"}, {"label": "audited"}, {"label": "renamed"}),
        ({"roles": ["orders-writer", "orders-reader"]}, {"roles": ["orders-reader"]},
         {"roles": ["orders-writer", "orders-reader"]}),
        ({"roles": []}, {"roles": ["orders-writer", "orders-reader"]}, {"roles": []}),
        ({"status": "inactive", "label": "off"}, {"status": "active", "label": "renamed"},
         {"status": "inactive", "label": "off"}),
    ]
    request_ids = []
    for body, _, _ in patches:
        reply = await admin("PATCH", f"{KEYS}/{app_key}", body)
        assert reply.status == 200, reply.body
        request_ids.append(reply.headers["X-Request-Id"])
    deleted = await admin("DELETE", f"{KEYS}/{app_key}")
    assert deleted.status == 204

    events = await audit(admin, f"target={app_key}")
    assert [e["action"] for e in events] == ["key.delete"] + ["key.update"] * 4 + ["key.create"]
    delete, *updates, create = events
    assert create["before"] == {}
    assert create["after"] == {"label": "audited", "status": "active",
                               "creationDateToken": t_create, "roles": ["orders-reader"]}
    assert create["requestId"] == "create-request-1"
    assert create["time"] == iso(t_create)
    for event, (_, before, after), request_id in zip(
        reversed(updates), patches, request_ids, strict=True
    ):
        assert (event["before"], event["after"]) == (before, after)
        assert event["requestId"] == request_id
    assert delete["before"] == {"label": "off", "status": "inactive",
                                "creationDateToken": t_create, "roles": []}
    assert delete["after"] == {}
    assert delete["requestId"] == deleted.headers["X-Request-Id"]
    for event in events:
        assert event["actor"] == actor and event["account"] == "acme"
        assert event["target"] == app_key
        assert set(event) == {"id", "time", "account", "actor", "action", "target",
                              "requestId", "before", "after"}


async def test_refused_changes_write_no_event(admin, make_key):
    key = await make_key("acme", ["orders-reader"])
    before = await audit(admin)
    expect_error(await admin("PATCH", f"{KEYS}/kgk-acme-0000000000", {"label": "x"}), 404,
                 "key_not_found")
    expect_error(await admin("PATCH", f"{KEYS}/{key.app_key}", {"status": "gone"}), 400,
                 "bad_status")
    expect_error(await admin("POST", f"{KEYS}/{key.app_key}/token/finish-renewal"), 404,
                 "no_pending_renewal")
    expect_error(await admin("DELETE", f"{KEYS}/kgk-acme-0000000000"), 404, "key_not_found")
    assert (await admin("POST", f"{KEYS}/{key.app_key}/token/renew")).status == 200
    expect_error(await admin("POST", f"{KEYS}/{key.app_key}/token/renew"), 409,
                 "renewal_pending")
    after = await audit(admin)
    assert [e["action"] for e in after] == ["token.renew"] + [e["action"] for e in before]
    assert after[1:] == before


async def test_link_opened_is_audited(admin, management, clock):
    created = await admin("POST", KEYS, {"label": "l", "roles": [], "delivery": "link"})
    path = created.body["tokenLink"].split("/", 3)[3]
    clock.advance(5)
    opened = await call(management, "POST", "/" + path, {})
    assert opened.status == 200
    event = (await audit(admin, "action=token.link-opened"))[0]
    assert event["target"] == created.body["appKey"] and event["account"] == "acme"
    assert event["actor"] == "token-link"
    assert event["time"] == iso(now_ms(clock))
    assert (event["before"], event["after"]) == ({}, {})
    assert opened.body["appToken"] not in orjson.dumps(event).decode()


async def test_link_opened_event_carries_the_request_id(admin, management):
    created = await admin("POST", KEYS, {"label": "l", "roles": [], "delivery": "link"})
    path = "/" + created.body["tokenLink"].split("/", 3)[3]
    opened = await call(management, "POST", path, {"X-Request-Id": "open-link-request-1"})
    assert opened.status == 200
    event = (await audit(admin, "action=token.link-opened"))[0]
    assert event["requestId"] == "open-link-request-1"


@pytest.fixture
async def many_events(admin, make_key, admin_key, management) -> dict[str, Any]:
    """Two actors making 24 changes on two targets, plus the fixtures' key.create events."""
    second = await make_key("acme", ["user-admin-restricted"], label="second")
    one = await make_key("acme", ["orders-reader"], label="one")
    two = await make_key("acme", ["orders-reader"], label="two")
    as_second = creds(second.app_key, second.token)
    for i in range(12):
        assert (await admin("PATCH", f"{KEYS}/{one.app_key}", {"label": f"one-{i}"})).status \
            == 200
        reply = await call(management, "PATCH", f"{KEYS}/{two.app_key}", as_second,
                           {"label": f"two-{i}"})
        assert reply.status == 200
    return {"first": admin_key.app_key, "second": second.app_key, "one": one.app_key,
            "two": two.app_key}


async def test_audit_pages_newest_first_with_cursor(admin, many_events):
    everything = await audit(admin)
    assert len(everything) == 4 + 24  # four key.create (cli) and 24 updates
    orders = [stream_order(e["id"]) for e in everything]
    assert orders == sorted(orders, reverse=True) and len(set(orders)) == len(orders)
    assert everything[0]["after"] == {"label": "two-11"}
    assert everything[-1]["action"] == "key.create"

    pages, cursor = [], None
    while True:
        query = "limit=10" + (f"&cursor={cursor}" if cursor else "")
        reply = await admin("GET", f"{AUDIT}?{query}")
        assert reply.status == 200
        pages.append(reply.body["items"])
        cursor = reply.body["next"]
        if cursor is None:
            break
        assert cursor == reply.body["items"][-1]["id"]
        assert len(pages) < 10
    assert [len(p) for p in pages[:3]] == [10, 10, 8]
    assert [e["id"] for p in pages for e in p] == [e["id"] for e in everything]


async def test_audit_filters_by_action_actor_and_target(admin, many_events):
    updates = await audit(admin, "action=key.update")
    assert len(updates) == 24 and {e["action"] for e in updates} == {"key.update"}
    by_second = await audit(admin, f"actor={many_events['second']}")
    assert len(by_second) == 12
    assert {e["target"] for e in by_second} == {many_events["two"]}
    by_cli = await audit(admin, "actor=cli")
    assert [e["action"] for e in by_cli] == ["key.create"] * 4
    on_one = await audit(admin, f"target={many_events['one']}")
    assert [e["action"] for e in on_one] == ["key.update"] * 12 + ["key.create"]
    both = await audit(admin, f"actor={many_events['first']}&target={many_events['two']}")
    assert both == []
    assert await audit(admin, "action=no.such.action") == []

    # paging through a filtered view
    seen, cursor = [], None
    for _ in range(10):
        query = f"limit=5&actor={many_events['first']}" + (f"&cursor={cursor}" if cursor else "")
        reply = await admin("GET", f"{AUDIT}?{query}")
        seen += reply.body["items"]
        cursor = reply.body["next"]
        if cursor is None:
            break
    assert [e["after"]["label"] for e in seen] == [f"one-{i}" for i in range(11, -1, -1)]


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=ten", "limit=-1",
                                   "cursor=yesterday", "cursor=1-x", "cursor=-1"])
async def test_audit_bad_query_is_400(admin, query):
    expect_error(await admin("GET", f"{AUDIT}?{query}"), 400, "bad_query")


async def test_audit_permissions(admin, make_key, management):
    viewer = await make_key("acme", ["api-keys-viewer"])
    writer = await make_key("acme", ["orders-writer"])
    beta = await make_key("beta", ["owner"])
    assert (await call(management, "GET", AUDIT, creds(viewer.app_key, viewer.token))).status \
        == 200
    expect_error(await call(management, "GET", AUDIT, creds(writer.app_key, writer.token)),
                 403, "not_permitted")
    expect_error(await call(management, "GET", AUDIT, creds(beta.app_key, beta.token)), 403,
                 "no_grant")
    expect_error(await admin("GET", "/api/v1/accounts/beta/audit"), 403, "no_grant")
    expect_error(await call(management, "GET", AUDIT, {}), 401, "missing_credentials")
    # each account has its own log
    reply = await call(management, "GET", "/api/v1/accounts/beta/audit",
                       creds(beta.app_key, beta.token))
    changes = [e for e in reply.body["items"] if e["action"] != "access.denied"]
    assert [(e["action"], e["target"]) for e in changes] == [("key.create", beta.app_key)]


async def test_audit_stream_is_capped(make_settings, clock, aiohttp_client):
    cap = 10
    gw = build_gateway(make_settings(audit_max_events=cap), clock=clock)
    try:
        client = await aiohttp_client(build_management_app(gw))
        admin_issued = await gw.lifecycle.create("acme", "a", ["user-admin-restricted"],
                                                 CLI_ACTOR)
        headers = creds(admin_issued.record.app_key, admin_issued.token)
        changes = 400
        for i in range(changes):
            assert await gw.store.update_key("acme", admin_issued.record.app_key,
                                              label=f"label-{i}") is not None
        # the last few through the API too
        for i in range(3):
            reply = await call(client, "PATCH", f"{KEYS}/{admin_issued.record.app_key}",
                               headers, {"label": f"api-{i}"})
            assert reply.status == 200
        length = await gw.store.redis.xlen(gw.store.names.account("acme", "audit"))
        # MAXLEN ~ trims whole stream nodes (at most 100 entries each): a loose bound
        assert cap <= length <= cap + 100
        assert length < changes
        reply = await call(client, "GET", f"{AUDIT}?limit=500", headers)
        items = reply.body["items"]
        assert len(items) == length
        assert [e["after"]["label"] for e in items[:4]] == ["api-2", "api-1", "api-0",
                                                             f"label-{changes - 1}"]
    finally:
        await gw.close()


# -- sampled access denials --------------------------------------------------------------
async def denials(gateway: Any, admin: Any, query: str = "") -> list[dict[str, Any]]:
    await gateway.denials.drain()
    return await audit(admin, "action=access.denied&" + query)


async def test_access_denials_are_sampled_per_key_and_resource(
    admin, proxy, make_key, gateway, clock, metrics
):
    reader = await make_key("acme", ["orders-reader"])
    for _ in range(5):
        assert (await proxy.post("/orders/1", headers=reader.headers)).status == 403
    events = await denials(gateway, admin)
    assert len(events) == 1
    (first,) = events
    assert first["actor"] == reader.app_key and first["target"] == "orders"
    assert first["account"] == "acme" and first["before"] == {}
    assert first["after"] == {"resource": "orders", "action": "write",
                              "reason": "not_permitted", "count": 1}
    assert first["time"] == iso(now_ms(clock))
    assert first["requestId"]

    clock.advance(30)
    assert (await proxy.delete("/orders/1", headers=reader.headers)).status == 403
    assert len(await denials(gateway, admin)) == 1  # same window: counted, not written

    # allowed requests and wrong tokens are no denials
    assert (await proxy.get("/orders/1", headers=reader.headers)).status == 200
    wrong = creds(reader.app_key, (await make_key("acme", [])).token)
    assert (await proxy.post("/orders/1", headers=wrong)).status == 401
    assert len(await denials(gateway, admin)) == 1

    clock.advance(30)  # 60 s after the first sample: a new window
    assert (await proxy.post("/orders/2", headers=reader.headers)).status == 403
    events = await denials(gateway, admin)
    assert len(events) == 2
    # since the last sample: 4 more POSTs, the DELETE and this one
    assert events[0]["after"]["count"] == 6
    assert events[0]["time"] == iso(now_ms(clock))

    # another resource and another key are sampled separately, in the same instant
    catalog = await proxy.get("/catalog/1", headers={**reader.headers,
                                                     "Host": "acme.api.test"})
    assert catalog.status == 403
    other = await make_key("acme", ["orders-reader"])
    assert (await proxy.put("/orders/1", headers=other.headers)).status == 403
    outsider = await make_key("beta", ["orders-writer"])  # no grant in acme
    assert (await proxy.post("/orders/1", headers=outsider.headers)).status == 403
    events = await denials(gateway, admin)
    assert len(events) == 5
    assert (await denials(gateway, admin, "target=catalog"))[0]["after"] == {
        "resource": "catalog", "action": "read", "reason": "not_permitted", "count": 1}
    assert (await denials(gateway, admin, f"actor={other.app_key}"))[0]["after"]["count"] == 1
    outsider_event = (await denials(gateway, admin, f"actor={outsider.app_key}"))[0]
    assert outsider_event["after"]["reason"] == "no_grant"

    # every denial is counted on /metrics, sampled or not
    await gateway.denials.drain()
    text = await (await metrics.get("/metrics")).text()
    counted = {
        (s.labels["account"], s.labels["resource"]): s.value
        for f in text_string_to_metric_families(text) if f.name == "keygate_access_denied"
        for s in f.samples if s.name == "keygate_access_denied_total"
    }
    assert counted[("acme", "orders")] == 5 + 1 + 1 + 1 + 1
    assert counted[("acme", "catalog")] == 1


async def test_denial_sample_seconds_setting(make_settings, clock, aiohttp_client):
    gw = build_gateway(make_settings(denial_sample_seconds=5), clock=clock)
    try:
        proxy = await aiohttp_client(ProxyTestServer(gw))
        reader = await gw.lifecycle.create("acme", "r", ["orders-reader"], CLI_ACTOR)
        headers = creds(reader.record.app_key, reader.token)
        written = []
        for step in (0, 4, 1, 4.5, 0.5):  # denials at 0, 4, 5, 9.5, 10 seconds
            clock.advance(step)
            assert (await proxy.post("/orders/1", headers=headers)).status == 403
            await gw.denials.drain()
            events, _ = await gw.store.audit_events(
                "acme", accept=lambda e: e.action == "access.denied")
            written.append(len(events))
        assert written == [1, 1, 2, 2, 3]
        events, _ = await gw.store.audit_events(
            "acme", accept=lambda e: e.action == "access.denied")
        assert [e.after["count"] for e in events] == [2, 2, 1]
    finally:
        await gw.close()


# -- last used ---------------------------------------------------------------------------
async def test_last_used_is_batched_and_written_at_most_once_per_interval(
    admin, proxy, make_key, gateway, clock
):
    key = await make_key("acme", ["orders-reader"])
    assert (await key_view(admin, key.app_key))["lastUsed"] is None
    t0 = now_ms(clock)
    assert (await proxy.get("/orders/1", headers=key.headers)).status == 200
    # batched: nothing is written until the batch is flushed
    assert (await key_view(admin, key.app_key))["lastUsed"] is None
    await gateway.last_used.flush()
    assert (await key_view(admin, key.app_key))["lastUsed"] == iso(t0)

    clock.advance(10)  # within last_used_interval (60 s) of the last write: not written
    assert (await proxy.get("/orders/1", headers=key.headers)).status == 200
    await gateway.last_used.flush()
    assert (await key_view(admin, key.app_key))["lastUsed"] == iso(t0)

    clock.advance(51)
    t1 = now_ms(clock)
    assert (await proxy.get("/orders/1", headers=key.headers)).status == 200
    await gateway.last_used.flush()
    view = await key_view(admin, key.app_key)
    assert view["lastUsed"] == iso(t1)

    # a wrong token is no use of the key
    clock.advance(120)
    wrong = creds(key.app_key, (await make_key("acme", [])).token)
    assert (await proxy.get("/orders/1", headers=wrong)).status == 401
    await gateway.last_used.flush()
    assert (await key_view(admin, key.app_key))["lastUsed"] == iso(t1)

    # a refused (403) request still authenticated the key
    clock.advance(1)
    assert (await proxy.post("/orders/1", headers=key.headers)).status == 403
    await gateway.last_used.flush()
    listing = await admin("GET", f"{KEYS}?q={key.app_key}")
    assert listing.body["items"][0]["lastUsed"] == iso(now_ms(clock))


async def test_management_calls_count_as_use(admin, admin_key, gateway, clock):
    t0 = now_ms(clock)
    await admin("GET", KEYS)
    clock.advance(5)
    await gateway.last_used.flush()
    assert (await key_view(admin, admin_key.app_key))["lastUsed"] == iso(t0)


async def test_last_used_sort(admin, proxy, make_key, gateway, clock):
    keys = {name: await make_key("acme", ["orders-reader"], label=f"lu-{name}")
            for name in ("a", "b", "c", "never")}
    for name in ("b", "c", "a"):
        clock.advance(100)
        assert (await proxy.get("/orders/1", headers=keys[name].headers)).status == 200
    await gateway.last_used.flush()
    desc = await admin("GET", f"{KEYS}?q=lu-&sort=lastUsed&order=desc")
    assert [i["label"] for i in desc.body["items"]] == ["lu-a", "lu-c", "lu-b", "lu-never"]
    asc = await admin("GET", f"{KEYS}?q=lu-&sort=lastUsed&order=asc")
    assert [i["label"] for i in asc.body["items"]] == ["lu-never", "lu-b", "lu-c", "lu-a"]
    assert asc.body["items"][0]["lastUsed"] is None
    stamps = [i["lastUsed"] for i in desc.body["items"][:3]]
    assert stamps == sorted(stamps, reverse=True) and len(set(stamps)) == 3


async def test_last_used_is_flushed_on_shutdown(make_settings, clock, aiohttp_client,
                                                redis_url):
    settings = make_settings()
    gw = build_gateway(settings, clock=clock)
    proxy = await aiohttp_client(ProxyTestServer(gw))
    issued = await gw.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
    t0 = now_ms(clock)
    assert (await proxy.get("/orders/1", headers=creds(issued.record.app_key,
                                                       issued.token))).status == 200
    await gw.close()  # no explicit flush
    store = Store.from_url(redis_url, settings.store_prefix, clock)
    try:
        record = await store.get_key("acme", issued.record.app_key)
        assert record is not None and record.last_used == t0
    finally:
        await store.close()


async def test_last_used_does_not_resurrect_a_deleted_key(admin, proxy, make_key, gateway):
    key = await make_key("acme", ["orders-reader"])
    assert (await proxy.get("/orders/1", headers=key.headers)).status == 200
    assert (await admin("DELETE", f"{KEYS}/{key.app_key}")).status == 204
    await gateway.last_used.flush()
    expect_error(await admin("GET", f"{KEYS}/{key.app_key}"), 404, "key_not_found")
    raw = await gateway.store.redis.hgetall(gateway.store.names.key(key.app_key))
    assert set(raw) == {"deleted"}


async def test_a_late_batch_does_not_turn_last_use_back(gateway, make_key):
    """Instances write their last-use batches on their own schedules: one holding an
    older use that writes after one holding a newer leaves the newer, in the key and in
    the last-use order alike; a newer use still moves it forward."""
    store = gateway.store
    first = await make_key("acme", ["orders-reader"])
    second = await make_key("acme", ["orders-reader"])
    await store.record_last_used({first.app_key: 2_000, second.app_key: 1_500})
    await store.record_last_used({first.app_key: 1_000})  # a slower instance's batch

    async def last_use_order() -> list[str]:
        keys, _ = await store.list_keys("acme", KeyQuery(sort="lastUsed", per_page=10))
        return [k.app_key for k in keys if k.app_key in (first.app_key, second.app_key)]

    record = await store.get_key("acme", first.app_key)
    assert record is not None and record.last_used == 2_000
    assert await last_use_order() == [first.app_key, second.app_key]
    await store.record_last_used({second.app_key: 2_500, first.app_key: 1_999})
    record = await store.get_key("acme", second.app_key)
    assert record is not None and record.last_used == 2_500
    assert (await store.get_key("acme", first.app_key)).last_used == 2_000
    assert await last_use_order() == [second.app_key, first.app_key]


async def test_a_last_use_that_is_not_a_number_is_replaced_not_compared(gateway, make_key):
    """A key whose lastUsed was written by hand as something else is written over by the
    next batch, which neither fails nor stalls the batch's other keys."""
    store = gateway.store
    odd, other = await make_key("acme", ["orders-reader"]), await make_key("acme", ["owner"])
    await store.redis.hset(store.names.key(odd.app_key), "lastUsed", "yesterday")
    await store.record_last_used({odd.app_key: 3_000, other.app_key: 3_100})
    assert (await store.get_key("acme", odd.app_key)).last_used == 3_000
    assert (await store.get_key("acme", other.app_key)).last_used == 3_100
