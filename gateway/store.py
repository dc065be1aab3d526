"""The key store: the only module that imports redis.

Layout (every name starts with the ``store_prefix`` setting, ``kg:`` by default):

``{p}key:{appKey}`` — hash, one per key, holding everything authentication needs::

    acct           owner account
    label          the owner's label
    status         active | inactive
    created        creation time, ms since the epoch
    tok            HMAC-SHA256 digest of the current token (hex); never the token
    tokCreated     when the current token was issued, ms
    newTok         digest of the new token while a renewal is pending (both work)
    newTokCreated  when it was issued
    link           name of the unopened one-time token link, if any
    linkExp        when that link expires, ms (a renewal is refused until then)
    lastUsed       last successful authentication, ms (written in batches)
    g:{account}    the key's grant in that account, JSON {"roles": [...], ...}; the owner's
                   own grant is ``g:{acct}``; a grant in another account (an external key
                   there) also holds that account's label, status and the date it was added

    After a delete the hash is replaced by a tombstone ``{deleted: ms}`` so that a key
    name is never issued twice.

``{p}acct:{account}:keys``     sorted set of the account's generated keys by creation time
``{p}acct:{account}:ext``      sorted set of the external keys granted roles in the account,
                               by the time the grant was added
``{p}acct:{account}:settings`` hash of the account's settings
``{p}acct:{account}:audit``    stream of audit events, capped (``MAXLEN ~``)
``{p}link:{sha256(link secret)}`` an unopened one-time link: the token, encrypted under a
                               key derived from the link secret, which is not stored
``{p}policy:version``          hash: the policy version (content hash) announced by the last
                               reload, ``version``, ``by``, ``at`` (ms), ``forced`` ('1'/'0');
                               its name is published on the invalidation channel when it
                               changes, so every instance compares its own with it
``{p}jwt:keys``                hash: kid → a JWT signing key sealed under the server secret
                               (gateway.sessions.keys); its name is published on the
                               invalidation channel when it changes (a rotation)

Because a key's grants live in its own hash, authenticating a key for a target account
is a single ``HMGET`` (one round trip). Every change is one Lua script that checks its
precondition, applies the change and appends the audit event, so a change and its
audit record happen together or not at all and concurrent changes serialise (fifty
concurrent renewals: one wins, the others see it pending). Scripts derive some key names
(``acct:*``) themselves, so this layout suits one Redis (or a replica set), not a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from .cache import LRU
from .errors import StoreUnavailable

log = logging.getLogger("keygate.store")

ACTIVE = "active"
INACTIVE = "inactive"
STATUSES = (ACTIVE, INACTIVE)

P = ParamSpec("P")
T = TypeVar("T")


def _unavailable(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn a lost Redis into a 503 for the caller instead of a stack trace; tell the
    store's observer, if it has one, how long the call took and whether it failed."""
    operation = func.__name__

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        observer = args[0].observer  # type: ignore[attr-defined]  # always a Store method
        started = time.perf_counter() if observer is not None else 0.0
        try:
            return await func(*args, **kwargs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            if observer is not None:
                observer.store_failed(operation)
            log.warning("store unavailable in %s: %s", operation, exc)
            raise StoreUnavailable() from exc
        finally:
            if observer is not None:
                observer.store_call(operation, time.perf_counter() - started)

    return wrapper


def _unavailable_iter(
    func: Callable[P, AsyncIterator[T]],
) -> Callable[P, AsyncIterator[T]]:
    """:func:`_unavailable` for async generators: a lost Redis mid-iteration is a
    StoreUnavailable too, so a caller streaming an export can tell it from a bug."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
        try:
            async for item in func(*args, **kwargs):
                yield item
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            observer = args[0].observer  # type: ignore[attr-defined]
            if observer is not None:  # no latency: an iteration lasts as long as its reader
                observer.store_failed(func.__name__)
            log.warning("store unavailable in %s: %s", func.__name__, exc)
            raise StoreUnavailable() from exc

    return wrapper


@dataclass(frozen=True)
class Grant:
    roles: tuple[str, ...]
    status: str = ACTIVE

    @classmethod
    def decode(cls, raw: str | None) -> Grant | None:
        if not raw:
            return None
        data = orjson.loads(raw)
        return cls(tuple(data.get("roles", ())), data.get("status", ACTIVE))

    def encode(self) -> str:
        return orjson.dumps({"roles": list(self.roles), "status": self.status}).decode()


def _int(value: str | None) -> int | None:
    return int(value) if value else None


@dataclass(frozen=True)
class KeyRecord:
    """A generated key as the owner account sees it. Holds digests, never tokens."""

    app_key: str
    account: str
    label: str
    status: str
    created: int
    token_created: int
    roles: tuple[str, ...]
    new_token_created: int | None = None
    last_used: int | None = None
    token_digests: tuple[str, ...] = field(repr=False, default=())
    # accounts that granted this key roles, with the date: all the owner may know of them
    granted_in: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_hash(cls, app_key: str, h: Mapping[str, str]) -> KeyRecord | None:
        if "acct" not in h:
            return None
        own = Grant.decode(h.get("g:" + h["acct"]))
        granted_in = tuple(
            sorted(
                (name[2:], int(orjson.loads(value).get("added", 0)))
                for name, value in h.items()
                if name.startswith("g:") and name != "g:" + h["acct"]
            )
        )
        return cls(
            app_key=app_key,
            account=h["acct"],
            label=h.get("label", ""),
            status=h.get("status", INACTIVE),
            created=int(h.get("created", 0)),
            token_created=int(h.get("tokCreated", 0)),
            roles=own.roles if own else (),
            new_token_created=_int(h.get("newTokCreated")),
            last_used=_int(h.get("lastUsed")),
            token_digests=tuple(d for d in (h.get("tok"), h.get("newTok")) if d),
            granted_in=granted_in,
        )


@dataclass(frozen=True)
class ExternalKey:
    """A key of another account as the granting account sees it: its grant, its owner."""

    app_key: str
    owner: str
    label: str
    roles: tuple[str, ...]
    status: str
    added: int

    @classmethod
    def from_grant(cls, app_key: str, owner: str | None, raw: str | None) -> ExternalKey | None:
        if not owner or not raw:
            return None
        g = orjson.loads(raw)
        return cls(
            app_key,
            owner,
            g.get("label", ""),
            tuple(g.get("roles") or ()),
            g.get("status", ACTIVE),
            int(g.get("added", 0)),
        )


@dataclass(frozen=True)
class AuthLookup:
    """What authenticating a key for one target account needs, read in one round trip."""

    owner: str | None
    status: str | None
    token_digests: tuple[str, ...] = field(repr=False)
    grant: Grant | None

    @property
    def exists(self) -> bool:
        return self.owner is not None


@dataclass(frozen=True)
class Actor:
    """Who makes a change and under which request, for the audit log."""

    app_key: str
    request_id: str = ""


CLI_ACTOR = Actor("cli")
SYSTEM_ACTOR = Actor("system")


@dataclass(frozen=True)
class TokenLink:
    """A one-time link to store with a change: its store id, sealed token and expiry."""

    link_id: str
    sealed: str
    expires: int


@dataclass(frozen=True)
class AuditEvent:
    id: str
    time: int
    account: str
    actor: str
    action: str
    target: str
    request_id: str
    before: dict[str, Any]
    after: dict[str, Any]


@dataclass(frozen=True)
class PolicyAnnouncement:
    """The policy version an instance announced after a reload: every instance of the
    deployment should serve it. ``by`` says who asked (an API key, or an instance when a
    signal or the file watch reloaded); ``forced`` that the reload was forced past
    roles still held, which binds that version only."""

    version: str
    by: str
    at: int
    forced: bool = False


class RenewalRefused(Exception):
    """A renewal cannot start: ``reason`` is ``pending`` or ``link``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class KeyChanged(Exception):
    """The key's roles (or the grant's) are no longer those the caller checked: the
    change was not made. The escalation check ran on the roles the caller saw, so a
    change racing it must not slip through with roles nobody checked."""


class LastOwnerKey(Exception):
    """The change would leave the account without an active ``owner`` key; it was not
    made (the CLI, which works on the store directly, is the way out)."""


# -- Lua ---------------------------------------------------------------------------------
# Every changing script gets the same first six ARGV (see Store._change): account, audit
# cap, audit event, invalidation channel, the roles the caller checked (JSON, or '' for no
# expectation) and '1' when the account must keep an active owner key (else '0').
_COMMON = """
local function audit(stream, maxlen, event, before, after)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'event', event,
             'before', cjson.encode(before), 'after', cjson.encode(after))
end
local function roles_of(key, acct)
  local raw = redis.call('HGET', key, 'g:' .. acct)
  if not raw then return {} end
  return cjson.decode(raw)['roles'] or {}
end
local function unchanged(key, acct)
  if ARGV[5] == '' then return true end
  local have, want = roles_of(key, acct), cjson.decode(ARGV[5])
  if #have ~= #want then return false end
  for i = 1, #want do
    if have[i] ~= want[i] then return false end
  end
  return true
end
"""

# snap(): the audited view of a key — never a digest. The owners set of an account holds
# its active generated keys with the role owner, and the member '' once it is complete
# (a new account's is; an older one is indexed on its first guarded change).
_PRELUDE = _COMMON + """
local function snap(key, acct)
  local v = redis.call('HMGET', key, 'label', 'status', 'tokCreated', 'newTokCreated',
                       'g:' .. acct)
  local s = {}
  if v[1] then s['label'] = v[1] end
  if v[2] then s['status'] = v[2] end
  if v[3] then s['creationDateToken'] = tonumber(v[3]) end
  if v[4] then s['creationDateNewToken'] = tonumber(v[4]) end
  if v[5] then s['roles'] = cjson.decode(v[5])['roles'] end
  return s
end
local function owned(key, acct)
  return redis.call('HGET', key, 'acct') == acct
end
local function holds_owner(status, roles)
  if status ~= 'active' then return false end
  for _, role in ipairs(roles) do
    if role == 'owner' then return true end
  end
  return false
end
local function unindexed(owners)
  return ARGV[6] == '1' and redis.call('SISMEMBER', owners, '') == 0
end
local function last_owner(owners, app_key)
  return ARGV[6] == '1' and redis.call('SISMEMBER', owners, app_key) == 1
         and redis.call('SCARD', owners) <= 2
end
"""

# KEYS: key, index, stream, owners, [link]  ARGV: header, now, appKey, link value,
# link ttl ms, link expiry, field, value, ...
_CREATE = (
    _PRELUDE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('SADD', KEYS[4], '') end
redis.call('HSET', KEYS[1], unpack(ARGV, 12))
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[8])
if KEYS[5] then
  redis.call('SET', KEYS[5], ARGV[9], 'PX', ARGV[10])
  redis.call('HSET', KEYS[1], 'link', KEYS[5], 'linkExp', ARGV[11])
end
if holds_owner(redis.call('HGET', KEYS[1], 'status'), roles_of(KEYS[1], ARGV[1])) then
  redis.call('SADD', KEYS[4], ARGV[8])
end
audit(KEYS[3], ARGV[2], ARGV[3], {}, snap(KEYS[1], ARGV[1]))
redis.call('PUBLISH', ARGV[4], KEYS[1])
return 1
"""
)

# KEYS: key, stream, owners  ARGV: header, appKey, field, value, ...
_UPDATE = (
    _PRELUDE
    + """
if not owned(KEYS[1], ARGV[1]) then return {'missing'} end
if not unchanged(KEYS[1], ARGV[1]) then return {'changed'} end
if unindexed(KEYS[3]) then return {'unindexed'} end
local status, roles = redis.call('HGET', KEYS[1], 'status'), roles_of(KEYS[1], ARGV[1])
for i = 8, #ARGV, 2 do
  if ARGV[i] == 'status' then status = ARGV[i + 1] end
  if ARGV[i] == 'g:' .. ARGV[1] then roles = cjson.decode(ARGV[i + 1])['roles'] end
end
local owner_after = holds_owner(status, roles)
if not owner_after and last_owner(KEYS[3], ARGV[7]) then return {'last_owner'} end
local before = snap(KEYS[1], ARGV[1])
if #ARGV > 7 then redis.call('HSET', KEYS[1], unpack(ARGV, 8)) end
if owner_after then
  redis.call('SADD', KEYS[3], ARGV[7])
else
  redis.call('SREM', KEYS[3], ARGV[7])
end
audit(KEYS[2], ARGV[2], ARGV[3], before, snap(KEYS[1], ARGV[1]))
redis.call('PUBLISH', ARGV[4], KEYS[1])
return {'ok', redis.call('HGETALL', KEYS[1])}
"""
)

# KEYS: key, index, stream, owners  ARGV: header, appKey, acct index prefix, now
_DELETE = (
    _PRELUDE
    + """
if not owned(KEYS[1], ARGV[1]) then return 'missing' end
if not unchanged(KEYS[1], ARGV[1]) then return 'changed' end
if unindexed(KEYS[4]) then return 'unindexed' end
if last_owner(KEYS[4], ARGV[7]) then return 'last_owner' end
local before = snap(KEYS[1], ARGV[1])
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'g:' and string.sub(f, 3) ~= ARGV[1] then
    redis.call('ZREM', ARGV[8] .. string.sub(f, 3) .. ':ext', ARGV[7])
  end
end
local link = redis.call('HGET', KEYS[1], 'link')
if link then redis.call('DEL', link) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'deleted', ARGV[9])
redis.call('ZREM', KEYS[2], ARGV[7])
redis.call('SREM', KEYS[4], ARGV[7])
audit(KEYS[3], ARGV[2], ARGV[3], before, {})
redis.call('PUBLISH', ARGV[4], KEYS[1])
return 'ok'
"""
)

# KEYS: owners, key hashes ...  ARGV: account, appKeys ... (in the order of the hashes)
_INDEX_OWNERS = (
    _PRELUDE
    + """
