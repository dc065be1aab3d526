"""What every management handler needs: the caller's identity, JSON out, the checks
of an input that need state (roles the policies define)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import hdrs, web
from multidict import MultiMapping

from ..accesslog import APP_KEY, CLIENT
from ..context import GATEWAY
from ..credentials import is_valid_account
from ..errors import BadRequest, Conflict, Forbidden
from ..forwarded import client_over_tls
from ..lifecycle import Issued
from ..middleware import request_id_of
from ..pipeline import Identity
from ..pipeline.authenticators import credentials_over_tls
from ..renewal import DEFAULT_RENEWAL_PERIOD
from ..store import Actor, KeyChanged, LastOwnerKey
from ..views import iso
from .operations import Permission

RESOURCE = "api-keys"
# Every (resource, action) the management API checks, besides ("role:NAME", "assign")
# for handing out a role: what a policy line may name without any route using it.
POLICY_RESOURCE = "policy"
MANAGEMENT_PERMISSIONS: tuple[tuple[str, str], ...] = (
    (RESOURCE, "view"),
    (RESOURCE, "edit"),
    (RESOURCE, "renew-token"),
    (RESOURCE, "edit-settings"),
    (POLICY_RESOURCE, "reload"),
)

VIEW = Permission(RESOURCE, ("view",))
EDIT = Permission(RESOURCE, ("edit",))
RENEW_TOKEN = Permission(RESOURCE, ("renew-token",))
EDIT_SETTINGS = Permission(RESOURCE, ("edit-settings",))
# "Renew API token" lets its holder view and renew generated keys' tokens (as in the
# system keygate reproduces): a key with renew-token but not view sees the keys whose
# roles here it may assign (gateway.escalation), and its own. The list does not judge
# the roles other accounts granted a key: such a key may be listed, yet reading or
# renewing it is refused (escalation_refused).
VIEW_OR_RENEW = Permission(RESOURCE, ("view", "renew-token"))
# The policy is the deployment's, not an account's: asked in the caller's own account.
RELOAD_POLICY = Permission(POLICY_RESOURCE, ("reload",), own_account=True)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def strong_etag(body: bytes) -> str:
    """An ETag for ``body``: its SHA-256, quoted (the same bytes, the same tag)."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def cached_response(request: web.Request, body: bytes, etag: str, max_age: int) -> web.Response:
    """``body`` as JSON, cacheable publicly for ``max_age`` seconds, with its ETag; a
    304 without it when ``If-None-Match`` names that tag or ``*`` (RFC 9110 13.1.2: the
    weak comparison, so ``W/"…"`` matches too). HEAD sends the same headers, no body."""
    headers = {"ETag": etag, "Cache-Control": f"public, max-age={max_age}"}
    wanted = {tag.strip().removeprefix("W/")
              for tag in ",".join(request.headers.getall("If-None-Match", ())).split(",")}
    if "*" in wanted or etag in wanted:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="application/json", headers=headers)


def client_address(request: web.Request) -> str:
    """The client's address as keygate trusts it: the peer, or behind trusted proxies
    the first untrusted address of X-Forwarded-For (see gateway.forwarded)."""
    peer = request.remote or ""
    proxies = request.app[GATEWAY].trusted_proxies
    if proxies is None:
        return peer
    client, _ = proxies.client_address(peer, request.headers.getall("X-Forwarded-For", ()))
    request[CLIENT] = client
    return client


# what reached_over_tls and credential_headers found, once per request (the CSRF check,
# authorization and sign-out each ask)
_OVER_TLS = web.RequestKey("over_tls", bool)
_CREDENTIAL_HEADERS = web.RequestKey("credential_headers", object)


def reached_over_tls(request: web.Request) -> bool:
    """Whether the client reached keygate over TLS (directly, or through a trusted proxy
    that says so: :func:`gateway.forwarded.client_over_tls`): login then names the
    session cookie ``__Host-`` and marks it Secure, and only that name is read."""
    known = request.get(_OVER_TLS)
    if known is None:
        proxies = request.app[GATEWAY].trusted_proxies
        known = request[_OVER_TLS] = client_over_tls(
            request.headers, secure=request.secure,
            trusted_peer=proxies is not None and proxies.trusts(request.remote or ""))
    return known


