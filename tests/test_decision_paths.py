"""The decision API decides as the proxy port does: the same requests through keygate's
own proxy port and through each form of the decision API get the same status and error
code, path for path.

Paths are where front doors differ. The nginx form normalises as the proxy port does
and answers the path it authorized in ``X-Keygate-Path`` (the shipped nginx config
forwards exactly that); Traefik and Envoy forward the path as they read it, so their
forms allow only a path already in keygate's normal form (up to the case of ``%XX``
escapes) and answer any other with 400 ``path_not_normal``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from decider import FORMS, PORTS, Decider, Reply, deciding, outcome

from gateway.errors import BadRequest
from gateway.routes import normalise_path

PATHS = [
    "/orders/42", "//orders//42", "/orders/./42", "/orders/x/../42", "/orders/x/../admin",
    "/orders/../admin", "/orders/%2e%2e/admin", "/orders/%2E%2E/beta/orders/1",
    "/orders/../beta/orders/1", "/beta/orders/%2e%2e/%2e%2e/orders/1", "/%6Frders/42",
    "/orders/42/", "/orders/%e2%82%ac", "/orders/%E2%82%AC", "/orders/42?next=/../admin",
    "/orders/%2f", "/orders%2f42", "/orders/%2F..%2Fadmin", "/orders/a%5cb", "/orders/1;x",
    "/orders/..;/x", "/orders/%2e%2e;/x", "/orders/42.", "/..", "/orders/../../x",
    "/%2e%2e/orders/1", "/orders/%00", "/orders/%zz", "/orders/%", "/orders//", "/./orders/1",
    "/orders/%7e", "/orders/~", "/orders/%41", "/ORDERS/1",
    "/orders/%252e%252e/admin", "/orders/%u002e%u002e/x", "/orders/1/.%2e/.%2E/beta/orders/1",
    "/orders/;/../../beta/orders/1", "/orders/%3B/../../beta/orders/1", "/orders/.%2e",
    "/orders/1%23/../../beta/orders/1", "/orders/1?/../../beta/orders/1",
    "/orders/%5c..%5cbeta", "/orders/%E2%80%AE", "/orders/1/%20", "/orders/%3b",
]


@pytest.fixture
async def decider(gateway, make_settings) -> AsyncIterator[Decider]:
    # the proxy port and the decision API count failures of the same address and keys
    settings = make_settings(store_prefix=gateway.settings.store_prefix,
                             auth_failure_limit=1000, auth_failure_key_limit=1000, **PORTS)
    async with aiohttp.ClientSession() as session, deciding(settings, session) as decider:
        yield decider


def proxy_outcome(reply: Reply) -> tuple[int, str | None]:
    return (200, None) if reply.status == 200 else (reply.status, reply.error["code"])


@pytest.mark.parametrize("raw", PATHS)
async def test_each_form_decides_a_path_as_the_proxy_port_does(decider, make_key, upstream,
                                                               raw):
    key = await make_key("acme", ["owner"])
    direct = await decider.through_proxy("GET", raw, key.headers)
    forwarded = [r["raw_path"].partition("?")[0] for r in upstream.requests]
    expected = proxy_outcome(direct)
    assert len(forwarded) == (1 if expected == (200, None) else 0)
    raw_path = raw.partition("?")[0]
    for form in FORMS:
        reply = await decider.ask(form, "GET", raw, key.headers)
        got = outcome(form, reply)
        if expected != (200, None):
            assert got == expected, (form, reply.body)
        elif form == "nginx":
            assert got == expected, reply.body
            # what nginx forwards is what the proxy port forwarded
            assert reply.headers.getall("X-Keygate-Path") == forwarded
        elif forwarded[0].upper() == raw_path.upper():
            assert got == expected, (form, reply.body)
        else:  # allowed, but only as another path than the one Traefik or Envoy forwards
            assert got == (400, "path_not_normal"), (form, reply.body)


def test_the_table_holds_both_kinds_of_path():
    """Without paths that keygate normalises into another one, and paths it refuses,
    the test above would prove nothing about either."""
    changed, refused = 0, 0
    for raw in PATHS:
        path = raw.partition("?")[0]
        try:
            changed += normalise_path(path).upper() != path.upper()
        except BadRequest:
            refused += 1
    assert changed >= 8 and refused >= 8


WHO = ("reader", "writer", "owner", "beta-owner", "none", "incomplete", "wrong", "unknown",
       "malformed")
REQUESTS = [
    ("GET", "/orders/1"), ("HEAD", "/orders/1"), ("OPTIONS", "/orders/1"),
    ("POST", "/orders/1"), ("PUT", "/orders/1"), ("DELETE", "/orders/1"),
    ("PATCH", "/orders/1?x=1"), ("GET", "/beta/orders/1"), ("POST", "/beta/orders/1"),
    ("GET", "/accounts/acme/orders/1"), ("DELETE", "/accounts/acme/orders/1"),
    ("GET", "/accounts/beta/orders/1"), ("GET", "/accounts/Not_Valid/orders"),
    ("GET", "/nowhere"), ("GET", "/"), ("PROPFIND", "/orders/1"),
]


async def credentials(make_key: Any) -> dict[str, list[tuple[str, str]]]:
    reader = await make_key("acme", ["orders-reader"])
    writer = await make_key("acme", ["orders-writer"])
    owner = await make_key("acme", ["owner"])
    beta = await make_key("beta", ["owner"])
    last = "y" if reader.token.endswith("x") else "x"
    return {
        "reader": [*reader.headers.items()], "writer": [*writer.headers.items()],
        "owner": [*owner.headers.items()], "beta-owner": [*beta.headers.items()],
        "none": [], "incomplete": [("X-API-AppKey", reader.app_key)],
        "wrong": [("X-API-AppKey", reader.app_key),
                  ("X-API-AppToken", reader.token[:-1] + last)],
        "unknown": [("X-API-AppKey", "kgk-acme-AAAAAAAAAA"), ("X-API-AppToken", "kgt_" + "A" * 36)],
        "malformed": [("X-API-AppKey", reader.app_key), ("X-API-AppToken", "t" * 300)],
    }


async def test_a_table_of_requests_gets_the_same_decisions_on_every_front_door(
    decider, make_key
):
    keys = await credentials(make_key)
    seen: set[tuple[int, str | None]] = set()
    for method, target in REQUESTS:
        for who in WHO:
            direct = await decider.through_proxy(method, target, keys[who])
            expected = proxy_outcome(direct) if method != "HEAD" else (direct.status, None)
            seen.add(expected)
            for form in FORMS:
                reply = await decider.ask(form, method, target, keys[who])
                if method == "HEAD":  # no body to compare (Envoy's form is a HEAD too)
                    got = (int(reply.headers.get("X-Keygate-Status", reply.status)), None)
                else:
                    got = outcome(form, reply)
                assert got == expected, (method, target, who, form, reply.body)
    # the table reaches every kind of answer
    assert {status for status, _ in seen} == {200, 400, 401, 403, 404}
    assert {code for _, code in seen} >= {
        None, "missing_credentials", "incomplete_credentials", "invalid_credentials",
        "malformed_credentials", "no_grant", "not_permitted", "no_route", "bad_account",
    }


async def test_the_host_of_the_request_decides_as_on_the_proxy_port(decider, make_key):
    key = await make_key("acme", ["catalog-reader"])
    for host in ("acme.api.test", "beta.api.test", "ACME.api.test", "acme.api.test.",
                 "acme.api.test:8080", "api.test", "a_b.api.test"):
        direct = proxy_outcome(await decider.through_proxy("GET", "/catalog/1", key.headers,
                                                           host=host))
        for form in FORMS:
            reply = await decider.ask(form, "GET", "/catalog/1", key.headers, host=host)
            assert outcome(form, reply) == direct, (host, form, reply.body)
