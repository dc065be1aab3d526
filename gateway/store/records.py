"""What the store holds and answers, as values, and how each is encoded in Redis.

Pure: no I/O. A record's encoding lives beside it (``Grant.encode``/``decode``,
``KeyRecord.from_hash``, ``AuditEvent.from_stream``), so the layout described in the
package's docstring is read and written in one place.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

ACTIVE = "active"
INACTIVE = "inactive"
# the audit action of a key's creation
CREATED = "key.create"
STATUSES = (ACTIVE, INACTIVE)

# An access event's id carries this prefix, so a cursor says which of an account's two
# audit streams it came from (their ids may coincide).
ACCESS_ID_PREFIX = "a"


def grant_fields(raw: str) -> dict[str, Any]:
    """A ``g:`` field of a key hash as an object. A key's own grant, active, is stored
    as the bare JSON array of its roles (~30 B less in each key's hash, the one record
    every key has); a grant in another account, or one an older keygate wrote, is an
    object with ``roles`` and the rest. The scripts read both alike
    (scripts/key_hash.lua)."""
    data = orjson.loads(raw)
    return {"roles": data} if isinstance(data, list) else data


@dataclass(frozen=True)
class Grant:
    roles: tuple[str, ...]
    status: str = ACTIVE

    @classmethod
    def decode(cls, raw: str | None) -> Grant | None:
        if not raw:
            return None
        data = grant_fields(raw)
        return cls(tuple(data.get("roles", ())), data.get("status", ACTIVE))

    def encode(self) -> str:
        if self.status == ACTIVE:
            return orjson.dumps(list(self.roles)).decode()
        return orjson.dumps({"roles": list(self.roles), "status": self.status}).decode()


def stored_digest(digest: str) -> str:
    """How a token's digest is kept in a key hash: a SHA-256 digest in hex (64
    characters) as unpadded base64url (43), 22 B less per key; anything else as given.
    :func:`token_digest` reads both, so hashes an older keygate wrote still match."""
    if len(digest) == 64:
        try:
            return base64.urlsafe_b64encode(bytes.fromhex(digest)).rstrip(b"=").decode()
        except ValueError:
            pass
    return digest


def token_digest(stored: str) -> str:
    """The digest (hex) a key hash holds in ``tok``/``newTok`` (:func:`stored_digest`)."""
    if len(stored) == 43:
        try:
            return base64.urlsafe_b64decode(stored + "=").hex()
        except ValueError:
            pass
    return stored


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """What Lua's ``string.lower`` makes of ``text`` in Redis (the C locale)."""
    return text.translate(_ASCII_LOWER)


def label_fold(label: str) -> str:
    """The ``lf`` field of a key hash: the label's case fold, which orders and searches
    labels, for a label that is not ASCII (Lua's ``string.lower`` folds ASCII alone);
    else ''."""
    return "" if label.isascii() else label.casefold()


def _int(value: str | None) -> int | None:
    return int(value) if value else None