for i = 2, #KEYS do
  local acct = redis.call('HGET', KEYS[i], 'acct')
  if acct == ARGV[1] and holds_owner(redis.call('HGET', KEYS[i], 'status'),
                                     roles_of(KEYS[i], ARGV[1])) then
    redis.call('SADD', KEYS[1], ARGV[i])
  else
    redis.call('SREM', KEYS[1], ARGV[i])
  end
end
return #KEYS - 1
"""
)

# KEYS: key, stream, [link]  ARGV: header, now, mode, digest, link value, link ttl ms,
# link expiry
_RENEW = (
    _PRELUDE
    + """
if not owned(KEYS[1], ARGV[1]) then return {'missing'} end
if not unchanged(KEYS[1], ARGV[1]) then return {'changed'} end
if redis.call('HEXISTS', KEYS[1], 'newTok') == 1 then return {'pending'} end
local link_exp = redis.call('HGET', KEYS[1], 'linkExp')
if link_exp and tonumber(link_exp) > tonumber(ARGV[7]) then return {'link'} end
local before = snap(KEYS[1], ARGV[1])
if ARGV[8] == 'later' then
  redis.call('HSET', KEYS[1], 'newTok', ARGV[9], 'newTokCreated', ARGV[7])
else
  redis.call('HSET', KEYS[1], 'tok', ARGV[9], 'tokCreated', ARGV[7])