def credential_headers(request: web.Request) -> MultiMapping[str]:
    """The request's headers as its credentials are read from them: over TLS without
    the session cookie's plain name, as on every port
    (:func:`~gateway.pipeline.authenticators.credentials_over_tls`); without TLS the
    plain name is the only one."""
    known = request.get(_CREDENTIAL_HEADERS)
    if known is not None:
        return known  # type: ignore[return-value]
    headers: MultiMapping[str] = request.headers
    name = request.app[GATEWAY].settings.session_cookie
    if name and hdrs.COOKIE in headers and reached_over_tls(request):
        headers = credentials_over_tls(headers, name)
    request[_CREDENTIAL_HEADERS] = headers
    return headers


async def authorize(
    request: web.Request, permission: Permission, account: str | None
) -> Identity:
    """Authenticate like the proxy and authorize ``permission`` (several actions: the
    first the caller's roles allow, in ``identity.action``): in ``account`` (the path's),
    or for a permission asked in the caller's own account, in the account that owns the
    key (written in the key itself, confirmed by the store)."""
    gateway = request.app[GATEWAY]
    if permission.own_account:
        account = _own_account(request)
        if account == NO_ACCOUNT:
            # no key header: a session (Bearer or cookie) names its key's owner once it
            # is proven, so prove it first (the same checks and failure budgets)
            authenticated = await gateway.pipeline.authenticate(
                credential_headers(request), NO_ACCOUNT, client_address(request))
            account = authenticated.principal.owner
    elif account is None or not is_valid_account(account):
        # the path model's pattern says the same; Python's "$" also matches before a
        # final newline, so the exact check is made here
        raise BadRequest("account must be an account name (lowercase letters, digits and "
                         "'-', at most 63 characters)", code="bad_account")
    actions = permission.actions[0] if len(permission.actions) == 1 else permission.actions
    identity = await gateway.pipeline.check(
        credential_headers(request), account, permission.resource, actions, request_id_of(request),
        client_address(request),
    )
    request[APP_KEY] = identity.principal.app_key
    if permission.own_account and identity.principal.owner != identity.account:
        raise Forbidden(
            f"{permission.resource!r}/{actions!r} is asked in the account that owns the key",
            code="not_permitted",
        )
    return identity


# Stands for the account of a key header that names none: the pipeline then gives its
# usual answer to a malformed or missing key (401), as for any other request.
NO_ACCOUNT = "-"


def _own_account(request: web.Request) -> str:
    gateway = request.app[GATEWAY]
    app_key = request.headers.get(gateway.settings.key_header, "").strip()
    short_enough = len(app_key) <= gateway.settings.max_credential_length
    return (gateway.fmt.key_account(app_key) if short_enough else None) or NO_ACCOUNT


def actor(request: web.Request, identity: Identity) -> Actor:
    return Actor(identity.principal.app_key, request_id_of(request))


async def renewal_period(request: web.Request, account: str) -> int:
    settings = await request.app[GATEWAY].store.get_settings(account)
    return int(settings.get("renewalPeriodMonths", DEFAULT_RENEWAL_PERIOD))


def secret_fields(request: web.Request, issued: Issued) -> dict[str, Any]:
    """The new token, or the one-time link that reveals it, for a response body."""
    if issued.token is not None:
        return {"appToken": issued.token}
    gateway = request.app[GATEWAY]
    base = gateway.settings.management_public_url.rstrip("/")
    if not base:
        # where the caller reached the port: behind trusted proxies, the scheme and host
        # they say (the client's https, not the proxy's plain hop to keygate), as the
        # session cookie's Secure flag and the CSRF check take them
        scheme, host = request.scheme, request.host
        if gateway.trusted_proxies is not None:
            forwarding = gateway.trusted_proxies.forwarding(
                request.remote or "", request.headers, scheme, host)
            scheme, host = forwarding.proto, forwarding.host
        base = f"{scheme}://{host}"
    return {
        "tokenLink": f"{base}/api/v1/token-links/{issued.link_secret}",
        "tokenLinkExpires": iso(issued.link_expires),
    }


@contextlib.contextmanager
def store_refusals(app_key: str, account: str) -> Iterator[None]:
    """The store's refusals of a guarded change, as 409s that say what to do."""
    try:
        yield
    except KeyChanged:
        raise Conflict(
            f"the roles of API key {app_key!r} changed while this request was being "
            "checked; read the key again and retry",
            code="key_changed",
        ) from None
    except LastOwnerKey:
        raise Conflict(
            f"API key {app_key!r} is the last active owner key of account {account!r}; "
            "create or activate another owner key first (the keygate CLI, which works on "
            "the store directly, can still change it)",
            code="last_owner_key",
        ) from None