def pairs(flat: Sequence[str]) -> dict[str, str]:
    """A hash as a script returns it (HGETALL's flat list) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


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
    # the roles granted there, a grant switched off included (it can be switched on
    # again): for the rule on who may act on the key (gateway.escalation), never shown
    roles_elsewhere: tuple[tuple[str, tuple[str, ...]], ...] = field(repr=False, default=())

    @classmethod
    def from_hash(cls, app_key: str, h: Mapping[str, str]) -> KeyRecord | None:
        if "acct" not in h:
            return None
        own = Grant.decode(h.get("g:" + h["acct"]))
        elsewhere = sorted(
            (name[2:], grant_fields(value)) for name, value in h.items()
            if name.startswith("g:") and name != "g:" + h["acct"]
        )
        granted_in = tuple((account, int(grant.get("added", 0))) for account, grant in elsewhere)
        roles_elsewhere = tuple(
            (account, tuple(grant.get("roles", ()))) for account, grant in elsewhere
        )
        return cls(
            app_key=app_key,
            account=h["acct"],
            label=h.get("label", ""),
            status=h.get("status", INACTIVE),
            # a key whose token was never renewed keeps one date (scripts/key_hash.lua)
            created=int(h.get("created") or h.get("tokCreated") or 0),
            token_created=int(h.get("tokCreated", 0)),
            roles=own.roles if own else (),
            new_token_created=_int(h.get("newTokCreated")),
            last_used=_int(h.get("lastUsed")),
            token_digests=tuple(token_digest(d) for d in (h.get("tok"), h.get("newTok")) if d),
            granted_in=granted_in,
            roles_elsewhere=roles_elsewhere,
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
        g = grant_fields(raw)
        return cls(
            app_key,
            owner,
            g.get("label", ""),
            tuple(g.get("roles") or ()),
            g.get("status", ACTIVE),
            int(g.get("added", 0)),
        )


@dataclass(frozen=True)
class EndedSessions:
    """The sessions of a key signed out of (scripts/end_session.lua): those named, and
    every one issued at or before ``until`` (seconds)."""

    until: int = 0
    ended: frozenset[str] = frozenset()

    @classmethod
    def decode(cls, raw: str | None) -> EndedSessions:
        if not raw:
            return NO_ENDED_SESSIONS
        data = orjson.loads(raw)
        # cjson writes an empty table as {} and orjson reads it back as a dict either way
        return cls(int(data.get("until", 0)), frozenset(data.get("ended") or ()))

    def ends(self, jti: str, issued: int) -> bool:
        return issued <= self.until or jti in self.ended


NO_ENDED_SESSIONS = EndedSessions()


@dataclass(frozen=True)
class AuthLookup:
    """What authenticating a key for one target account needs, read in one round trip."""

    owner: str | None
    status: str | None
    token_digests: tuple[str, ...] = field(repr=False)
    grant: Grant | None
    ended_sessions: EndedSessions = NO_ENDED_SESSIONS

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

    @classmethod
    def from_stream(cls, event_id: str, fields: Mapping[str, str], account: str) -> AuditEvent:
        """An event as a script or ``append_access_event`` wrote it in ``account``'s
        stream: AUDIT_FIELDS, ``before`` and ``after`` in JSON; or as an older keygate
        did, who, what and when in one JSON field, ``event``."""
        meta: Mapping[str, Any] = (orjson.loads(fields["event"]) if "event" in fields
                                   else fields)
        before = orjson.loads(fields.get("before") or "{}") or {}
        after = orjson.loads(fields.get("after") or "{}") or {}
        if meta.get("action") == CREATED and isinstance(after, list) and after:
            # a creation event's label and roles (scripts/create_key.lua)
            after = {"label": after[0], "roles": after[1:]}
        for side in (before, after):
            if side.get("roles") == {}:  # Lua's cjson cannot tell an empty list from {}
                side["roles"] = []
        time = _whole(meta.get("time"))
        if meta.get("action") == CREATED and after:
            # a creation event leaves out what every new key has (scripts/create_key.lua):
            # some 70 bytes of each key's memory in Redis
            after.setdefault("status", ACTIVE)
            after.setdefault("creationDateToken", time)
        if before and after:  # a change: keep only what changed
            same = [k for k in before if k in after and before[k] == after[k]]
            for name in same:
                del before[name], after[name]
        return cls(
            id=event_id,
            time=time,
            account=meta.get("account", account),
            actor=meta.get("actor", ""),
            action=meta.get("action", ""),
            target=meta.get("target", ""),
            request_id=meta.get("requestId", ""),
            before=before,
            after=after,
        )


# The fields of an audit stream entry, in this order, the same in every entry: Redis
# then keeps their names once per node of the stream, not in each entry (with the
# account, which the stream's name says, that is some 80 bytes an event fewer than one
# JSON field). An older keygate wrote one JSON field, ``event``, beside before and after.
AUDIT_FIELDS = ("time", "actor", "action", "target", "requestId", "before", "after")


def event_fields(time_ms: int, actor: Actor, action: str, target: str) -> list[str]:
    """An audit event's first five fields (AUDIT_FIELDS): who, what and when."""
    return [str(time_ms), actor.app_key, action, target, actor.request_id]


def event_header(time_ms: int, actor: Actor, action: str, target: str) -> str:
    """Those fields as the change scripts take them (scripts/prelude.lua: a JSON array
    of strings)."""
    return orjson.dumps(event_fields(time_ms, actor, action, target)).decode()


def audit_entry(fields: Sequence[str], before: Mapping[str, Any],
                after: Mapping[str, Any]) -> dict[str, str]:
    """A stream entry, as the scripts' ``audit`` writes it: ``fields`` (event_fields),
    then before and after in JSON."""
    return dict(zip(AUDIT_FIELDS, [*fields, orjson.dumps(dict(before)).decode(),
                                   orjson.dumps(dict(after)).decode()], strict=True))


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


def _whole(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