end
local old_link = redis.call('HGET', KEYS[1], 'link')
if old_link then redis.call('DEL', old_link) end
redis.call('HDEL', KEYS[1], 'link', 'linkExp')
if KEYS[3] then
  redis.call('SET', KEYS[3], ARGV[10], 'PX', ARGV[11])
  redis.call('HSET', KEYS[1], 'link', KEYS[3], 'linkExp', ARGV[12])
end
audit(KEYS[2], ARGV[2], ARGV[3], before, snap(KEYS[1], ARGV[1]))
redis.call('PUBLISH', ARGV[4], KEYS[1])
return {'ok', redis.call('HGETALL', KEYS[1])}
"""
)

# KEYS: key, stream  ARGV: header, 'finish' | 'undo'
_END_RENEWAL = (
    _PRELUDE
    + """
if not owned(KEYS[1], ARGV[1]) then return {'missing'} end
if not unchanged(KEYS[1], ARGV[1]) then return {'changed'} end
local new = redis.call('HMGET', KEYS[1], 'newTok', 'newTokCreated')
if not new[1] then return {'none'} end
local before = snap(KEYS[1], ARGV[1])
if ARGV[7] == 'finish' then
  redis.call('HSET', KEYS[1], 'tok', new[1], 'tokCreated', new[2])
else
  -- the new token is dropped, so is an unopened link that would reveal it
  local link = redis.call('HGET', KEYS[1], 'link')
  if link then redis.call('DEL', link) end
  redis.call('HDEL', KEYS[1], 'link', 'linkExp')
end
redis.call('HDEL', KEYS[1], 'newTok', 'newTokCreated')
audit(KEYS[2], ARGV[2], ARGV[3], before, snap(KEYS[1], ARGV[1]))
redis.call('PUBLISH', ARGV[4], KEYS[1])
return {'ok', redis.call('HGETALL', KEYS[1])}
"""
)

# KEYS: link  ARGV: key prefix, account prefix, maxlen, event (without actor/target), now
# Expiry is checked against keygate's clock; Redis's TTL only collects the garbage.
_OPEN_LINK = """
local value = redis.call('GET', KEYS[1])
if not value then return false end
redis.call('DEL', KEYS[1])
local v = cjson.decode(value)
if tonumber(v['expires']) <= tonumber(ARGV[5]) then return false end
local key = ARGV[1] .. v['appKey']
if redis.call('HGET', key, 'link') == KEYS[1] then
  redis.call('HDEL', key, 'link', 'linkExp')
end
local event = cjson.decode(ARGV[4])
event['account'] = v['account']
event['target'] = v['appKey']
redis.call('XADD', ARGV[2] .. v['account'] .. ':audit', 'MAXLEN', '~', ARGV[3], '*',
           'event', cjson.encode(event), 'before', '{}', 'after', '{}')
return value
"""

_GRANT_PRELUDE = _COMMON + """
local function gsnap(key, acct)
  local raw = redis.call('HGET', key, 'g:' .. acct)
  if not raw then return {} end
  local g = cjson.decode(raw)
  return {label = g['label'], roles = g['roles'], status = g['status']}
end
"""

# KEYS: key, ext index, stream  ARGV: header, grant JSON, now, appKey
_ADD_GRANT = (
    _GRANT_PRELUDE
    + """
local owner = redis.call('HGET', KEYS[1], 'acct')
if not owner then return 'missing' end
if owner == ARGV[1] then return 'own' end
if redis.call('HEXISTS', KEYS[1], 'g:' .. ARGV[1]) == 1 then return 'exists' end
redis.call('HSET', KEYS[1], 'g:' .. ARGV[1], ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[8], ARGV[9])
audit(KEYS[3], ARGV[2], ARGV[3], {}, gsnap(KEYS[1], ARGV[1]))
redis.call('PUBLISH', ARGV[4], KEYS[1])
return 'ok'
"""
)

# KEYS: key, stream  ARGV: header, JSON of the fields to change
_UPDATE_GRANT = (
    _GRANT_PRELUDE
    + """
local raw = redis.call('HGET', KEYS[1], 'g:' .. ARGV[1])
if not raw or redis.call('HGET', KEYS[1], 'acct') == ARGV[1] then return {'missing'} end
if not unchanged(KEYS[1], ARGV[1]) then return {'changed'} end
local before = gsnap(KEYS[1], ARGV[1])
local grant = cjson.decode(raw)
for name, value in pairs(cjson.decode(ARGV[7])) do grant[name] = value end
redis.call('HSET', KEYS[1], 'g:' .. ARGV[1], cjson.encode(grant))
audit(KEYS[2], ARGV[2], ARGV[3], before, gsnap(KEYS[1], ARGV[1]))
redis.call('PUBLISH', ARGV[4], KEYS[1])
return {'ok', redis.call('HGET', KEYS[1], 'acct'), redis.call('HGET', KEYS[1], 'g:' .. ARGV[1])}
"""
)

# KEYS: key, ext index, stream  ARGV: header, appKey
_REMOVE_GRANT = (
    _GRANT_PRELUDE
    + """
if redis.call('HGET', KEYS[1], 'acct') == ARGV[1] then return 'missing' end
if redis.call('HEXISTS', KEYS[1], 'g:' .. ARGV[1]) == 0 then return 'missing' end
if not unchanged(KEYS[1], ARGV[1]) then return 'changed' end
local before = gsnap(KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], 'g:' .. ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[7])
audit(KEYS[3], ARGV[2], ARGV[3], before, {})
redis.call('PUBLISH', ARGV[4], KEYS[1])
return 'ok'
"""
)

# KEYS: settings, stream  ARGV: maxlen, event, field, value
_PUT_SETTING = """
local before = redis.call('HGET', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
local b, a = {}, {}
if before then b[ARGV[3]] = tonumber(before) or before end
a[ARGV[3]] = tonumber(ARGV[4]) or ARGV[4]
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[2],
           'before', cjson.encode(b), 'after', cjson.encode(a))
return 1
"""

# KEYS: key hashes  ARGV: times, in the same order. Deleted keys are left alone.
_TOUCH = """
for i, key in ipairs(KEYS) do
  if redis.call('HEXISTS', key, 'acct') == 1 then
    redis.call('HSET', key, 'lastUsed', ARGV[i])
  end
end
return #KEYS
"""


# KEYS: the announcement hash  ARGV: channel, '1' to write only when there is none yet,
# version, by, at, forced. Written and published together: nobody hears of an
# announcement that is not there to read.
_ANNOUNCE_POLICY = """
if ARGV[2] == '1' and redis.call('HGET', KEYS[1], 'version') then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[3], 'by', ARGV[4], 'at', ARGV[5], 'forced', ARGV[6])
redis.call('PUBLISH', ARGV[1], KEYS[1])
return 1
"""


# KEYS: the signing keys' hash  ARGV: channel, '1' to write only when there is none yet,
# then kid, sealed pairs to write, then '--', then kids to remove. Published with the
# write, so every instance reloads its ring; answers every stored key.
_SIGNING_KEYS = """
if ARGV[2] == '1' and redis.call('HLEN', KEYS[1]) > 0 then
  return redis.call('HVALS', KEYS[1])
