"""Authentication reads: what a request needs to know of a key, from the credential
cache, else in one round trip (a key's grants live in its own hash: one HMGET)."""

from __future__ import annotations

from .core import StoreCore, unavailable
from .records import AuthLookup, EndedSessions, Grant, token_digest

# sessions a key keeps ended one by one; signing out of one more ends all it has
# (end_session.lua), so a key's hash stays small whoever signs in and out
ENDED_SESSIONS_KEPT = 64


class AuthReads(StoreCore):
    @property
    def cache_trusted(self) -> bool:
        return self.credential_cache.trusted

    def cached_lookup(self, app_key: str, account: str) -> AuthLookup | None:
        """What :meth:`auth_lookup` would answer from memory, or None: no I/O."""
        return self.credential_cache.lookup(app_key, account)

    async def auth_lookup(self, app_key: str, account: str) -> AuthLookup:
        """Key status, token digests and the grant in ``account``: cached, else one HMGET."""
        cache = self.credential_cache
        found = cache.lookup(app_key, account)
        if found is not None:
            return found
        ticket = cache.ticket()
        found = await self._auth_lookup(app_key, account)
        cache.remember(ticket, app_key, account, found)
        return found

    @unavailable
    async def _auth_lookup(self, app_key: str, account: str) -> AuthLookup:
        owner, status, tok, new_tok, grant, ended = await self.redis.hmget(
            self.names.key(app_key),
            ["acct", "status", "tok", "newTok", "g:" + account, "sessEnd"],
        )
        return AuthLookup(
            owner=owner,
            status=status,
            token_digests=tuple(token_digest(d) for d in (tok, new_tok) if d),
            grant=Grant.decode(grant),
            ended_sessions=EndedSessions.decode(ended),
        )

    @unavailable
    async def end_session(self, app_key: str, jti: str, issued: int, expires: int,
                          now: int) -> bool:
        """Sign a key out of one session (its jti and issue time, until ``expires``, the
        last second an instance accepts it, leeway included; ``now`` on the clock that
        stamps sessions, in seconds): this process forgets the key at
        once, every other on the script's notice, so each refuses the session from its
        next request. False when the key does not exist."""
        try:
            return bool(await self.scripts.end_session(
                keys=[self.names.key(app_key)],
                args=[jti, expires, now, self.channel, ENDED_SESSIONS_KEPT, issued],
            ))
        finally:
            self.forget(app_key)
