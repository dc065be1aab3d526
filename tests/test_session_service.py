"""The sessions service (gateway.sessions.service) attacked in-process: what one key
that signs in without end makes a process hold, tokens naming a kid the process does
not know, and when a rotated key starts to sign. Real redis-server where a store is
needed."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jwt
import pytest
from conftest import TEST_SECRET
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.sessions import keys, tokens
from gateway.sessions.service import RELOAD_AT_MOST, VERIFIED_SESSIONS, Sessions
from gateway.sessions.tokens import InvalidSession

APP_KEY = "kgk-acme-7QX2M4PZ9B"


def sessions_on(store: Any, *, clock: Callable[[], float] = time.time,
                algorithm: str = keys.ES256, key_files: Sequence[Path] = ()) -> Sessions:
    """A sessions service on ``store`` (its signing keys), as keygate makes one."""
    return Sessions(store=store, server_secrets=[TEST_SECRET.encode()], algorithm=algorithm,
                    issuer="keygate", audience="keygate", session_ttl=3600, leeway=10,
                    identity_audience="keygate-upstream", identity_ttl=60,
                    key_files=key_files, clock=clock)


def stranger_session() -> str:
    """A session token in keygate's form, signed by a key no keygate holds (anyone can
    make one: any kid, typ session)."""
    now = int(time.time())
    stranger = keys.KeyRing([keys.generate(keys.ES256, now)], 3600, now)
    forged, _ = tokens.issue_session(stranger, issuer="keygate", audience="keygate",
                                     app_key=APP_KEY, owner="acme", token_digest="ab" * 32,
                                     ttl=600, now=now)
    return forged


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
    sessions = sessions_on(None, algorithm=keys.EDDSA, key_files=[tmp_path / "signing.pem"])

    async def signed_in() -> str:
        token, _ = await sessions.issue(APP_KEY, "acme", "ab" * 32)
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
    # the gateway's own first load (in the background since it started) is over: done
    # after the keys are deleted, it would make a new first key, which the reload below
    # would then find
    await gateway.sessions.ready()
    now = time.time()
    sessions = sessions_on(gateway.store, clock=lambda: now)
    own, _ = await sessions.issue(APP_KEY, "acme", "ab" * 32)
    await gateway.store.redis.delete(gateway.store.names.signing_keys_record)
    now += RELOAD_AT_MOST + 1
    with pytest.raises(InvalidSession):
        await sessions.verify(stranger_session())
    assert (await sessions.verify(own)) is not None
    await sessions.close()


async def test_a_rotated_key_signs_once_verifiers_caches_have_it_on_every_instance(gateway):
    """`keygate jwt rotate` publishes the new key at once and signs with it only
    publish_ahead() seconds later (the JWKS's max-age and the leeway), on every instance,
    with no further word from the store; every session signed meanwhile stays valid."""
    shift = [0.0]

    def made() -> Sessions:
        return sessions_on(gateway.store, clock=lambda: time.time() + shift[0])

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

    meanwhile, _ = await other.issue(APP_KEY, "acme", "ab" * 32)
    assert kid_of(meanwhile) == first
    shift[0] = new.signs_from - time.time() - 1  # a second before
    assert kid_of((await other.issue(APP_KEY, "acme", "ab" * 32))[0]) == first
    shift[0] = new.signs_from - time.time()
    for instance in (rotating, other):
        after, _ = await instance.issue(APP_KEY, "acme", "ab" * 32)
        assert kid_of(after) == new.kid
        assert [k["kid"] for k in instance.jwks()["keys"]] == [new.kid, first]
    shift[0] = 0.0  # pyjwt checks times against the system clock
    verifier = made()
    assert await verifier.verify(meanwhile) is not None
    for instance in (rotating, other, verifier):
        await instance.close()


class CountedReads:
    """The store's signing keys, with the reads of them counted."""

    def __init__(self, store: Any):
        self.store = store
        self.reads = 0

    async def signing_keys(self) -> list[str]:
        self.reads += 1
        return await self.store.signing_keys()

    async def first_signing_key(self, sealed: str) -> list[str]:
        return await self.store.first_signing_key(sealed)


async def test_a_burst_of_sessions_naming_an_unknown_kid_reloads_the_keys_once(gateway):
    """A session naming a signing key this process has not heard of makes it reload the
    keys from the store, at most once per RELOAD_AT_MOST seconds. The time was taken
    only once the reload ended, so forged tokens arriving meanwhile (anyone can make
    one: any kid, typ session) each read the store again."""
    now = 1000.0
    store = CountedReads(gateway.store)
    sessions = sessions_on(store, clock=lambda: now)
    await sessions.ready()
    forged = stranger_session()
    now += RELOAD_AT_MOST + 1
    loaded = store.reads
    answers = await asyncio.gather(*(sessions.verify(forged) for _ in range(100)),
                                   return_exceptions=True)
    assert all(isinstance(answer, InvalidSession) for answer in answers)
    assert store.reads - loaded == 1
    await sessions.close()


class HeldRead:
    """The store's signing keys, where the next read, once made, is held until ``gate``
    is set (a reload whose answer is slow to come back)."""

    def __init__(self, store: Any):
        self.store = store
        self.hold_next = False
        self.holding, self.gate = asyncio.Event(), asyncio.Event()

    async def signing_keys(self) -> list[str]:
        records = await self.store.signing_keys()
        if self.hold_next:
            self.hold_next = False
            self.holding.set()
            await self.gate.wait()
        return records

    async def first_signing_key(self, sealed: str) -> list[str]:
        return await self.store.first_signing_key(sealed)

    async def add_signing_key(self, sealed: str, retired: Sequence[str] = (),
                              remove: Sequence[str] = ()) -> list[str]:
        return await self.store.add_signing_key(sealed, retired, remove)


async def test_a_reload_read_before_a_rotation_does_not_undo_it(gateway):
    """A rotation's notice makes every instance reload the keys, the rotating one too.
    Reloads and rotations each set the ring when their read came back, so a reload that
    read the keys before `jwt rotate --now` and came back after it put back the ring
    before it: the key believed leaked went on signing until the next rotation. Reads
    of the keys and the rings they give now happen one at a time."""
    store = HeldRead(gateway.store)
    sessions = sessions_on(store)
    leaked = (await sessions.ready()).current.kid
    store.hold_next = True
    reload = asyncio.create_task(sessions.changed())
    await store.holding.wait()  # it has read the keys as they were
    rotation = asyncio.create_task(sessions.rotate(at_once=True))
    await asyncio.wait({rotation}, timeout=1.0)  # done, or waiting for the reload
    store.gate.set()
    urgent = await rotation
    await reload
    assert urgent.kid != leaked
    assert (await sessions.ready()).current.kid == urgent.kid
    await sessions.close()
