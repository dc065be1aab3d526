"""The key store: the only package that imports redis.

Layout (every name starts with the ``store_prefix`` setting, ``kg:`` by default; all of
them are made in ``names.py``):

``{p}key:{appKey}`` — hash, one per key, holding everything authentication needs
(``{p}key:{{account}}:{appKey}`` on a Redis Cluster, the owner account as hash tag)::

    acct           owner account
    label          the owner's label
    status         active | inactive
    created        creation time, ms since the epoch, once it differs from tokCreated
                   (written by the first renewal; until then the key was made with its
                   token: scripts/key_hash.lua)
    tok            HMAC-SHA256 digest of the current token (base64url; an older keygate
                   wrote hex: records.py token_digest reads both); never the token
    tokCreated     when the current token was issued, ms
    newTok         digest of the new token while a renewal is pending (both work)
    newTokCreated  when it was issued
    link           name of the unopened one-time token link, if any
    linkExp        when that link expires, ms (a renewal is refused until then, unless
                   the link's record is gone: taken by an opening that never finished)
    lastUsed       last successful authentication, ms (written in batches)
    sessEnd        the sessions signed out of, JSON {"until": s, "ended": {jti: expiry}}:
                   a session named, or issued at or before ``until``, is refused
                   (scripts/end_session.lua; at most 64 named)
    lf             the label's case fold, for a label that is not ASCII (the label index's
                   order and q's match; Lua folds ASCII itself)
    fu:{account}   a grant change's follow-up not yet applied in that account (grants.py)
    g:{account}    the key's grant in that account, JSON {"roles": [...], ...}; the owner's
                   own grant is ``g:{acct}``, only its roles' array while active; a grant
                   in another account (an external key there) also holds that account's
                   label, status and the date it was added

    After a delete the hash is replaced by a tombstone ``{deleted: ms}`` so that a key
    name is never issued twice.

An account's records (``{p}acct:{{account}}:…`` on a Redis Cluster):

``{p}acct:{account}:created``  packed set (scripts/packed.lua) of the account's generated
                               keys by status, then creation time: an inactive key at its
                               creation time plus 2^43 ms (scripts/status_runs.lua); an
                               older layout kept it as the sorted set ``keys``
``{p}acct:{account}:ext``      sorted set of the external keys granted roles in the account,
                               by the time the grant was added
``{p}acct:{account}:owners``   set of the account's active keys with the role owner, and
                               the member '' once complete (so the last one is kept)
``{p}acct:{account}:tokens``   the listing indexes (``listing.py``), kept by the scripts that
``{p}acct:{account}:uses``     change keys: packed sets (scripts/packed.lua: the name and
``{p}acct:{account}:labels``   the names under it) of the generated keys by token date (in
``{p}acct:{account}:statuses`` status runs), last use (0: never), 'folded label NUL key'
``{p}acct:{account}:roles``    (score 0; its zones beside it) and status (0 active, 1
                               inactive); the set of role names in use, with the mark of
                               the layout (names.LISTED) once the indexes are complete
``{p}acct:{account}:holding:{role}`` the keys holding a role: a packed set, scored as
                               ``tokens``
``{p}acct:{account}:settings`` hash of the account's settings
``{p}acct:{account}:audit``    stream of change events, capped (``MAXLEN ~``); the fields of
                               each entry: records.AUDIT_FIELDS
``{p}acct:{account}:access``   stream of access events (sampled denials), capped apart
``{p}acct:{account}:moves``    stream of the keys whose last use moved, with their times,
                               written only once a process keeps the account's copy in
                               last-use order (used_order.py), its last entries alone
``{p}acct:{account}:done:{id}`` a grant follow-up applied, until it is cleared (grants.py)
``{p}link:{sha256(link secret)}`` an unopened one-time link: the token, encrypted under a
                               key derived from the link secret, which is not stored
``{p}rl:{kind}:{window}:{subject}`` a failed-authentication counter, expiring with its window
``{p}policy:version``          hash: the policy version (content hash) announced by the last
                               reload, ``version``, ``by``, ``at`` (ms), ``forced`` ('1'/'0');
                               its name is published on the invalidation channel when it
                               changes, so every instance compares its own with it
``{p}jwt:keys``                hash: kid → a JWT signing key sealed under the server secret
                               (gateway.sessions.keys); its name is published on the
                               invalidation channel when it changes (a rotation)
``{p}accounts``                set of the accounts that own or owned generated keys or
                               granted external keys, each named before the change that
                               made it known, and the member '' once complete
                               (``accounts.py``)
``{p}store:layout``            the store's layout version, written by ``migrate`` once every
                               account is in this keygate's (``layout.py``)
``{p}invalidate``              the invalidation channel (pub/sub)

Because a key's grants live in its own hash, authenticating a key for a target account
is a single ``HMGET`` (one round trip). Every change is one Lua script that checks its
precondition, applies the change and appends the audit event, so a change and its
audit record happen together or not at all and concurrent changes serialise (fifty
concurrent renewals: one wins, the others see it pending); a grant in another account
records its audit event as a follow-up applied exactly once in that account (below). A
refused change raises a ``StoreRefusal`` (``refusals.py``) and writes nothing.

The package, by responsibility:

    records.py           the values (KeyRecord, Grant, ExternalKey, AuditEvent, …) and
                         their encoding in Redis (pure)
    refusals.py          the typed refusals of changes
    names.py             every Redis name
    lua.py, scripts/     the Lua scripts, one file each; prelude.lua holds the audit and
                         publish steps and the header every change script shares
    core.py              what every part shares; ``change()`` runs a change script
    lookup.py            authentication reads (cache, else one HMGET)
    credential_cache.py  the credential cache and the rules that keep it coherent
    invalidation.py      the pub/sub listener that applies those rules
    keys.py              generated keys and token renewal
    listing.py           keys in bulk: pages from the listing indexes, chunks;
                         building the indexes for older data (migrate)
    accounts.py          the accounts keygate knows (one set, not a scan)
    layout.py            the store's layout version
    search.py            q in a large account: each process's copy of its label index,
                         read from Redis and kept current from the audit stream
    label_copy.py        that copy and q's matches in it (pure; copy_values.py: what a
                         search of it is asked and answers); copy_reads.py joins
                         the reads it is made from, key_index.py finds a key's line,
                         label_newest.py reads the newest matches from its end,
                         ordered_lines.py keeps its lines in the listing's orders,
                         ordered_pages.py counts and pages in them,
                         used_order.py in last-use order (followed from the moves
                         stream); copy_sync.py reads it and its changes from Redis
    grants.py            external keys (grants in other accounts)
    links.py             one-time token links
    account_settings.py  account settings
    audit.py             the audit streams
    policy_records.py    the policy announcement and role holders
    signing_keys.py      JWT signing keys
    counters.py          failed-authentication counters, last-used times
    connection.py        the client a store URL names
    copy.py              a store copied into another, between layouts

On a Redis Cluster (``redis+cluster://``) every name of an account, the hashes of the
keys it owns included, carries the account as its hash tag (``names.py``), so every
change of a key is still one script in one slot with every name in ``KEYS``, and a cold
key is still one HMGET. What spans slots, and how it stays whole:

* a grant in another account (``grants.py``): one script in the key's slot (the change,
  its notice and a follow-up recorded in the hash), then the follow-up — the granting
  account's external-key index and audit event — applied once in that account's slot
  and cleared; a follow-up a crash leaves is applied before the next change of the
  grant, before the key's delete, or by ``migrate``;
* one-time links (own slots): written before the change that names them, deleted after
  the change that drops them, taken with GETDEL before the key forgets them (``keys.py``,
  ``links.py``); a deleted key leaves the other accounts' external-key indexes after its
  delete (an entry left behind is never listed);
* last-used times: one script per account per batch;
* the accounts keygate knows: a set in a slot of its own, in which a change names its
  account before it runs (an account named whose change never ran is skipped by the
  readers); a store written before the set was kept is scanned once, over every master,
  and ``migrate`` scans again (``accounts.py``); ``role_holders()`` reads it too;
* ``list_keys.lua`` reads the role sets and key hashes of its one account by name (too
  many for ``KEYS``): they are in the slot of the names it is given;
* invalidation stays classic pub/sub, which a cluster broadcasts to every node.

``copy.py`` copies a store between the two layouts (``keygate store copy``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .account_settings import AccountSettings
from .audit import AuditLog
from .connection import CLIENT_FAILURES, client_from_url
from .core import Observer, StoreCore, store_unavailable
from .counters import Counters
from .credential_cache import LIVENESS, MAX_ACCOUNTS_PER_KEY, CacheSettings, CredentialCache
from .grants import GrantChanges
from .invalidation import PING_INTERVAL
from .keys import KeyChanges
from .layout import LAYOUT, LayoutStatus, NewerLayout
from .links import Links
from .listing import SORT_FIELDS, KeyListing, KeyQuery
from .lookup import AuthReads
from .policy_records import PolicyRecords
from .records import (
    ACCESS_ID_PREFIX,
    ACTIVE,
    CLI_ACTOR,
    INACTIVE,
    STATUSES,
    SYSTEM_ACTOR,
    Actor,
    AuditEvent,
    AuthLookup,
    ExternalKey,
    Grant,
    KeyRecord,
    PolicyAnnouncement,
    TokenLink,
)
from .refusals import (
    GrantExists,
    KeyChanged,
    KeyNameTaken,
    KeyNotFound,
    LastOwnerKey,
    NoRenewalPending,
    OwnKey,
    RenewalPending,
    RenewalRefused,
    StoreRefusal,
    TokenLinkPending,
)
from .search import SEARCH_INDEX_MAX_KEYS
from .signing_keys import SigningKeys


class Store(AuthReads, KeyChanges, KeyListing, GrantChanges, Links, AccountSettings,
            AuditLog, PolicyRecords, SigningKeys, Counters):
    """Redis access, and the credential cache kept coherent through pub/sub (rules in
    ``credential_cache.py``).

    ``observer`` (None: nobody) hears of cache hits, misses, evictions, invalidations,
    resyncs, and of every store call's duration and failure. ``on_policy_announced``
    and ``on_signing_keys_changed`` are called (no I/O, from the listener) when the
    policy announcement or the JWT signing keys changed, or may have been missed.
    """

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = "kg:",
        clock: Callable[[], float] = time.time,
        audit_max_events: int = 100_000,
        cache: CacheSettings = CacheSettings(),  # noqa: B008 - frozen, shared safely
        max_connections: int = 100,
        audit_max_access_events: int = 10_000,
        search_index_max_keys: int = SEARCH_INDEX_MAX_KEYS,
    ) -> Store:
        client = client_from_url(url, max_connections)
        return cls(client, prefix, clock, audit_max_events, cache, audit_max_access_events,
                   max_connections, search_index_max_keys)

    async def close(self) -> None:
        await self.stop_invalidation()
        await self.label_search.close()
        await self.redis.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except CLIENT_FAILURES as exc:
            if store_unavailable(exc):
                return False
            raise

    async def load_scripts(self) -> bool:
        """Load every Lua script on every node of the store (every master and replica of
        a cluster) before keygate serves; whether every master has them now. A node
        that does not answer is skipped: the first call that meets NOSCRIPT there
        (or a node restarted, flushed or promoted later) loads them again (``lua.py``)."""
        return await self.scripts.load()

    # -- the invalidation listener -------------------------------------------------------
    def start_invalidation(self) -> None:
        """Subscribe to the invalidation channel; until then the cache is bypassed."""
        self.invalidation.start()

    async def stop_invalidation(self) -> None:
        await self.invalidation.stop()

    @property
    def resyncs(self) -> int:
        """Subscriptions confirmed, the first one included."""
        return self.invalidation.resyncs

    @property
    def on_policy_announced(self) -> Callable[[], None] | None:
        return self.invalidation.on_policy_announced

    @on_policy_announced.setter
    def on_policy_announced(self, callback: Callable[[], None] | None) -> None:
        self.invalidation.on_policy_announced = callback

    @property
    def on_signing_keys_changed(self) -> Callable[[], None] | None:
        return self.invalidation.on_signing_keys_changed

    @on_signing_keys_changed.setter
    def on_signing_keys_changed(self, callback: Callable[[], None] | None) -> None:
        self.invalidation.on_signing_keys_changed = callback


__all__ = [
    "ACCESS_ID_PREFIX", "ACTIVE", "CLI_ACTOR", "INACTIVE", "LIVENESS", "MAX_ACCOUNTS_PER_KEY",
    "PING_INTERVAL", "SORT_FIELDS", "STATUSES", "SYSTEM_ACTOR", "Actor", "AuditEvent",
    "AuthLookup", "CacheSettings", "CredentialCache", "ExternalKey", "Grant", "GrantExists",
    "KeyChanged", "KeyNameTaken", "KeyNotFound", "KeyQuery", "KeyRecord", "LAYOUT",
    "LastOwnerKey", "LayoutStatus", "NewerLayout", "NoRenewalPending", "Observer", "OwnKey",
    "PolicyAnnouncement", "RenewalPending", "RenewalRefused", "Store", "StoreCore",
    "StoreRefusal", "TokenLink", "TokenLinkPending",
]