end
local i = 3
while ARGV[i] ~= '--' do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for j = i + 1, #ARGV do redis.call('HDEL', KEYS[1], ARGV[j]) end
redis.call('PUBLISH', ARGV[1], KEYS[1])
return redis.call('HVALS', KEYS[1])
"""


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


@dataclass(frozen=True)
class KeyQuery:
    q: str = ""
    status: str | None = None
    role: str | None = None
    sort: str = "creationDate"
    descending: bool = True
    page: int = 1
    per_page: int = 20
    # extra predicate on the record (e.g. the renewal alert), applied after the others
    where: Callable[[KeyRecord], bool] | None = None

    @property
    def filtered(self) -> bool:
        return bool(self.q or self.status or self.role or self.where)

    def accepts(self, record: KeyRecord) -> bool:
        if self.status and record.status != self.status:
            return False
        if self.role and self.role not in record.roles:
            return False
        if self.q:
            needle = self.q.casefold()
            if needle not in record.label.casefold() and needle not in record.app_key.casefold():
                return False
        return self.where is None or self.where(record)


SORT_FIELDS: dict[str, Callable[[KeyRecord], Any]] = {
    "creationDate": lambda r: (r.created, r.app_key),
    "creationDateToken": lambda r: (r.token_created, r.app_key),
    "label": lambda r: (r.label.casefold(), r.app_key),
    "appKey": lambda r: (r.app_key,),
    "status": lambda r: (r.status, r.app_key),
    "lastUsed": lambda r: (r.last_used or 0, r.app_key),
}


@dataclass(frozen=True)
class CacheSettings:
    """Credential cache sizes; ``size=0`` turns the cache off."""

    size: int = 100_000
    ttl: float = 60.0
    unknown_size: int = 10_000
    unknown_ttl: float = 2.0


class Observer(Protocol):
    """What the store tells about itself, for metrics (``gateway.telemetry`` implements
    it; the store imports no metrics library). Called inline, on the request path for
    the cache: each call must be a counter increment's worth of work, never I/O."""

    def cache_hit(self) -> None: ...
    def cache_miss(self) -> None: ...
    def cache_evicted(self) -> None: ...
    def invalidated(self) -> None: ...
    def resynced(self) -> None: ...
    def store_call(self, operation: str, seconds: float) -> None: ...
    def store_failed(self, operation: str) -> None: ...


_MEMORY_SERVERS: dict[str, Any] = {}

# Accounts remembered per cached key (its grants and "no grant here" answers).
MAX_ACCOUNTS_PER_KEY = 64
# The invalidation channel is pinged this often; silence for LIVENESS seconds means the
# subscription may have missed revocations, so the cache is not trusted until resynced.
PING_INTERVAL = 1.0
LIVENESS = 3.0


