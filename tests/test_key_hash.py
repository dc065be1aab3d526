"""A key's hash, the one record every key has, is kept short: its own grant as the
array of its roles, the token's digest in base64url, no creation date until a renewal
moves the token's. A hash an older keygate wrote (hex digest, grant object, both dates)
is read alike: its token still authenticates, it lists, changes and renews, and a
change writes its grant the short way."""

from __future__ import annotations

import base64

import orjson
from conftest import on_one_server_and_a_cluster

from gateway.context import Gateway
from gateway.store import CLI_ACTOR, KeyQuery
from gateway.store.records import stored_digest, token_digest

redis_url = on_one_server_and_a_cluster()


async def listed(gateway: Gateway, query: KeyQuery) -> list[str]:
    records, _ = await gateway.store.list_keys("acme", query)
    return [record.app_key for record in records]


async def authenticates(gateway: Gateway, app_key: str, token: str, account: str) -> bool:
    gateway.store.forget(app_key)  # read the hash again, not the credential cache
    found = await gateway.store.auth_lookup(app_key, account)
    return gateway.hasher.matches(token, found.token_digests)


def test_a_digest_is_stored_in_base64url_and_read_back_exactly():
    digest = "0f" * 32
    stored = stored_digest(digest)
    assert len(stored) == 43 and base64.urlsafe_b64decode(stored + "=").hex() == digest
    assert token_digest(stored) == digest
    assert token_digest(digest) == digest  # as an older keygate wrote it
    # not a digest keygate makes: kept as given, both ways
    for odd in ("d" * 64 + "x", "z" * 64, "short", "A" * 43 + "!"):
        assert token_digest(stored_digest(odd)) == odd


async def test_a_new_key_hash_holds_its_fields_the_short_way(gateway: Gateway, clock):
    made = await gateway.lifecycle.create("acme", "short", ["orders-reader", "orders-writer"],
                                          CLI_ACTOR)
    app_key = made.record.app_key
    held = await gateway.store.redis.hgetall(gateway.store.names.key(app_key))
    assert "created" not in held
    assert orjson.loads(held["g:acme"]) == ["orders-reader", "orders-writer"]
    assert len(held["tok"]) == 43 and held["tok"] != gateway.hasher.digest(made.token)
    assert await authenticates(gateway, app_key, made.token, "acme")
    assert not await authenticates(gateway, app_key, made.token + "x", "acme")
    record = await gateway.store.get_key("acme", app_key)
    assert record.created == record.token_created == made.record.created

    # a renewal moves the token's date: the creation date is written then, and stays
    clock.advance(3600)
    renewed = await gateway.lifecycle.renew("acme", app_key, CLI_ACTOR, keep_old=False)
    record = await gateway.store.get_key("acme", app_key)
    assert record.created == made.record.created < record.token_created
    held = await gateway.store.redis.hgetall(gateway.store.names.key(app_key))
    assert int(held["created"]) == made.record.created
    assert await authenticates(gateway, app_key, renewed.token, "acme")
    clock.advance(3600)
    again = await gateway.lifecycle.renew("acme", app_key, CLI_ACTOR, keep_old=True)
    await gateway.store.end_renewal("acme", app_key, finish=True, actor=CLI_ACTOR)
    record = await gateway.store.get_key("acme", app_key)
    assert record.created == made.record.created < record.token_created
    assert await authenticates(gateway, app_key, again.token, "acme")
    assert not await authenticates(gateway, app_key, renewed.token, "acme")
    # the creation date index still orders it by its creation, not by its token
    later = await gateway.lifecycle.create("acme", "later", ["orders-reader"], CLI_ACTOR)
    assert await listed(gateway, KeyQuery(sort="creationDate", descending=False)) == [
        app_key, later.record.app_key]


async def test_a_hash_an_older_keygate_wrote_is_read_changed_and_renewed(gateway: Gateway,
                                                                          clock):
    made = await gateway.lifecycle.create("acme", "older", ["orders-reader"], CLI_ACTOR)
    app_key = made.record.app_key
    name = gateway.store.names.key(app_key)
    created = made.record.created
    # as a keygate before the short fields wrote it
    await gateway.store.redis.hset(name, mapping={
        "created": created,
        "tok": gateway.hasher.digest(made.token),
        "g:acme": orjson.dumps({"roles": ["orders-reader"], "status": "active"}).decode(),
    })
    assert await authenticates(gateway, app_key, made.token, "acme")
    record = await gateway.store.get_key("acme", app_key)
    assert (record.roles, record.created, record.token_created) == (
        ("orders-reader",), created, created)
    assert await listed(gateway, KeyQuery(role="orders-reader")) == [app_key]

    await gateway.store.update_key("acme", app_key, actor=CLI_ACTOR, roles=["orders-writer"])
    held = await gateway.store.redis.hgetall(name)
    assert orjson.loads(held["g:acme"]) == ["orders-writer"]
    assert await listed(gateway, KeyQuery(role="orders-writer")) == [app_key]
    assert await listed(gateway, KeyQuery(role="orders-reader")) == []

    clock.advance(60)
    renewed = await gateway.lifecycle.renew("acme", app_key, CLI_ACTOR, keep_old=True)
    # both tokens work while the renewal is pending: the old digest in hex, the new short
    assert await authenticates(gateway, app_key, made.token, "acme")
    assert await authenticates(gateway, app_key, renewed.token, "acme")
    await gateway.store.end_renewal("acme", app_key, finish=True, actor=CLI_ACTOR)
    assert not await authenticates(gateway, app_key, made.token, "acme")
    assert await authenticates(gateway, app_key, renewed.token, "acme")
    record = await gateway.store.get_key("acme", app_key)
    assert record.created == created < record.token_created
