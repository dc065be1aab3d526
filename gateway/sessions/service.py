"""keygate's sessions at run time: the key ring in force, verification with a cache,
issuing session and identity tokens, rotation.

The signing keys come from PEM files named in ``jwt_private_key_files`` (the first is
current; rotation is then the operator's: change the list) or, by default, from the
store, where the first instance to start generates one (sealed under the server secret,
see :mod:`gateway.sessions.keys`) and ``keygate jwt rotate`` adds the next. Every
instance reloads the ring when told of a rotation (the store's invalidation channel)
and, as a safety net, when a token names a kid it does not know (at most once per
``RELOAD_AT_MOST`` seconds, so unknown kids cannot make it hammer the store).

Verification is cached per token: a session is verified once per process (ES256 costs
~150 µs), then every request with it costs a SHA-256 of the token, a dictionary lookup
and an expiry check, and the key's state is still read on every request by the
authenticator. Only sessions that verified enter the cache, but one key may sign in as
often as it likes, so the cache is bounded in bytes as well as entries: it is keyed by the
token's SHA-256 (32 bytes, not the ~600 characters of the token) and holds at most
``VERIFIED_SESSIONS`` entries, about 7 MB per process whoever signs in how often. A
session pushed out is verified again on its next request.

Identity tokens (the signed identity an upstream receives) are reused, as Oathkeeper's
``id_token`` mutator reuses its tokens: signing costs ~40 µs, about a quarter of a
proxied request, and a route that asks for the token would otherwise pay it on every
request. A token is reused only for exactly the same claims (key, owner account,
account, roles, resource, action, audience), only while it is signed by the key that
signs now (a rotation, ``--now`` included, is never answered with the old key's
tokens), and only while at least half its lifetime remains, so an upstream never
receives one that expires sooner than a fresh one would by more than half. At most
``IDENTITY_TOKENS`` are kept (~1 KB each) whatever the callers ask for.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from ..background import STOP_TIMEOUT
from ..cache import LRU
from ..errors import ConfigError, StoreUnavailable
from . import keys, tokens
from .keys import KeyRing, SigningKey

log = logging.getLogger("keygate.sessions")

RELOAD_AT_MOST = 5.0  # seconds between reloads for an unknown kid
# sessions whose verification a process remembers (~650 bytes each, see the module notes)
VERIFIED_SESSIONS = 10_000
# identity tokens a process reuses (see the module notes)
IDENTITY_TOKENS = 10_000


class SigningKeysUnavailable(StoreUnavailable):
    code = "signing_keys_unavailable"
    message = "keygate has not loaded its JWT signing keys from the store yet; retry later"


class SigningKeyStore(Protocol):
    """The store's part: sealed signing keys (``gateway.store``)."""

    async def signing_keys(self) -> list[str]: ...

    async def add_signing_key(
        self, sealed: str, retired: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> list[str]:
        """Store ``sealed`` and the retired versions of earlier keys, drop the kids in
        ``remove``, atomically, and announce the change; the stored keys after it."""
        ...

    async def first_signing_key(self, sealed: str) -> list[str]:
        """Store ``sealed`` only if there is no key yet (two instances starting at once
        agree on one); the stored keys after it."""
        ...


class Sessions:
    def __init__(
        self,
        *,
        store: SigningKeyStore,
        server_secrets: Sequence[bytes],
        algorithm: str,
        issuer: str,
        audience: str,
        session_ttl: int,
        leeway: float,
        identity_audience: str,
        identity_ttl: int,
        key_files: Sequence[Path] = (),
        cache_size: int = VERIFIED_SESSIONS,
        identity_cache_size: int = IDENTITY_TOKENS,
        clock: Callable[[], float] = time.time,
    ):
        if algorithm not in keys.ALGORITHMS:
            raise ConfigError(f"setting jwt_algorithm: {algorithm!r} is not one of "
                              f"{', '.join(keys.ALGORITHMS)}")
        self.store = store
        self.server_secrets = tuple(server_secrets)
        self.algorithm = algorithm
        self.issuer, self.audience = issuer, audience
        self.session_ttl, self.leeway = session_ttl, leeway
        self.identity_audience, self.identity_ttl = identity_audience, identity_ttl
        self.clock = clock
        self.from_files = bool(key_files)
        self.ring: KeyRing | None = None
        if key_files:  # loaded now: a bad file is a configuration error before serving
            now = int(clock())
            loaded = [keys.load_pem(Path(path), created=now - i)
                      for i, path in enumerate(key_files)]
            self.ring = KeyRing(loaded, self.max_lifetime, now)
        self._verified: LRU[bytes, tokens.SessionClaims] = LRU(cache_size)
        # claims (with the signing kid) -> the token and until when it is reused
        self._identity_tokens: LRU[tuple[object, ...], tuple[str, float]] = LRU(
            identity_cache_size)
        self._last_reload = 0.0
        # every read of the stored keys, with the ring it gives, one at a time: a read
        # made before a rotation must not replace, once it ends, the ring made after it
        self._loading = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def max_lifetime(self) -> int:
        """How long a retired key must still verify: the longest token it signed."""
        return max(self.session_ttl, self.identity_ttl) + int(self.leeway) + 1

    # -- the ring ----------------------------------------------------------------------------
    async def load(self) -> None:
        """The ring from the store, making the first key when there is none."""
        if self.from_files:
            return
        records = await self.store.signing_keys()
        if not records:
            first = keys.generate(self.algorithm, int(self.clock()))
            records = await self.store.first_signing_key(
                keys.seal(first, self.server_secrets[0]))
        self.ring = self._ring_of(records)
        self._last_reload = self.clock()

    def _ring_of(self, records: list[str]) -> KeyRing:
        opened: list[SigningKey] = []
        for record in records:
            try:
                opened.append(keys.unseal(record, self.server_secrets))
            except keys.UnsealError as exc:
                log.error("skipping a stored signing key: %s", exc)
        try:
            return KeyRing(opened, self.max_lifetime, int(self.clock()))
        except ValueError:
            raise ConfigError(
                "no stored JWT signing key can be used (none current, or none opens with "
                "the server secret: secret, secret_file); run `keygate jwt rotate`"
            ) from None

    def publish_ahead(self) -> int:
        """Seconds a new key is published before it signs: verifiers' JWKS caches, and
        the leeway by which instances' clocks may disagree."""
        return keys.JWKS_MAX_AGE + int(self.leeway)

    async def rotate(self, at_once: bool = False) -> SigningKey:
        """A new key, published at once and signing from ``publish_ahead()`` seconds on
        (``at_once``: now, for a key believed leaked), when the previous ones stop
        signing; they stay for verification while their tokens may live. Refused when
        the keys come from files."""
        if self.from_files:
            raise ConfigError("the JWT signing keys come from jwt_private_key_files: rotate "
                              "by changing that list")
        async with self._loading:
            return await self._rotate(at_once)

    async def _rotate(self, at_once: bool) -> SigningKey:
        now = int(self.clock())
        records = await self.store.signing_keys()
        opened: list[SigningKey] = []
        for record in records:
            with contextlib.suppress(keys.UnsealError):
                opened.append(keys.unseal(record, self.server_secrets))
        # with no key that signs now or later there is nothing to publish ahead of
        signing = any(not k.retired_by(now) for k in opened)
        starts = now + self.publish_ahead() if signing and not at_once else now
        retired, expired = [], []
        for key in opened:
            if not key.retired_by(starts):
                retired.append(keys.seal(key.retire(starts), self.server_secrets[0]))
            elif key.retired + self.max_lifetime <= now:
                expired.append(key.kid)  # every token it signed has expired
        new = keys.generate(self.algorithm, now, signs_from=starts)
        self.ring = self._ring_of(await self.store.add_signing_key(
            keys.seal(new, self.server_secrets[0]), retired, expired))
        self._last_reload = self.clock()
        return new

    async def changed(self) -> None:
        """Told that the stored keys changed (a rotation elsewhere)."""
        if not self.from_files:
            async with self._loading:
                self.ring = self._ring_of(await self.store.signing_keys())
                self._last_reload = self.clock()

    def heard(self) -> None:
        """The store's listener says the stored keys changed (or a message may have been
        missed): reload them, off the listener."""
        if self.from_files or self.ring is None or self._closed:
            return  # not loaded yet: the first use loads them anyway
        task = asyncio.get_running_loop().create_task(self._reload_quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_quietly(self) -> None:
        try:
            await self.changed()
        except Exception as exc:  # the store is down, or no key opens: keep the old ring
            log.warning("could not reload the JWT signing keys: %s", exc)

    async def close(self) -> None:
        """Stop the background loads, bounded: a cancellation that lands inside a store
        call may come back as a store error, which the load loop would retry, so the
        loop also stops on the flag, and close never waits longer than STOP_TIMEOUT."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT)

    def start(self) -> None:
        """Load the ring in the background, retrying while the store does not answer,
        so that the first request that needs it (an identity token) finds it."""
        if self.ring is None:
            task = asyncio.get_running_loop().create_task(self._load_until_done())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _load_until_done(self) -> None:
        delay = 0.1
        while self.ring is None and not self._closed:
            try:
                await self._loaded()
            except (StoreUnavailable, ConfigError) as exc:
                log.warning("JWT signing keys not loaded yet (%s); retrying in %g s",
                            exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _ring(self) -> KeyRing:
        if self.ring is None:
            raise SigningKeysUnavailable()
        return self._as_now(self.ring)

    def _as_now(self, ring: KeyRing) -> KeyRing:
        """The ring with the key that signs now current (a published key's time come)."""
        updated = ring.at(int(self.clock()))
        if updated is not ring:
            self.ring = updated
        return updated

    # -- tokens ------------------------------------------------------------------------------
    async def issue(self, app_key: str, owner: str, token_digest: str,
                    ended_until: int = 0) -> tuple[str, int]:
        """A session for the key; ``ended_until``: the key's sessions issued at or
        before that second are ended (a sign-out of every session, in whole seconds).
        One signed in that same second, or after a sign-out through an instance whose
        clock runs a little ahead, would be born ended: it is stamped the second after,
        as far as the leeway lets every instance accept a time ahead of its own."""
        now = int(self.clock())
        if ended_until >= now:
            now = min(ended_until + 1, now + max(int(self.leeway) - 1, 0))
        return tokens.issue_session(
            await self.ready(), issuer=self.issuer, audience=self.audience, app_key=app_key,
            owner=owner, token_digest=token_digest, ttl=self.session_ttl, now=now)

    async def check_at_start(self) -> None:
        """Refuse to start (ConfigError, saying to run ``keygate jwt rotate``) when the
        store answers but none of its signing keys opens with the server secrets; a store
        that does not answer yet is left to :meth:`start`."""
        with contextlib.suppress(StoreUnavailable):
            await self._loaded()

    async def ready(self) -> KeyRing:
        """The ring, loaded from the store on first use (one load at a time): 503 while
        no stored key opens (a request is never answered with a configuration error)."""
        try:
            return await self._loaded()
        except ConfigError:
            raise SigningKeysUnavailable() from None

    async def _loaded(self) -> KeyRing:
        if self.ring is None:
            async with self._loading:
                if self.ring is None:
                    await self.load()
        assert self.ring is not None
        return self._as_now(self.ring)

    async def verify(self, token: str) -> tokens.SessionClaims | None:
        """The claims of a valid session token, None when the token is not keygate's,
        :class:`~gateway.sessions.tokens.InvalidSession` when it is and fails."""
        if len(token) > tokens.MAX_TOKEN_LENGTH:
            return None  # not a token of keygate's, and not worth hashing
        # surrogatepass: a header's non-UTF-8 bytes arrive as surrogates (not ours either)
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        claims = self._verified.get(digest)
        if claims is not None:
            if self.clock() < claims.expires + self.leeway:
                return claims
            raise tokens.ExpiredSession("expired")
        ring = await self.ready()
        try:
            claims = tokens.verify_session(ring, token, issuer=self.issuer,
                                           audience=self.audience, leeway=self.leeway)
        except tokens.UnknownKid:
            # signed by a key this process has not heard of yet (a rotation whose
            # announcement it missed): reload, at most every RELOAD_AT_MOST seconds
            if self.from_files or self.clock() - self._last_reload < RELOAD_AT_MOST:
                raise
            # taken before the read: tokens arriving while it runs must not each start
            # one of their own (a burst of forged kids would read the store as often)
            self._last_reload = self.clock()
            try:
                await self.changed()
            except ConfigError as exc:
                # the store holds no key this process can use (lost with the store's
                # data, or sealed under another secret): the ring in force stays, and
                # the kid is unknown to it (a 401, never a 500 anyone can cause)
                log.warning("could not reload the JWT signing keys: %s", exc)
                raise tokens.UnknownKid("unknown kid") from None
            claims = tokens.verify_session(self._ring(), token, issuer=self.issuer,
                                           audience=self.audience, leeway=self.leeway)
        if claims is not None:
            self._verified.put(digest, claims)
        return claims

    def is_keygates(self, token: str) -> bool:
        return tokens.is_keygates(self.ring, token)

    def identity_token(self, app_key: str, owner: str, account: str, roles: Sequence[str],
                       resource: str, action: str, audience: str | None = None) -> str:
        """The identity token for these claims: a fresh one, or the one issued for the
        same claims by the key that signs now while half its lifetime remains (see the
        module notes)."""
        ring = self._ring()
        audience = audience or self.identity_audience
        claims = (ring.current.kid, audience, app_key, owner, account, tuple(roles),
                  resource, action)
        now = self.clock()
        cached = self._identity_tokens.get(claims)
        if cached is not None and now < cached[1]:
            return cached[0]
        issued_at = int(now)
        token = tokens.issue_identity(
            ring, issuer=self.issuer, audience=audience, app_key=app_key, owner=owner,
            account=account, roles=roles, resource=resource, action=action,
            ttl=self.identity_ttl, now=issued_at)
        # from the token's own iat (whole seconds), so what is left of it is never less
        # than half its lifetime
        self._identity_tokens.put(claims, (token, issued_at + self.identity_ttl / 2))
        return token

    @property
    def identity_tokens_kept(self) -> int:
        """How many identity tokens this process keeps for reuse."""
        return len(self._identity_tokens)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return self._ring().jwks()