class Store:
    """Redis access, and the credential cache kept coherent through pub/sub.

    Cache coherence, the part a reviewer should check:

    * every script that changes a key hash PUBLISHes the key's name on ``{p}invalidate``
      inside the same script, so no change is committed without its notice;
    * each process drops the key on receipt (and at once for its own changes);
    * the cache is used only while the subscription is known good: after a subscribe
      confirmation (which redis-py also gets after a silent reconnect) the cache is
      flushed and trusted; on an error, or when the channel has been silent (not even a
      PONG to our pings) for LIVENESS seconds, it is flushed and bypassed;
    * a lookup that raced an invalidation does not put its (possibly stale) answer in
      the cache: a generation counter, bumped by every invalidation, must not have moved
      between the read and the put;
    * unknown keys go to a separate, small, short-lived cache, so a flood of made-up
      keys cannot evict real ones;
    * only digests are cached; the token is still compared on every request.

    ``observer`` (None: nobody) hears of cache hits, misses, evictions, invalidations,
    resyncs, and of every store call's duration and failure.
    """

    observer: Observer | None = None
    # Called (no I/O, from the listener) when the policy announcement changed or may
    # have been missed (every subscription confirmed); see gateway.policy.sync.
    on_policy_announced: Callable[[], None] | None = None
    # Called (no I/O, from the listener) when the JWT signing keys changed (a rotation)
    # or may have been missed; see gateway.sessions.service.
    on_signing_keys_changed: Callable[[], None] | None = None

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        clock: Callable[[], float],
        audit_max_events: int = 100_000,
        cache: CacheSettings = CacheSettings(),  # noqa: B008 - frozen, shared safely
        audit_max_access_events: int = 10_000,
    ):
        self.redis = client
        self.prefix = prefix
        self.clock = clock
        self.audit_max_events = audit_max_events
        self.audit_max_access_events = audit_max_access_events
        self.channel = f"{prefix}invalidate"
        self._key_prefix = f"{prefix}key:"
        self._policy_record = f"{prefix}policy:version"
        self._signing_keys_record = f"{prefix}jwt:keys"
        self._known: LRU[str, dict[str, AuthLookup]] | None = (
            LRU(cache.size, cache.ttl) if cache.size > 0 else None
        )
        self._unknown: LRU[str, AuthLookup] | None = (
            LRU(cache.unknown_size, cache.unknown_ttl) if cache.size > 0 else None
        )
        self._generation = 0
        self._subscribed = False
        self.resyncs = 0  # subscriptions confirmed, the first one included
        self._last_heard = float("-inf")
        self._listener: asyncio.Task[None] | None = None
        self._stopping = False
        self._create = client.register_script(_CREATE)
        self._update = client.register_script(_UPDATE)
        self._delete = client.register_script(_DELETE)
        self._renew = client.register_script(_RENEW)
        self._end_renewal = client.register_script(_END_RENEWAL)
        self._open_link = client.register_script(_OPEN_LINK)
        self._put_setting = client.register_script(_PUT_SETTING)
        self._touch = client.register_script(_TOUCH)
        self._add_grant = client.register_script(_ADD_GRANT)
        self._update_grant = client.register_script(_UPDATE_GRANT)
        self._remove_grant = client.register_script(_REMOVE_GRANT)
        self._index_owners = client.register_script(_INDEX_OWNERS)
        self._announce_policy = client.register_script(_ANNOUNCE_POLICY)
        self._write_signing_keys = client.register_script(_SIGNING_KEYS)

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = "kg:",
        clock: Callable[[], float] = time.time,
        audit_max_events: int = 100_000,
        cache: CacheSettings = CacheSettings(),  # noqa: B008
        max_connections: int = 100,
        audit_max_access_events: int = 10_000,
    ) -> Store:
        if url.startswith("memory://"):
            import fakeredis  # only the embedded store needs it

            # one in-process server per URL, so every Store of this process on
            # memory://X sees the same keys and hears the same invalidations
            server = _MEMORY_SERVERS.setdefault(url, fakeredis.FakeServer())
            client = fakeredis.FakeAsyncRedis(
                server=server,
                decode_responses=True,
                connection_pool_class=aioredis.BlockingConnectionPool,
                max_connections=max_connections,
            )
        else:
            # A blocking pool queues requests beyond max_connections instead of failing
            # them: a burst of cold keys waits a little rather than getting 503s.
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=5,
                decode_responses=True,
                socket_connect_timeout=2,
                socket_timeout=5,
            )
            client = aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
        return cls(client, prefix, clock, audit_max_events, cache, audit_max_access_events)

    async def close(self) -> None:
        await self.stop_invalidation()
        await self.redis.aclose()

    async def _change(
        self,
        script: Any,
        account: str,
        app_key: str,
        action: str,
        actor: Actor,
        *,
        keys: list[str],
        args: Sequence[Any] = (),
        expect_roles: Sequence[str] | None = None,
        keep_an_owner: bool = False,
    ) -> Any:
        """Run a changing script; this process forgets the key at once, others on PUBLISH.

        Every changing script takes the same first six ARGV — account, audit cap, audit
        event, invalidation channel, the roles the caller checked (``expect_roles``: the
        script refuses with ``changed`` when the key's roles in ``account`` differ) and
        whether the account must keep an active owner key — followed by its own ``args``.
        """
        header = [
            account,
            self.audit_max_events,
            self._event(account, actor, action, app_key),
            self.channel,
            "" if expect_roles is None else orjson.dumps(list(expect_roles)).decode(),
            "1" if keep_an_owner else "0",
        ]
        try:
            return await script(keys=keys, args=[*header, *args])
        finally:
            self.forget(app_key)

    async def _guarded_change(self, account: str, **change: Any) -> Any:
        """:meth:`_change`, indexing the account's owner keys first if the script says
        the index is not complete yet (an account older than the index)."""
        result = await self._change(account=account, **change)
        status = result[0] if isinstance(result, list) else result
        if status == "unindexed":
            await self.index_owners(account)
            result = await self._change(account=account, **change)
            status = result[0] if isinstance(result, list) else result
        if status == "changed":
            raise KeyChanged()
        if status == "last_owner":
            raise LastOwnerKey()
        return result

    @_unavailable
    async def index_owners(self, account: str, chunk: int = 500) -> None:
        """Build the account's set of active owner keys from its key records (once per
        account created before the set existed). Each chunk is one script that reads the
        records it indexes, and every change keeps the set up to date meanwhile, so the
        set is right when the pass ends; only then is it marked complete."""
        owners = self._account(account, "owners")
        index = self._account(account, "keys")
        start = 0
        while names := await self.redis.zrange(index, start, start + chunk - 1):
            await self._index_owners(
                keys=[owners, *(self._key(n) for n in names)], args=[account, *names]
            )
            start += chunk
        await self.redis.sadd(owners, "")

    # -- credential cache ------------------------------------------------------------
    @property
    def cache_trusted(self) -> bool:
        return (self._known is not None and self._subscribed
                and time.monotonic() - self._last_heard < LIVENESS)

    def _flush(self) -> None:
        self._generation += 1
        if self._known is not None and self._unknown is not None:
            self._known.clear()
            self._unknown.clear()

    def forget(self, app_key: str) -> None:
        self._generation += 1
        if self._known is not None and self._unknown is not None:
            self._known.pop(app_key)
            self._unknown.pop(app_key)

    def start_invalidation(self) -> None:
        """Subscribe to the invalidation channel; until then the cache is bypassed.
        Without a cache, only policy announcements need it (if anyone listens)."""
        wanted = (self._known is not None or self.on_policy_announced is not None
                  or self.on_signing_keys_changed is not None)
        if wanted and self._listener is None:
            self._stopping = False
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def stop_invalidation(self) -> None:
        if self._listener is not None:
            self._stopping = True
            self._listener.cancel()
            # bounded: fakeredis's pub/sub read can sit out a cancellation, and shutting
            # down must not wait on it
            await asyncio.wait({self._listener}, timeout=2.0)
            self._listener = None
        self._subscribed = False
        self._flush()

    async def _listen(self) -> None:
        backoff = 0.1
        while not self._stopping:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                pinged = 0.0
                while not self._stopping:
                    if time.monotonic() - pinged >= PING_INTERVAL:
                        await pubsub.ping()
                        pinged = time.monotonic()
                    message = await pubsub.get_message(timeout=PING_INTERVAL)
                    if message is None:
                        continue
                    self._last_heard = time.monotonic()
                    if message["type"] == "subscribe":
                        # (re)connected: changes may have been missed meanwhile
                        self._flush()
                        self._subscribed = True
                        self.resyncs += 1
                        if self.observer is not None:
                            self.observer.resynced()
                        if self.on_policy_announced is not None:
                            self.on_policy_announced()
                        if self.on_signing_keys_changed is not None:
                            self.on_signing_keys_changed()
                        backoff = 0.1
                    elif message["type"] == "message":
                        name = message["data"]
                        if name.startswith(self._key_prefix):
                            self.forget(name[len(self._key_prefix) :])
                            if self.observer is not None:
                                self.observer.invalidated()
                        elif name == self._policy_record and self.on_policy_announced:
                            self.on_policy_announced()
                        elif (name == self._signing_keys_record
                              and self.on_signing_keys_changed is not None):
                            self.on_signing_keys_changed()
            except asyncio.CancelledError:
                raise
            except (redis.exceptions.RedisError, OSError) as exc:
                if self._stopping:  # a cancellation that the client turned into an error
                    return
                if self._subscribed:
                    log.warning("invalidation channel lost (%s); credential cache off", exc)
                if self.observer is not None:
                    self.observer.store_failed("invalidation")
                self._subscribed = False
                self._flush()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- names -----------------------------------------------------------------------
    def _key(self, app_key: str) -> str:
        return f"{self.prefix}key:{app_key}"

    def _account(self, account: str, what: str) -> str:
        return f"{self.prefix}acct:{account}:{what}"

    def _link(self, link_id: str) -> str:
        return f"{self.prefix}link:{link_id}"

    def _event(self, account: str, actor: Actor, action: str, target: str) -> str:
        return orjson.dumps(
            {
                "time": self.now_ms(),
                "account": account,
                "actor": actor.app_key,
                "action": action,
                "target": target,
                "requestId": actor.request_id,
            }
        ).decode()

    # -- health ----------------------------------------------------------------------
    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            return False

    # -- authentication --------------------------------------------------------------
    def cached_lookup(self, app_key: str, account: str) -> AuthLookup | None:
        """What :meth:`auth_lookup` would answer from memory, or None: no I/O."""
        if self._known is None or not self.cache_trusted:
            return None
        per_account = self._known.get(app_key)
        if per_account is not None and account in per_account:
            found = per_account[account]
        else:
            found = self._unknown.get(app_key)  # type: ignore[union-attr]
        # A miss is counted by auth_lookup, where it costs the round trip: a caller
        # that asks here first and then there must not count it twice.
        if found is not None and self.observer is not None:
            self.observer.cache_hit()
        return found

    async def auth_lookup(self, app_key: str, account: str) -> AuthLookup:
        """Key status, token digests and the grant in ``account``: cached, else one HMGET."""
        found = self.cached_lookup(app_key, account)
        if found is not None:
            return found
        trusted = self._known is not None and self.cache_trusted
        generation = self._generation
        observer = self.observer
        if observer is not None:
            observer.cache_miss()
        found = await self._auth_lookup(app_key, account)
        if trusted and generation == self._generation and self.cache_trusted:
            if found.exists:
                known: LRU[str, dict[str, AuthLookup]] = self._known  # type: ignore[assignment]
                per_account = known.get(app_key)
                if per_account is None:
                    per_account = {}
                    if observer is not None and len(known) >= known.size:
                        observer.cache_evicted()  # the put below drops the oldest key
                    known.put(app_key, per_account)
                if len(per_account) >= MAX_ACCOUNTS_PER_KEY:
                    # The target account comes from the request: a key asking for made-up
                    # accounts must not grow its entry. A miss there costs a round trip;
                    # a grant makes room by dropping the oldest entry.
                    if found.grant is None:
                        return found
                    del per_account[next(iter(per_account))]
                    if observer is not None:
                        observer.cache_evicted()
                per_account[account] = found
            else:
                unknown: LRU[str, AuthLookup] = self._unknown  # type: ignore[assignment]
                if observer is not None and len(unknown) >= unknown.size:
                    observer.cache_evicted()
                unknown.put(app_key, found)
        return found

    @_unavailable
    async def _auth_lookup(self, app_key: str, account: str) -> AuthLookup:
        owner, status, tok, new_tok, grant = await self.redis.hmget(
            self._key(app_key), ["acct", "status", "tok", "newTok", "g:" + account]
        )
        return AuthLookup(
            owner=owner,
            status=status,
            token_digests=tuple(d for d in (tok, new_tok) if d),
            grant=Grant.decode(grant),
        )

    @_unavailable
    async def count_auth_failure(self, kind: str, subject: str, window: int, ttl: float) -> int:
        """One more failed authentication of ``subject`` (an address or a key) in window
        number ``window``; the total so far. The counter expires with its window, so
        Redis holds at most one small key per failing subject per window."""
        name = f"{self.prefix}rl:{kind}:{window}:{subject}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.pexpire(name, max(1, int(ttl * 1000)))
            total, _ = await pipe.execute()
        return int(total)

    @_unavailable
    async def record_last_used(self, times: Mapping[str, int]) -> None:
        """Write a batch of last-used times in one script; deleted keys are skipped."""
        if times:
            names = list(times)
            await self._touch(keys=[self._key(n) for n in names], args=[times[n] for n in names])

    # -- generated keys --------------------------------------------------------------
    @_unavailable
    async def create_key(
        self,
        app_key: str,
        account: str,
        label: str,
        roles: Sequence[str],
        token_digest: str,
        actor: Actor = SYSTEM_ACTOR,
        link: TokenLink | None = None,
    ) -> KeyRecord | None:
        """Store a new key; None when the name was ever used before (caller retries)."""
        now = self.now_ms()
        fields: dict[str, Any] = {
            "acct": account,
            "label": label,
            "status": ACTIVE,
            "created": now,
            "tokCreated": now,
            "tok": token_digest,
            "g:" + account: Grant(tuple(roles)).encode(),
        }
        keys = [
            self._key(app_key), self._account(account, "keys"), self._account(account, "audit"),
            self._account(account, "owners"),
        ]
        args: list[Any] = [now, app_key]
        if link is not None:
            keys.append(self._link(link.link_id))
            args += [link.sealed, max(1, link.expires - now), link.expires]
        else:
            args += ["", 0, 0]
        for name, value in fields.items():
            args += [name, value]
        created = await self._change(
            self._create, account, app_key, "key.create", actor, keys=keys, args=args
        )
        if not created:
            return None
        return await self.get_key(account, app_key)

    @_unavailable
    async def get_key(self, account: str, app_key: str) -> KeyRecord | None:
        """The key when it exists and ``account`` owns it."""
        record = KeyRecord.from_hash(app_key, await self.redis.hgetall(self._key(app_key)))
        if record is None or record.account != account:
            return None
        return record

    @_unavailable
    async def update_key(
        self,
        account: str,
        app_key: str,
        *,
        actor: Actor = SYSTEM_ACTOR,
        label: str | None = None,
        roles: Sequence[str] | None = None,
        status: str | None = None,
        expect_roles: Sequence[str] | None = None,
        keep_an_owner: bool = False,
    ) -> KeyRecord | None:
        """Change a generated key; None when ``account`` owns no such key.

        With ``expect_roles``, :class:`KeyChanged` when the key's roles are not those;
        with ``keep_an_owner``, :class:`LastOwnerKey` when the change would leave the
        account without an active owner key.
        """
        args: list[Any] = [app_key]
        if label is not None:
            args += ["label", label]
        if roles is not None:
            args += ["g:" + account, Grant(tuple(roles)).encode()]
        if status is not None:
            args += ["status", status]
        result = await self._guarded_change(
            account, script=self._update, app_key=app_key, action="key.update", actor=actor,
            keys=[self._key(app_key), self._account(account, "audit"),
                  self._account(account, "owners")],
            args=args, expect_roles=expect_roles, keep_an_owner=keep_an_owner,
        )
        if result[0] == "missing":
            return None
        return KeyRecord.from_hash(app_key, _pairs(result[1]))

    @_unavailable
    async def delete_key(
        self,
        account: str,
        app_key: str,
        *,
        actor: Actor = SYSTEM_ACTOR,
        expect_roles: Sequence[str] | None = None,
        keep_an_owner: bool = False,
    ) -> bool:
        """Delete a generated key (its name is never issued again); False when
        ``account`` owns no such key. Refusals as in :meth:`update_key`."""
        result = await self._guarded_change(
            account, script=self._delete, app_key=app_key, action="key.delete", actor=actor,
            keys=[self._key(app_key), self._account(account, "keys"),
                  self._account(account, "audit"), self._account(account, "owners")],
            args=[app_key, f"{self.prefix}acct:", self.now_ms()],
            expect_roles=expect_roles, keep_an_owner=keep_an_owner,
        )
        return result == "ok"

    @_unavailable
    async def list_keys(self, account: str, query: KeyQuery) -> tuple[list[KeyRecord], int]:
        """One page of the account's generated keys and the total that match."""
        index = self._account(account, "keys")
        start = (query.page - 1) * query.per_page
        if not query.filtered and query.sort == "creationDate":
            # Fast path: the index is already in creation order; read only the page.
            total = await self.redis.zcard(index)
            names = await self.redis.zrange(
                index, start, start + query.per_page - 1, desc=query.descending
            )
            return [r for r in await self._load(names) if r is not None], total
        # Filter and sort on the listed fields only (no digests, no other grants), then
        # read the page's keys whole. Still O(keys in the account): see the README.
        names = await self.redis.zrange(index, 0, -1)
        fields = ["acct", "label", "status", "created", "tokCreated", "newTokCreated",
                  "lastUsed", "g:" + account]
        light: list[KeyRecord] = []
        for offset in range(0, len(names), 1000):
            batch = names[offset : offset + 1000]
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in batch:
                    pipe.hmget(self._key(name), fields)
                rows = await pipe.execute()
            for name, row in zip(batch, rows, strict=True):
                present = {f: v for f, v in zip(fields, row, strict=True) if v}
                record = KeyRecord.from_hash(name, present)
                if record is not None and query.accepts(record):
                    light.append(record)
        light.sort(key=SORT_FIELDS[query.sort], reverse=query.descending)
        page = [r.app_key for r in light[start : start + query.per_page]]
        return [r for r in await self._load(page) if r is not None], len(light)

    @_unavailable
    async def accounts(self) -> list[str]:
        """Accounts that own generated keys (SCAN: for metrics, not for requests)."""
        head, tail = f"{self.prefix}acct:", ":keys"
        names = [n async for n in self.redis.scan_iter(match=f"{head}*{tail}", count=1000)]
        return sorted(n[len(head) : -len(tail)] for n in names)

    @_unavailable
    async def all_keys(self, account: str) -> list[KeyRecord]:
        names = await self.redis.zrange(self._account(account, "keys"), 0, -1)
        return [r for r in await self._load(names) if r is not None]

    async def _load(self, names: Sequence[str], chunk: int = 500) -> list[KeyRecord | None]:
        records: list[KeyRecord | None] = []
        for offset in range(0, len(names), chunk):
            batch = names[offset : offset + chunk]
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in batch:
                    pipe.hgetall(self._key(name))
                hashes = await pipe.execute()
            records += [KeyRecord.from_hash(n, h) for n, h in zip(batch, hashes, strict=True)]
        return records

    @_unavailable_iter
    async def iter_keys(self, account: str, chunk: int = 500) -> AsyncIterator[list[KeyRecord]]:
        """All generated keys of an account, a chunk at a time (bounded memory)."""
        index = self._account(account, "keys")
        start = 0
        while True:
            names = await self.redis.zrange(index, start, start + chunk - 1)
            if not names:
                return
            yield [r for r in await self._load(names, chunk) if r is not None]
            start += chunk

    # -- external keys (grants in other accounts) ------------------------------------
    @_unavailable
    async def add_grant(
        self, account: str, app_key: str, label: str, roles: Sequence[str], actor: Actor
    ) -> str:
        """Grant roles in ``account`` to another account's key.

        Returns ``ok``, or ``missing`` (no such key), ``own`` (the key belongs to
        ``account``) or ``exists`` (already granted).
        """
        now = self.now_ms()
        grant = orjson.dumps(
            {"roles": list(roles), "status": ACTIVE, "label": label, "added": now}
        ).decode()
        return await self._change(
            self._add_grant, account, app_key, "external-key.add", actor,
            keys=[self._key(app_key), self._account(account, "ext"),
                  self._account(account, "audit")],
            args=[grant, now, app_key],
        )

    @_unavailable
    async def get_grant(self, account: str, app_key: str) -> ExternalKey | None:
        owner, raw = await self.redis.hmget(self._key(app_key), ["acct", "g:" + account])
        if owner == account:
            return None
        return ExternalKey.from_grant(app_key, owner, raw)

    @_unavailable
    async def update_grant(
        self,
        account: str,
        app_key: str,
        changes: Mapping[str, Any],
        actor: Actor,
        expect_roles: Sequence[str] | None = None,
    ) -> ExternalKey | None:
        """Change the grant of another account's key; None when there is none.
        :class:`KeyChanged` when ``expect_roles`` are not the grant's roles."""
        result = await self._guarded_change(
            account, script=self._update_grant, app_key=app_key,
            action="external-key.update", actor=actor,
            keys=[self._key(app_key), self._account(account, "audit")],
            args=[orjson.dumps(dict(changes)).decode()], expect_roles=expect_roles,
        )
        if result[0] == "missing":
            return None
        return ExternalKey.from_grant(app_key, result[1], result[2])

    @_unavailable
    async def remove_grant(
        self,
        account: str,
        app_key: str,
        actor: Actor,
        expect_roles: Sequence[str] | None = None,
    ) -> bool:
        result = await self._guarded_change(
            account, script=self._remove_grant, app_key=app_key,
            action="external-key.remove", actor=actor,
            keys=[self._key(app_key), self._account(account, "ext"),
                  self._account(account, "audit")],
            args=[app_key], expect_roles=expect_roles,
        )
        return result == "ok"

    @_unavailable_iter
    async def iter_grants(self, account: str, chunk: int = 500) -> AsyncIterator[list[ExternalKey]]:
        """All external keys granted roles in ``account``, a chunk at a time."""
        index = self._account(account, "ext")
        start = 0
        while True:
            names = await self.redis.zrange(index, start, start + chunk - 1)
            if not names:
                return
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hmget(self._key(name), ["acct", "g:" + account])
                rows = await pipe.execute()
            found = [ExternalKey.from_grant(n, o, g) for n, (o, g) in zip(names, rows, strict=True)]
            yield [x for x in found if x is not None]
            start += chunk

    @_unavailable
    async def all_grants(self, account: str) -> list[ExternalKey]:
        return [x async for batch in self.iter_grants(account) for x in batch]

    # -- token renewal ---------------------------------------------------------------
    @_unavailable
    async def renew_token(
        self,
        account: str,
        app_key: str,
        digest: str,
        *,
        keep_old: bool,
        actor: Actor,
        link: TokenLink | None = None,
        expect_roles: Sequence[str] | None = None,
    ) -> KeyRecord | None:
        """Issue a new token digest. ``keep_old``: both work until finish/undo.

        None when the key is missing; :class:`RenewalRefused` when one is pending or an
        unopened link is still valid.
        """
        now = self.now_ms()
        action = "token.renew" if keep_old else "token.renew-now"
        keys = [self._key(app_key), self._account(account, "audit")]
        args: list[Any] = [now, "later" if keep_old else "now", digest]
        if link is not None:
            keys.append(self._link(link.link_id))
            args += [link.sealed, max(1, link.expires - now), link.expires]
        result = await self._guarded_change(
            account, script=self._renew, app_key=app_key, action=action, actor=actor,
            keys=keys, args=args, expect_roles=expect_roles,
        )
        if result[0] == "missing":
            return None
        if result[0] != "ok":
            raise RenewalRefused(result[0])
        return KeyRecord.from_hash(app_key, _pairs(result[1]))

    @_unavailable
    async def end_renewal(
        self,
        account: str,
        app_key: str,
        *,
        finish: bool,
        actor: Actor,
        expect_roles: Sequence[str] | None = None,
    ) -> KeyRecord | None | bool:
        """Finish (old token stops) or undo (new token dropped) a pending renewal.

        Returns the record, None when the key is missing, False when nothing is pending.
        """
        action = "token.finish-renewal" if finish else "token.undo-renewal"
        result = await self._guarded_change(
            account, script=self._end_renewal, app_key=app_key, action=action, actor=actor,
            keys=[self._key(app_key), self._account(account, "audit")],
            args=["finish" if finish else "undo"], expect_roles=expect_roles,
        )
        if result[0] == "missing":
            return None
        if result[0] == "none":
            return False
        return KeyRecord.from_hash(app_key, _pairs(result[1]))

    @_unavailable
    async def open_link(self, link_id: str, request_id: str = "") -> dict[str, Any] | None:
        """Take the sealed token out of a link, exactly once; None if gone or never was."""
        event = orjson.dumps(
            {
                "time": self.now_ms(),
                "actor": "token-link",
                "action": "token.link-opened",
                "requestId": request_id,
            }
        ).decode()
        raw = await self._open_link(
            keys=[self._link(link_id)],
            args=[
                self._key(""),
                f"{self.prefix}acct:",
                self.audit_max_events,
                event,
                self.now_ms(),
            ],
        )
        return orjson.loads(raw) if raw else None

    @_unavailable
    async def link_valid(self, link_id: str) -> bool:
        raw = await self.redis.get(self._link(link_id))
        return raw is not None and orjson.loads(raw)["expires"] > self.now_ms()

    # -- settings --------------------------------------------------------------------
    @_unavailable
    async def get_settings(self, account: str) -> dict[str, str]:
        return await self.redis.hgetall(self._account(account, "settings"))

    @_unavailable
    async def put_setting(self, account: str, name: str, value: Any, actor: Actor) -> None:
        await self._put_setting(
            keys=[self._account(account, "settings"), self._account(account, "audit")],
            args=[
                self.audit_max_events,
                self._event(account, actor, "settings.update", account),
                name,
                value,
            ],
        )

    # -- audit -----------------------------------------------------------------------
    # Two streams per account: ``audit`` holds change events (written by the script that
    # makes the change) and ``access`` holds access events (sampled denials). They are
    # capped separately, so no volume of requests, by anyone, can trim a change event.
    # Listing merges them newest first; an access event's id carries an ``a`` prefix so a
    # cursor says which stream it came from (the two streams' ids may coincide).
    @_unavailable
    async def account_exists(self, account: str) -> bool:
        """Whether the account has generated keys, external keys or settings: the
        accounts that exist as far as keygate knows (one round trip)."""
        return bool(
            await self.redis.exists(
                self._account(account, "keys"),
                self._account(account, "ext"),
                self._account(account, "settings"),
            )
        )

    @_unavailable
    async def append_access_event(
        self, account: str, actor: Actor, action: str, target: str, after: Mapping[str, Any]
    ) -> None:
        """An access event (e.g. a sampled denial), in the account's access stream."""
        await self.redis.xadd(
            self._account(account, "access"),
            {
                "event": self._event(account, actor, action, target),
                "before": "{}",
                "after": orjson.dumps(after).decode(),
            },
            maxlen=self.audit_max_access_events,
            approximate=True,
        )

    async def _stream_newest_first(
        self, stream: str, max_id: str, prefix: str
    ) -> AsyncIterator[AuditEvent]:
        end = max_id
        while True:
            batch = await self.redis.xrevrange(stream, max=end, min="-", count=200)
            if not batch:
                return
            for event_id, fields in batch:
                yield _decode_event(prefix + event_id, fields)
            end = f"({batch[-1][0]}"

    @_unavailable
    async def audit_events(
        self,
        account: str,
        *,
        before_id: str | None = None,
        limit: int = 50,
        accept: Callable[[AuditEvent], bool] = lambda e: True,
        scan_limit: int = 10_000,
    ) -> tuple[list[AuditEvent], str | None]:
        """Newest first, after the event ``before_id`` (a cursor: an event id of a
        previous page); returns the page and the next cursor.

        Filtering happens here while paging both streams backwards, bounded by
        ``scan_limit`` events per call so a rare filter cannot scan a huge stream. Events
        with equal ids are ordered change first, then access.
        """
        if before_id is None:
            change_max = access_max = "+"
        elif before_id.startswith(ACCESS_ID_PREFIX):
            bare = before_id[len(ACCESS_ID_PREFIX):]
            change_max = access_max = f"({bare}"
        else:
            change_max, access_max = f"({before_id}", before_id
        streams = [
            self._stream_newest_first(self._account(account, "audit"), change_max, ""),
            self._stream_newest_first(
                self._account(account, "access"), access_max, ACCESS_ID_PREFIX
            ),
        ]
        heads: list[AuditEvent | None] = [await anext(it, None) for it in streams]
        found: list[AuditEvent] = []
        scanned = 0
        last_id: str | None = None
        while scanned < scan_limit:
            live = [i for i, head in enumerate(heads) if head is not None]
            if not live:
                return found, None
            # newest first; on equal ids the change stream (index 0) first
            pick = max(live, key=lambda i: (_id_order(heads[i].id), -i))  # type: ignore[union-attr]
            event = heads[pick]
            assert event is not None
            heads[pick] = await anext(streams[pick], None)
            scanned += 1
            last_id = event.id
            if accept(event):
                found.append(event)
                if len(found) == limit:
                    return found, event.id
        return found, last_id

    # -- policy ------------------------------------------------------------------------
    @_unavailable
    async def role_holders(self, chunk: int = 500) -> dict[str, dict[str, int]]:
        """How many keys hold each role, per account they hold it in (account → role →
        count): generated keys in their own account, external keys in the accounts that
        granted them roles, active or not (an inactive key can be activated again).

        Reads every account's key and external-key indexes a chunk at a time, and only
        the grant fields: for checks a person starts (a policy reload, ``keygate policy
        check``), never for requests. Memory grows with accounts and roles, not keys."""
        head = f"{self.prefix}acct:"
        accounts: set[str] = set()
        async for name in self.redis.scan_iter(match=_glob_escape(head) + "*", count=1000):
            rest = name[len(head):]
            for tail in (":keys", ":ext"):
                if rest.endswith(tail):
                    accounts.add(rest[: -len(tail)])
        held: dict[str, dict[str, int]] = {}
        for account in sorted(accounts):
            counts: dict[str, int] = {}
            for what in ("keys", "ext"):
                index, start = self._account(account, what), 0
                while names := await self.redis.zrange(index, start, start + chunk - 1):
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for name in names:
                            pipe.hmget(self._key(name), ["acct", "g:" + account])
                        rows = await pipe.execute()
                    for owner, raw in rows:
                        # a deleted key keeps no owner; each index counts its own kind
                        if owner is None or (owner == account) != (what == "keys"):
                            continue
                        grant = Grant.decode(raw)
                        for role in dict.fromkeys(grant.roles if grant else ()):
                            counts[role] = counts.get(role, 0) + 1
                    start += chunk
            if counts:
                held[account] = dict(sorted(counts.items()))
        return held

    @_unavailable
    async def announced_policy(self) -> PolicyAnnouncement | None:
        """The policy version the deployment announced last, or None."""
        found = await self.redis.hgetall(self._policy_record)
        if not found.get("version"):
            return None
        return PolicyAnnouncement(
            found["version"], found.get("by", ""), int(found.get("at") or 0),
            found.get("forced") == "1",
        )

    @_unavailable
    async def announce_policy(
        self, announcement: PolicyAnnouncement, only_if_none: bool = False
    ) -> bool:
        """Write the announcement and publish its name on the invalidation channel, in
        one script; ``only_if_none``: leave an existing one alone (False then)."""
        done = await self._announce_policy(
            keys=[self._policy_record],
            args=[self.channel, "1" if only_if_none else "0", announcement.version,
                  announcement.by, announcement.at, "1" if announcement.forced else "0"],
        )
        return bool(done)

    @_unavailable
    async def audit_policy_reload(
        self, account: str, actor: Actor, before: Mapping[str, Any], after: Mapping[str, Any]
    ) -> None:
        """A policy reload asked through the management API, in the audit log of the
        account of the key that asked (the policy is every account's, the key is one's)."""
        await self.redis.xadd(
            self._account(account, "audit"),
            {
                "event": self._event(account, actor, "policy.reload", "policy"),
                "before": orjson.dumps(dict(before)).decode(),
                "after": orjson.dumps(dict(after)).decode(),
            },
            maxlen=self.audit_max_events,
            approximate=True,
        )

    # -- JWT signing keys (sealed: see gateway.sessions.keys) -----------------------------
    @_unavailable
    async def signing_keys(self) -> list[str]:
        return list(await self.redis.hvals(self._signing_keys_record))

    async def _signing_keys(
        self, only_if_none: bool, write: Sequence[str], remove: Sequence[str]
    ) -> list[str]:
        args: list[str] = [self.channel, "1" if only_if_none else "0"]
        for sealed in write:
            args += [orjson.loads(sealed)["kid"], sealed]
        args += ["--", *remove]
        return list(await self._write_signing_keys(
            keys=[self._signing_keys_record], args=args))

    @_unavailable
    async def first_signing_key(self, sealed: str) -> list[str]:
        """Store ``sealed`` unless a key is stored already (instances starting together
        agree on one); every stored key."""
        return await self._signing_keys(True, [sealed], ())

    @_unavailable
    async def add_signing_key(
        self, sealed: str, retired: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> list[str]:
        """A rotation in one script: the new key, the earlier ones as retired, the kids in
        ``remove`` (retired keys whose tokens have all expired) dropped, and every
        instance told; every stored key."""
        return await self._signing_keys(False, [*retired, sealed], remove)


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a SCAN pattern (a prefix may hold ``*?[]\\``)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


ACCESS_ID_PREFIX = "a"


def _id_order(event_id: str) -> tuple[int, int]:
    millis, _, seq = event_id.removeprefix(ACCESS_ID_PREFIX).partition("-")
    return int(millis), int(seq or 0)


def _decode_event(event_id: str, fields: Mapping[str, str]) -> AuditEvent:
    meta = orjson.loads(fields.get("event", "{}"))
    before = orjson.loads(fields.get("before", "{}")) or {}
    after = orjson.loads(fields.get("after", "{}")) or {}
    for side in (before, after):
        if side.get("roles") == {}:  # Lua's cjson cannot tell an empty list from {}
            side["roles"] = []
    if before and after:  # a change: keep only what changed
        same = [k for k in before if k in after and before[k] == after[k]]
        for name in same:
            del before[name], after[name]
    return AuditEvent(
        id=event_id,
        time=meta.get("time", 0),
        account=meta.get("account", ""),
        actor=meta.get("actor", ""),
        action=meta.get("action", ""),
        target=meta.get("target", ""),
        request_id=meta.get("requestId", ""),
        before=before,
        after=after,
    )
