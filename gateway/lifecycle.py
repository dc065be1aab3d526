"""Every change of keys, grants and account settings, for the management API and the
CLI alike.

Both callers change the store only through :class:`KeyLifecycle`, so what a change
accepts is decided here, once: labels, role lists, statuses and setting values are
checked by the ``checked_*`` functions below, which raise :class:`BadInput` (each
caller words it its own way: a 400 with its ``code``, or a usage error naming the
command-line flag). The store's refusals (``gateway.store.refusals``) and its answers
(None or False for a key or grant that is not there) come back unchanged. Who may make
a change (gateway.escalation) stays with the callers: only the management API has a
caller to check.

A new token exists in clear only in the return value of :meth:`KeyLifecycle.create` or
:meth:`KeyLifecycle.renew`. With ``delivery="link"`` it is not returned at all: it is
sealed into a one-time link (see :mod:`gateway.credentials`) and the caller gets the
link secret to build a URL from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from .credentials import (
    CredentialFormat,
    TokenHasher,
    is_link_secret,
    link_id,
    new_link_secret,
    seal_token,
    unseal_token,
)
from .renewal import RENEWAL_PERIODS
from .store import STATUSES, Actor, ExternalKey, KeyNameTaken, KeyRecord, Store, TokenLink

if TYPE_CHECKING:
    from .policy import Policy

_NAME_ATTEMPTS = 8
DELIVERIES = ("token", "link")
MAX_LABEL = 200
CHANGEABLE = ("label", "roles", "status")


# -- what a change accepts -------------------------------------------------------------
class BadInput(ValueError):
    """Input no change accepts, refused before anything is written.

    ``field`` names what is wrong (``label``, ``roles``, ``status``, ``delivery``,
    ``appKey``, a setting's name, or ``change`` for a change that names nothing);
    ``code`` is a stable name for the refusal, which the management API answers as its
    error code. The message says what is wrong, for people.
    """

    def __init__(self, field: str, message: str, code: str):
        super().__init__(message)
        self.field = field
        self.code = code


class UnknownRole(BadInput):
    """A role the policies in force do not define: ``role`` is the first such, and
    ``defined`` the roles they do define (sorted), for a message that helps."""

    def __init__(self, role: str, defined: Iterable[str]):
        self.role = role
        self.defined = tuple(sorted(defined))
        super().__init__(
            "roles",
            f"unknown role {role!r}; roles defined in the policies: {', '.join(self.defined)}",
            "unknown_role",
        )


def checked_label(value: object) -> str:
    """A label as stored: trimmed, non-empty, printable (it ends up in terminals and
    spreadsheets), at most MAX_LABEL characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_LABEL:
        raise BadInput(
            "label", f"label must be a non-empty string of at most {MAX_LABEL} characters",
            "bad_label",
        )
    if not value.isprintable():
        raise BadInput("label", "label must not contain control characters", "bad_label")
    return value.strip()


def distinct_roles(roles: object) -> list[str]:
    """A role list as stored: names, each once, in the order first given."""
    if isinstance(roles, str | bytes) or not isinstance(roles, Iterable):
        raise BadInput("roles", "roles must be a list of role names", "bad_roles")
    listed = list(roles)
    if not all(isinstance(role, str) for role in listed):
        raise BadInput("roles", "roles must be a list of role names", "bad_roles")
    return list(dict.fromkeys(listed))


def checked_roles(roles: object, policy: Policy) -> list[str]:
    """:func:`distinct_roles`, once every one is found defined in ``policy`` (the policy
    in force: a key holding a role no policy line names would be granted nothing)."""
    distinct = distinct_roles(roles)
    unknown = policy.unknown_roles(distinct)
    if unknown:
        raise UnknownRole(unknown[0], policy.roles)
    return distinct


def checked_status(value: object) -> str:
    if not isinstance(value, str) or value not in STATUSES:
        raise BadInput("status", f"status must be one of {', '.join(STATUSES)}", "bad_status")
    return value


def checked_changes(changes: Mapping[str, Any], policy: Policy | None = None) -> dict[str, Any]:
    """A change of a key or a grant as the store takes it: some of label, roles and
    status, at least one, each checked. The roles are checked against ``policy`` when
    it is given (the change methods always give it; the CLI checks a command line before
    it has loaded the policies, and again through the change)."""
    for name in changes:
        if name not in CHANGEABLE:
            raise BadInput(name, f"{name!r} cannot be changed; a change takes "
                                 f"{', '.join(CHANGEABLE)}", "unknown_field")
    checked: dict[str, Any] = {}
    if "label" in changes:
        checked["label"] = checked_label(changes["label"])
    if "roles" in changes:
        roles = changes["roles"]
        checked["roles"] = (distinct_roles(roles) if policy is None
                            else checked_roles(roles, policy))
    if "status" in changes:
        checked["status"] = checked_status(changes["status"])
    if not checked:
        raise BadInput("change", "send at least one of label, roles, status", "empty_change")
    return checked


@dataclass(frozen=True)
class SettingRule:
    values: tuple[Any, ...]
    code: str  # the refusal of any other value


ACCOUNT_SETTINGS: Mapping[str, SettingRule] = {
    "renewalPeriodMonths": SettingRule(RENEWAL_PERIODS, "bad_renewal_period"),
}


def checked_setting(name: str, value: object) -> Any:
    """``value`` when it is one that the account setting ``name`` takes."""
    rule = ACCOUNT_SETTINGS.get(name)
    if rule is None:
        raise BadInput(name, f"unknown account setting {name!r}; settings: "
                             f"{', '.join(ACCOUNT_SETTINGS)}", "unknown_setting")
    # True == 1 and 3.0 == 3, but neither is what the setting holds
    if type(value) not in {type(allowed) for allowed in rule.values} or value not in rule.values:
        raise BadInput(name, f"{name} must be one of "
                             f"{', '.join(str(v) for v in rule.values)}", rule.code)
    return value


def checked_delivery(value: object) -> str:
    if not isinstance(value, str) or value not in DELIVERIES:
        raise BadInput("delivery", f"delivery must be one of {', '.join(DELIVERIES)}",
                       "bad_delivery")
    return value


# -- the changes -----------------------------------------------------------------------
@dataclass(frozen=True)
class Issued:
    """A key record with its new secret: the token, or the secret of a one-time link."""

    record: KeyRecord
    token: str | None = None
    link_secret: str | None = None
    link_expires: int | None = None


@dataclass(frozen=True)
class OpenedLink:
    app_key: str
    account: str
    token: str


class KeyLifecycle:
    """The one way to change keys, grants and account settings.

    Each method checks its input (:class:`BadInput`), makes the change with the store's
    own guards (``expect_roles``, ``keep_an_owner``) and answers what the store answers.
    Methods that take roles take the ``policy`` in force, which defines them.
    """

    def __init__(
        self,
        store: Store,
        fmt: CredentialFormat,
        hasher: TokenHasher,
        link_ttl_seconds: float,
        clock: Callable[[], float],
    ):
        self.store = store
        self.fmt = fmt
        self.hasher = hasher
        self.link_ttl_ms = int(link_ttl_seconds * 1000)
        self.clock = clock

    def _link(self, app_key: str, account: str, token: str) -> tuple[str, TokenLink]:
        secret = new_link_secret()
        expires = int(self.clock() * 1000) + self.link_ttl_ms
        value = orjson.dumps(
            {"appKey": app_key, "account": account, "expires": expires,
             "sealed": seal_token(secret, token, app_key)}
        ).decode()
        return secret, TokenLink(link_id(secret), value, expires)

    # -- generated keys ----------------------------------------------------------------
    async def create(
        self,
        account: str,
        label: str,
        roles: Sequence[str],
        actor: Actor,
        delivery: str = "token",
        *,
        policy: Policy | None = None,
    ) -> Issued:
        """Create a generated key. Key names are random; a clash with a live or deleted
        key is vanishingly rare, the store refuses it atomically and we draw again.

        The roles are checked against ``policy`` when it is given (the management API
        and the CLI give it; a caller seeding keys with roles of its own may not)."""
        label = checked_label(label)
        roles = distinct_roles(roles) if policy is None else checked_roles(roles, policy)
        delivery = checked_delivery(delivery)
        for _ in range(_NAME_ATTEMPTS):
            token = self.fmt.new_token()
            app_key = self.fmt.new_key(account)
            secret, link = (None, None)
            if delivery == "link":
                secret, link = self._link(app_key, account, token)
            try:
                record = await self.store.create_key(
                    app_key, account, label, roles, self.hasher.digest(token), actor, link
                )
            except KeyNameTaken:
                continue
            if record is not None:
                if link is None:
                    return Issued(record, token=token)
                return Issued(record, link_secret=secret, link_expires=link.expires)
        raise RuntimeError("could not draw an unused key name; the key space is exhausted?")

    async def update(
        self,
        account: str,
        app_key: str,
        *,
        actor: Actor,
        policy: Policy,
        label: str | None = None,
        roles: Sequence[str] | None = None,
        status: str | None = None,
        expect_roles: Sequence[str] | None = None,
        expect_elsewhere: Sequence[tuple[str, Sequence[str]]] | None = None,
        keep_an_owner: bool = False,
    ) -> KeyRecord | None:
        """Change a generated key's label, roles or status (at least one); None when
        ``account`` owns no such key. KeyChanged if ``expect_roles`` are no longer the
        key's roles (or, with ``expect_elsewhere``, the roles other accounts granted it
        changed); LastOwnerKey if, with ``keep_an_owner``, the account would be left
        without an active owner key."""
        given = {"label": label, "roles": roles, "status": status}
        changes = checked_changes({k: v for k, v in given.items() if v is not None}, policy)
        return await self.store.update_key(
            account, app_key, actor=actor, expect_roles=expect_roles,
            expect_elsewhere=expect_elsewhere, keep_an_owner=keep_an_owner, **changes,
        )

    async def delete(
        self,
        account: str,
        app_key: str,
        *,
        actor: Actor,
        expect_roles: Sequence[str] | None = None,
        expect_elsewhere: Sequence[tuple[str, Sequence[str]]] | None = None,
        keep_an_owner: bool = False,
    ) -> bool:
        """Delete a generated key for good (its name is never issued again); False when
        ``account`` owns no such key. Refusals as in :meth:`update`."""
        return await self.store.delete_key(
            account, app_key, actor=actor, expect_roles=expect_roles,
            expect_elsewhere=expect_elsewhere, keep_an_owner=keep_an_owner,
        )

    async def renew(
        self,
        account: str,
        app_key: str,
        actor: Actor,
        *,
        keep_old: bool = True,
        delivery: str = "token",
        expect_roles: Sequence[str] | None = None,
        expect_elsewhere: Sequence[tuple[str, Sequence[str]]] | None = None,
    ) -> Issued | None:
        """New token; None if the key is missing; RenewalPending if one is pending,
        TokenLinkPending while the last token's link is unopened (both RenewalRefused);
        KeyChanged if ``expect_roles`` are no longer the key's roles."""
        delivery = checked_delivery(delivery)
        token = self.fmt.new_token()
        secret, link = (None, None)
        if delivery == "link":
            secret, link = self._link(app_key, account, token)
        record = await self.store.renew_token(
            account, app_key, self.hasher.digest(token), keep_old=keep_old, actor=actor,
            link=link, expect_roles=expect_roles, expect_elsewhere=expect_elsewhere,
        )
        if record is None:
            return None
        if link is None:
            return Issued(record, token=token)
        return Issued(record, link_secret=secret, link_expires=link.expires)

    async def end_renewal(
        self,
        account: str,
        app_key: str,
        *,
        finish: bool,
        actor: Actor,
        expect_roles: Sequence[str] | None = None,
        expect_elsewhere: Sequence[tuple[str, Sequence[str]]] | None = None,
    ) -> KeyRecord | None:
        """Finish (the old token stops) or undo (the new token is dropped) a pending
        renewal: the record after; None if the key is missing; NoRenewalPending when
        nothing is pending; KeyChanged as in :meth:`renew`."""
        return await self.store.end_renewal(
            account, app_key, finish=finish, actor=actor, expect_roles=expect_roles,
            expect_elsewhere=expect_elsewhere,
        )

    async def open_link(self, link_secret: str, request_id: str = "") -> OpenedLink | None:
        """The token behind a link, exactly once; None when used, expired or unknown."""
        if not is_link_secret(link_secret):
            return None
        value = await self.store.open_link(link_id(link_secret), request_id)
        if value is None:
            return None
        token = unseal_token(link_secret, value["sealed"], value["appKey"])
        if token is None:
            return None
        return OpenedLink(value["appKey"], value["account"], token)

    # -- external keys: grants of roles to other accounts' keys -------------------------
    def checked_grant(
        self, app_key: str, label: str | None, roles: Sequence[str], policy: Policy
    ) -> tuple[str | None, list[str]]:
        """The label (None for none) and roles of a new grant to ``app_key``, once it is
        found to be a key name of this deployment and both are found acceptable."""
        if not isinstance(app_key, str) or self.fmt.key_account(app_key) is None:
            raise BadInput("appKey", f"{str(app_key)[:80]!r} is not an API key", "bad_app_key")
        return (None if label is None else checked_label(label)), checked_roles(roles, policy)

    async def add_external(
        self,
        account: str,
        app_key: str,
        label: str | None,
        roles: Sequence[str],
        actor: Actor,
        *,
        policy: Policy,
    ) -> ExternalKey:
        """Grant ``roles`` in ``account`` to another account's key (``label``: this
        account's name for it, None for none). KeyNotFound when there is no such key,
        OwnKey when it belongs to ``account``, GrantExists when it holds a grant there
        already."""
        label, roles = self.checked_grant(app_key, label, roles, policy)
        return await self.store.add_grant(account, app_key, label or "", roles, actor)

    async def update_external(
        self,
        account: str,
        app_key: str,
        changes: Mapping[str, Any],
        actor: Actor,
        *,
        policy: Policy,
        expect_roles: Sequence[str] | None = None,
    ) -> ExternalKey | None:
        """Change a grant's label, roles or status (``changes``: at least one); None
        when ``account`` holds no grant to ``app_key``. KeyChanged if ``expect_roles``
        are no longer the grant's roles."""
        checked = checked_changes(changes, policy)
        return await self.store.update_grant(
            account, app_key, checked, actor, expect_roles=expect_roles
        )

    async def remove_external(
        self,
        account: str,
        app_key: str,
        actor: Actor,
        *,
        expect_roles: Sequence[str] | None = None,
    ) -> bool:
        """Remove a grant (the key lives on in its owner account); False when there is
        none. KeyChanged as in :meth:`update_external`."""
        return await self.store.remove_grant(account, app_key, actor, expect_roles=expect_roles)

    # -- account settings --------------------------------------------------------------
    async def put_setting(self, account: str, name: str, value: Any, actor: Actor) -> Any:
        """Set one of ``account``'s settings (see ACCOUNT_SETTINGS); the value as set."""
        value = checked_setting(name, value)
        await self.store.put_setting(account, name, value, actor)
        return value
