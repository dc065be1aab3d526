"""The sessions service (gateway.sessions.service) attacked in-process: what one key
that signs in without end makes a process hold, and a token naming a kid when the
store has no usable signing key. Real redis-server where a store is needed."""

from __future__ import annotations

import gc
import time
import tracemalloc

import jwt
import pytest
from conftest import TEST_SECRET
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.sessions import keys, tokens
from gateway.sessions.service import RELOAD_AT_MOST, VERIFIED_SESSIONS, Sessions
from gateway.sessions.tokens import InvalidSession


async def test_the_verified_sessions_cache_stays_small_however_often_one_key_signs_in(
    tmp_path,
):
    """Only sessions that verified are cached, but a key may sign in as often as it
    likes: the cache held 100,000 whole token strings with their claims (~1.3 KB each,
    ~130 MB per process). It now holds VERIFIED_SESSIONS entries keyed by a digest."""
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    (tmp_path / "signing.pem").write_bytes(pem)
    sessions = Sessions(store=None, server_secrets=[TEST_SECRET.encode()],  # type: ignore[arg-type]
                        algorithm=keys.EDDSA, issuer="keygate", audience="keygate",
                        session_ttl=3600, leeway=10, identity_audience="keygate-upstream",
                        identity_ttl=60, key_files=[tmp_path / "signing.pem"])

    async def signed_in() -> str:
        token, _ = await sessions.issue("kgk-acme-7QX2M4PZ9B", "acme", "ab" * 32)
        assert await sessions.verify(token) is not None
        return token

    first = await signed_in()
    measured = 2000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(measured):
            await signed_in()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held / measured <= 800, held / measured  # bytes per remembered session (~600)
    for _ in range(VERIFIED_SESSIONS - measured):
        last = await signed_in()
    # the signing key goes: a remembered session still passes, one pushed out is
    # verified again and refused, so the cache holds no more than VERIFIED_SESSIONS
    sessions.ring = keys.KeyRing([keys.generate(keys.EDDSA, int(time.time()))], 3600,
                                 int(time.time()))
    assert (await sessions.verify(last)) is not None
    with pytest.raises(InvalidSession):
        await sessions.verify(first)
    await sessions.close()


async def test_a_session_naming_an_unknown_kid_is_refused_when_the_store_lost_its_keys(
    gateway,
):
    """A kid the process does not know makes it reload the keys from the store; when
    the store holds none it can use (its data lost, or keys sealed under another
    secret), the reload's configuration error was the answer: anyone could get a 500
    with a token naming any kid. It is an invalid session now (401), and the ring in
    force goes on."""
    now = time.time()
    sessions = Sessions(store=gateway.store, server_secrets=[TEST_SECRET.encode()],
                        algorithm=keys.ES256, issuer="keygate", audience="keygate",
                        session_ttl=3600, leeway=10, identity_audience="keygate-upstream",
                        identity_ttl=60, clock=lambda: now)
    own, _ = await sessions.issue("kgk-acme-7QX2M4PZ9B", "acme", "ab" * 32)
    await gateway.store.redis.delete(gateway.store.names.signing_keys_record)
    stranger = keys.KeyRing([keys.generate(keys.ES256, int(time.time()))], 3600,
                            int(time.time()))
    forged, _ = tokens.issue_session(stranger, issuer="keygate", audience="keygate",
                                     app_key="kgk-acme-7QX2M4PZ9B", owner="acme",
                                     token_digest="ab" * 32, ttl=600, now=int(time.time()))
    now += RELOAD_AT_MOST + 1
    with pytest.raises(InvalidSession):
        await sessions.verify(forged)
    assert (await sessions.verify(own)) is not None
    await sessions.close()


async def test_a_rotated_key_signs_once_verifiers_caches_have_it_on_every_instance(gateway):
    """`keygate jwt rotate` publishes the new key at once and signs with it only
    publish_ahead() seconds later (the JWKS's max-age and the leeway), on every instance,
    with no further word from the store; every session signed meanwhile stays valid."""
    shift = [0.0]

    def made(clock=lambda: time.time() + shift[0]) -> Sessions:
        return Sessions(store=gateway.store, server_secrets=[TEST_SECRET.encode()],
                        algorithm=keys.ES256, issuer="keygate", audience="keygate",
                        session_ttl=3600, leeway=10, identity_audience="keygate-upstream",
                        identity_ttl=60, clock=clock)

    rotating, other = made(), made()
    first = (await rotating.ready()).current.kid
    before = int(time.time())
    new = await rotating.rotate()
    ahead = keys.JWKS_MAX_AGE + 10
    assert before + ahead <= new.signs_from <= int(time.time()) + ahead
    await other.changed()  # as the invalidation channel tells it
    for instance in (rotating, other):
        assert [k["kid"] for k in instance.jwks()["keys"]] == [first, new.kid]

    def kid_of(token: str) -> str:
        return jwt.get_unverified_header(token)["kid"]

    meanwhile, _ = await other.issue("kgk-acme-7QX2M4PZ9B", "acme", "ab" * 32)
    assert kid_of(meanwhile) == first
    shift[0] = new.signs_from - time.time() - 1  # a second before
    assert kid_of((await other.issue("kgk-acme-7QX2M4PZ9B", "acme", "ab" * 32))[0]) == first
    shift[0] = new.signs_from - time.time()
    for instance in (rotating, other):
        after, _ = await instance.issue("kgk-acme-7QX2M4PZ9B", "acme", "ab" * 32)
        assert kid_of(after) == new.kid
        assert [k["kid"] for k in instance.jwks()["keys"]] == [new.kid, first]
    shift[0] = 0.0  # pyjwt checks times against the system clock
    verifier = made()
    assert await verifier.verify(meanwhile) is not None
    for instance in (rotating, other, verifier):
        await instance.close()
