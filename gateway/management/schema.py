"""The management API's shapes: what each operation takes (path, query, body) and what
it answers, as msgspec models.

The operations table (:mod:`.operations`) validates every request with these models
before a handler runs, and :mod:`.openapi` writes the OpenAPI document from the same
models, so what is documented is what is enforced. A field's type says what it takes;
its ``Meta`` may add the error ``code`` and ``message`` of a refusal (without one the
code is ``bad_<field>``, ``bad_query`` for a query parameter). Checks that need state —
roles the policies define, who may assign them, a key's existence — stay in the
handlers, after these.

Response models describe the JSON views of :mod:`gateway.views` field by field, with
``additionalProperties: false``: a field a view adds without saying so here (a digest,
say) breaks the schema tests instead of reaching clients unnoticed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from ..export import FORMATS, SHEETS
from ..lifecycle import DELIVERIES, MAX_LABEL
from ..policy.explain import MAX_QUESTION_ROLES
from ..policy.sync import MAX_HELD_ACCOUNTS
from ..renewal import ALERTS, RENEWAL_PERIODS
from ..store import SORT_FIELDS, STATUSES

# -- field types -----------------------------------------------------------------------
Timestamp = Annotated[str, Meta(
    description="UTC, ISO 8601 with milliseconds (`2026-05-01T12:00:00.000Z`)",
    extra_json_schema={"format": "date-time"},
)]
Account = Annotated[str, Meta(
    pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$",
    description="An account name: a DNS label (lowercase letters, digits and '-').",
    extra={"message": "account must be an account name (lowercase letters, digits and "
                      "'-', at most 63 characters)"},
)]
AppKey = Annotated[str, Meta(
    min_length=1, max_length=200,
    description="An API key (`{prefix}-{account}-{random}`): its public name, not a secret.",
)]
RoleName = Annotated[str, Meta(
    pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
    description="A role the policy files define.",
)]
Roles = Annotated[list[RoleName], Meta(
    description="Role names as the policy files define them; duplicates are dropped.",
    extra={"message": "roles must be a list of role names"},
)]
# The server's check is Python's str.isprintable() (lifecycle.checked_label); the
# pattern says what a pattern can: not blank, no control characters.
Label = Annotated[str, Meta(
    min_length=1, max_length=MAX_LABEL,
    pattern=r"^ *[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f\u2028\u2029]*$",
    description=f"A name for people: printable, not blank, at most {MAX_LABEL} characters; "
                "leading and trailing spaces are removed.",
    extra={"message": f"label must be a non-empty string of at most {MAX_LABEL} printable "
                      "characters"},
)]
Status = Literal[STATUSES]
Delivery = Annotated[Literal[DELIVERIES], Meta(
    description="`token`: the answer carries the new token; `link`: a one-time link that "
                "reveals it (`tokenLink`).",
)]
RenewalAlert = Literal[ALERTS]
RenewalPeriod = Annotated[Literal[RENEWAL_PERIODS], Meta(
    description="Months after which a token's renewal reminder turns orange.",
    extra={"code": "bad_renewal_period"},
)]
# a query parameter that may not be given empty (gateway.management.operations)
REFUSE_EMPTY = {"empty_refused": True}
PolicyName = Annotated[str, Meta(
    pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$",
    description="A resource or action as the policy files write it, without `*`.",
)]
Order = Annotated[Literal["asc", "desc"], Meta(
    description="`asc` or `desc` (default `desc`: the newest, or the last in the "
                "alphabet, first)")]


PageNumber = Annotated[int, Meta(ge=1, le=1_000_000, description="1-based; default 1")]
MAX_PER_PAGE = 100
PerPage = Annotated[int, Meta(ge=1, le=MAX_PER_PAGE, description="default 20")]
Search = Annotated[str, Meta(max_length=200, description="matches the label or the API key, "
                                                         "ignoring case")]
Filter = Annotated[str, Meta(max_length=200, description="only those with this value")]
Sheet = Annotated[Literal[SHEETS], Meta(
    description="CSV only: which sheet (default generated); XLSX holds both")]
Cursor = Annotated[str, Meta(max_length=64, description="the `next` of the previous page")]


class Model(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """Every shape: camelCase on the wire, unknown fields refused (and documented as
    refused: ``additionalProperties: false``)."""


# -- the one error shape ---------------------------------------------------------------
class ErrorDetail(Model):
    """What went wrong. `code` is stable (programs may branch on it); `message` is for
    people and says what to do."""

    code: str
    message: str
    status: int
    request_id: str
    details: dict[str, Any] | UnsetType = UNSET


class Error(Model):
    """The one error shape of every refusal, on every port."""

    error: ErrorDetail


# -- path parameters -------------------------------------------------------------------
class AccountPath(Model):
    account: Account


class KeyPath(Model):
    account: Account
    app_key: AppKey


class LinkPath(Model):
    secret: Annotated[str, Meta(description="The secret part of a one-time token link.")]


# -- generated keys --------------------------------------------------------------------
class NewKey(Model):
    """A generated key to create."""

    label: Label
    roles: Roles
    delivery: Delivery = "token"


class Change(Model):
    """What to change: at least one of label, roles, status."""

    label: Label | UnsetType = UNSET
    roles: Roles | UnsetType = UNSET
    status: Status | UnsetType = UNSET


AtLeastOneChange = Annotated[Change, Meta(extra_json_schema={"minProperties": 1})]


class Renewal(Model):
    """How to renew: `later` keeps the old token working until finish-renewal; `now`
    replaces it at once."""

    delete_old: Annotated[Literal["later", "now"], Meta(extra={"code": "bad_delete_old"})] = (
        "later")
    delivery: Delivery = "token"


class KeyListQuery(Model, forbid_unknown_fields=False):
    q: Search = ""
    status: Annotated[Status, Meta(
        description="only the keys with this status (default: both)")] | UnsetType = UNSET
    role: Annotated[Filter, Meta(
        description="only the keys that hold this role in the account")] | UnsetType = UNSET
    renewal: Annotated[RenewalAlert, Meta(
        description="only the keys whose renewal reminder (`renewalAlert`) is at this level "
                    "now: `none` before `renewalPeriodMonths` (the account's setting) have "
                    "passed since `creationDateToken`, `orange` from then on, `red` from "
                    "three months later")] | UnsetType = UNSET
    sort: Annotated[Literal[tuple(SORT_FIELDS)], Meta(
        description="the field to sort by (default `creationDate`), then `appKey`; for "
                    "`lastUsed` a key never used comes as the oldest")] = "creationDate"
    order: Order = "desc"
    page: PageNumber = 1
    per_page: PerPage = 20


class Key(Model):
    """A generated key. Its token is never part of it."""

    app_key: str
    label: str
    roles: list[str]
    status: Status
    creation_date: Timestamp
    creation_date_token: Timestamp | None
    creation_date_new_token: Annotated[Timestamp | None, Meta(
        description="set while a renewal is pending: when the new token was issued")]
    renewal_alert: RenewalAlert
    last_used: Timestamp | None


class KeyIssued(Key):
    """A key with its new secret: `appToken`, or with `delivery: link` the one-time
    `tokenLink` and its expiry. This is the only answer that carries a token."""

    app_token: str | UnsetType = UNSET
    token_link: str | UnsetType = UNSET
    token_link_expires: Timestamp | UnsetType = UNSET


class GrantedIn(Model):
    account: str
    added_date: Timestamp


class KeyDetail(Key):
    """A generated key, with the accounts that granted it roles."""

    granted_in: list[GrantedIn]


class ListedKey(Key):
    """A generated key as the list shows it: with the date its renewal alert began."""

    renewal_alert_since: Annotated[Timestamp | None, Meta(
        description="when `renewalAlert` turned what it is now: `creationDateToken` plus "
                    "`renewalPeriodMonths` calendar months for `orange`, plus three more for "
                    "`red`; null for `none`")]


class KeyPage(Model):
    items: list[ListedKey]
    total: int
    page: int
    per_page: int


# -- external keys ---------------------------------------------------------------------
class NewExternalKey(Model):
    """A key of another account to grant roles in this one."""

    app_key: Annotated[AppKey, Meta(extra={"code": "bad_app_key"})]
    roles: Roles
    label: Label | UnsetType = UNSET


class ExternalKeyListQuery(Model, forbid_unknown_fields=False):
    q: Search = ""
    status: Annotated[Status, Meta(
        description="only the grants with this status here (default: both)")] | UnsetType \
        = UNSET
    role: Annotated[Filter, Meta(
        description="only the grants that include this role")] | UnsetType = UNSET
    sort: Annotated[Literal["addedDate", "label", "appKey", "account", "status"], Meta(
        description="the field to sort by (default `addedDate`, when the grant was made), "
                    "then `appKey`; `account` is the account that owns the key")] = "addedDate"
    order: Order = "desc"
    page: PageNumber = 1
    per_page: PerPage = 20


class ExternalKey(Model):
    """A grant of roles in this account to a key another account owns (`account`)."""

    app_key: str
    label: str
    roles: list[str]
    status: Status
    account: str
    added_date: Timestamp


class ExternalKeyPage(Model):
    items: list[ExternalKey]
    total: int
    page: int
    per_page: int


# -- export, settings, audit -----------------------------------------------------------
class ExportQuery(Model, forbid_unknown_fields=False):
    format: Annotated[Literal[FORMATS], Meta(
        description="`xlsx` (default): one workbook with the sheets `generated` and "
                    "`external`; `csv`: one sheet (`sheet`)")] = "xlsx"
    sheet: Sheet | UnsetType = UNSET


class AccountSettings(Model):
    renewal_period_months: RenewalPeriod


class AuditQuery(Model, forbid_unknown_fields=False):
    action: Filter | UnsetType = UNSET
    actor: Annotated[Filter, Meta(description="the acting API key")] | UnsetType = UNSET
    target: Filter | UnsetType = UNSET
    limit: Annotated[int, Meta(ge=1, le=500, description="default 50")] = 50
    cursor: Cursor | UnsetType = UNSET


class AuditEvent(Model):
    """A change, or a sampled access denial. `before`/`after` hold what changed; never a
    token or a digest."""

    id: str
    time: Timestamp
    account: str
    actor: str
    action: str
    target: str
    request_id: str
    before: dict[str, Any]
    after: dict[str, Any]


class AuditPage(Model):
    items: list[AuditEvent]
    next: Annotated[str | None, Meta(description="pass it as `cursor` for the next page")]


# -- explain ---------------------------------------------------------------------------
class ExplainQuery(Model):
    """A decision to explain: `role` (repeat it) or `key`, one of them. None may be
    given empty: `key=` is not "no key" (the answer would be about other roles)."""

    resource: Annotated[PolicyName, Meta(extra=REFUSE_EMPTY)]
    action: Annotated[PolicyName, Meta(extra=REFUSE_EMPTY)]
    role: Annotated[list[RoleName], Meta(
        max_length=MAX_QUESTION_ROLES, extra=REFUSE_EMPTY,
        description="a role the caller would hold in the account; repeat it for several "
                    f"(at most {MAX_QUESTION_ROLES}). Give `role` or `key`, not both")] = []
    key: Annotated[AppKey, Meta(extra={"code": "bad_app_key", **REFUSE_EMPTY})] | UnsetType \
        = UNSET


class MatchedLine(Model):
    """A policy line (`file`:`line`) that applies, and how the roles reach it (`via`)."""

    file: str
    line: int
    role: str
    account: str
    resource: str
    action: str
    effect: Literal["allow", "deny"]
    via: list[str]


class ExplainedKey(Model):
    app_key: str
    status: Status
    kind: Literal["generated", "external"]


class Assignment(Model):
    """For a `role:NAME`/`assign` question: whether the roles may hand the role out."""

    allowed: bool
    how: Literal["denied", "assign-line", "holds-permissions", "lacks-permission", "no-edit"]
    reason: str
    decided_by: list[MatchedLine]


class Explanation(Model):
    allowed: bool
    account: str
    resource: str
    action: str
    roles: list[str]
    decided_by: list[MatchedLine]
    matched: list[MatchedLine]
    unknown_roles: list[str]
    reason: str
    policy_version: str
    key: ExplainedKey | UnsetType = UNSET
    assignment: Assignment | UnsetType = UNSET


# -- policy reload ---------------------------------------------------------------------
class PolicyReload(Model):
    """`force`: reload even if roles that keys still hold would disappear."""

    force: bool = False


class PolicyReloaded(Model):
    version: str
    previous: str
    lines: int
    announced: bool
    forced: bool


class RolesStillHeldDetails(Model):
    """The `details` of a 409 `roles_still_held`: the roles the new files no longer
    define, and who still holds them."""

    held: Annotated[dict[str, dict[str, int]], Meta(
        description="account → removed role → the number of keys that hold it there (at "
                    f"most {MAX_HELD_ACCOUNTS} accounts: see `truncated`)")]
    roles: Annotated[list[str], Meta(description="the roles the new files no longer define")]
    accounts: Annotated[int, Meta(ge=1, description="the accounts where keys hold them, all "
                                                    "of them")]
    keys: Annotated[int, Meta(ge=1, description="the keys that hold them, in all those "
                                                "accounts")]
    truncated: Annotated[bool, Meta(description="`held` names only some of the accounts")]


# -- one-time links --------------------------------------------------------------------
class LinkStatus(Model):
    status: Literal["unopened"]
    message: str


class OpenedLink(Model):
    app_key: str
    app_token: str


# -- health ----------------------------------------------------------------------------
class Health(Model):
    status: Literal["ok"]


class RefusedReload(Model):
    """The last reload this instance refused since its policy was loaded: why (its
    code; the log, and the answer to a `POST /policy/reload`, say it in full), when,
    and the version its files gave (null: they did not load)."""

    code: Literal["policy_invalid", "roles_still_held", "store_unavailable"]
    at: Timestamp
    version: str | None


class PolicyStatus(Model):
    """`version`: the policy in force; `announced`: the deployment's last (null until
    read); `inSync`: they are the same (or none is known); `lastRefused`: set while
    this instance's files were refused (a broken file, roles still held) and it serves
    the policy it had, null once a reload succeeds."""

    version: str
    announced: str | None
    in_sync: bool
    loaded_at: Timestamp | None
    last_refused: RefusedReload | None


class StoreLayoutStatus(Model):
    """The store's layout version (null: none recorded, a store from before versions)
    and this keygate's; `migrated`: the store's is this keygate's (else `keygate store
    migrate` has work to do)."""

    store: int | None
    keygate: int
    migrated: bool


class Readiness(Model):
    status: Literal["ready"]
    pid: Annotated[int, Meta(description="the process that answered (one of --workers')")]
    policy_version: str
    policy: PolicyStatus
    credential_cache: Literal["trusted", "bypassed"]
    store_layout: StoreLayoutStatus


# -- sessions --------------------------------------------------------------------------
Credential = Annotated[str, Meta(min_length=1, extra={"code": "bad_credentials_field"})]


class Login(Model):
    """A key and its token, to trade for a session token. `cookie`: set the session
    cookie (HttpOnly, SameSite=Strict) instead of returning the token in the body."""

    app_key: Credential
    app_token: Credential
    cookie: Annotated[bool, Meta(extra={"code": "bad_cookie_field"})] = False


class Session(Model):
    """A session token (a JWT) for `Authorization: Bearer`, good until `expires`, and
    no longer than the key and the token it came from. With `cookie: true` the session
    is in the HttpOnly cookie alone: the answer has no `token`."""

    expires: Timestamp
    app_key: str
    account: str
    token: str | UnsetType = UNSET  # last: a field with a default follows the others


class Jwk(Model):
    """A public key that verifies keygate's session and identity tokens (RFC 7517)."""

    kty: Literal["EC", "OKP"]
    crv: Literal["P-256", "Ed25519"]
    x: str
    kid: str
    alg: Literal["ES256", "EdDSA"]
    use: Literal["sig"]
    y: str | UnsetType = UNSET


class Jwks(Model):
    """The current signing key first, then those still verifying tokens they signed."""

    keys: list[Jwk]


# -- examples (in the OpenAPI document; tests/test_openapi.py checks them against their
# schemas and sends the key creation's to a real keygate) ----------------------------
EXAMPLE_KEY = "kgk-acme-GR45MM281Q"
EXAMPLE_TOKEN = "kgt_D1D51d3Mtdy0eBZe1rtzEFJcLkX0Yn4eLhzT"  # noqa: S105 (an example)
EXAMPLE_CREATED = "2026-12-02T14:38:21.878Z"

LOGIN_EXAMPLES: dict[str | int, dict[str, Any]] = {
    "body": {
        "bearer": {"appKey": EXAMPLE_KEY, "appToken": EXAMPLE_TOKEN},
        "cookie": {"appKey": EXAMPLE_KEY, "appToken": EXAMPLE_TOKEN, "cookie": True},
    },
}

_NEW_KEY = {"label": "billing service", "roles": ["orders-reader"]}
_ISSUED = {"appKey": EXAMPLE_KEY, "label": "billing service", "roles": ["orders-reader"],
           "status": "active", "creationDate": EXAMPLE_CREATED,
           "creationDateToken": EXAMPLE_CREATED, "creationDateNewToken": None,
           "renewalAlert": "none", "lastUsed": None}
NEW_KEY_EXAMPLES: dict[str | int, dict[str, Any]] = {
    "body": {"token": _NEW_KEY, "link": {**_NEW_KEY, "delivery": "link"}},
    201: {
        "token": {**_ISSUED, "appToken": EXAMPLE_TOKEN},
        "link": {**_ISSUED,
                 "tokenLink": "https://keys.example.com/api/v1/token-links/"
                              "Xw3kZq9Lr2Vb7Nc5Tf1Hy8Jm4Pd6Sg0Ua-Ke_Wi3Ro2",
                 "tokenLinkExpires": "2026-12-03T14:38:21.878Z"},
    },
}

POLICY_RELOAD_EXAMPLES: dict[str | int, dict[str, Any]] = {
    "body": {"reload": {}, "force": {"force": True}},
    200: {"reloaded": {"version": "5f0c2a9e41d3b7c8", "previous": "9a1e7d44c02b6f35",
                       "lines": 42, "announced": True, "forced": False}},
}
