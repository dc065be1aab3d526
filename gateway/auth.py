"""Authenticate a request to a Principal, then authorize it in the target account.

The pipeline, as in Ory Oathkeeper: each authenticator either says "not mine" (None:
the request carries no credentials it understands) or returns a principal, or fails
with 401 because the credentials it understands are wrong. When every authenticator
says "not mine" the request had no credentials at all.

What the client learns is deliberately little:

* An unknown key, a wrong token, a malformed key and a token with a bad checksum all get
  the *same* 401 body, so the gateway is no oracle for which keys exist. The unknown key
  still pays for an HMAC comparison against a dummy digest.
* Only after the token is proven does keygate say more (inactive key → 401 saying so,
  missing/inactive grant or no roles → 403), because then the caller holds the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, NamedTuple, Protocol

from multidict import istr

from .cache import LRU
from .credentials import CredentialFormat, TokenHasher
from .errors import BadRequest, Forbidden, TooManyRequests, Unauthorized
from .policy import Policy
from .ratelimit import AuthFailureLimiter
from .store import ACTIVE, Grant, Store

if TYPE_CHECKING:
    from .series import PipelineMetrics


class InvalidCredentials(Unauthorized):
    """An unknown key or a wrong token: one answer for both, so keygate is no oracle for
    which keys exist. ``wrong_token_for`` (the key, when it exists and the token did not
    match) is for the failure budgets only and never reaches the client."""

    code = "invalid_credentials"
    message = "invalid API credentials: the key is unknown or the token does not match it"

    def __init__(self, wrong_token_for: str | None = None) -> None:
        super().__init__()
        self.wrong_token_for = wrong_token_for


def invalid_credentials(wrong_token_for: str | None = None) -> InvalidCredentials:
    """A fresh instance per raise, since a shared exception object would collect every
    request's traceback (and headers) forever."""
    return InvalidCredentials(wrong_token_for)


# NamedTuples rather than frozen dataclasses: built on every request, and a frozen
# dataclass pays an object.__setattr__ per field.
class Principal(NamedTuple):
    """Who is calling: an API key and the account that owns it."""

    app_key: str
    owner: str


class Authenticated(NamedTuple):
    principal: Principal
    account: str
    grant: Grant | None


class Identity(NamedTuple):
    """A principal authorized in a target account with these roles (``action``: the
    action it was authorized for, when it was asked for one of several)."""

    principal: Principal
    account: str
    roles: tuple[str, ...]
    action: str = ""


class Authenticator(Protocol):
    async def authenticate(
        self, headers: Mapping[str, str], account: str
    ) -> Authenticated | None: ...


class HeaderAuthenticator:
    """``X-API-AppKey`` + ``X-API-AppToken`` (names are settings)."""

    def __init__(
        self,
        store: Store,
        hasher: TokenHasher,
        fmt: CredentialFormat,
        key_header: str,
        token_header: str,
        max_length: int,
    ):
        self.store = store
        self.hasher = hasher
        self.fmt = fmt
        self.key_header = istr(key_header)  # looked up on every request; istr: folded once
        self.token_header = istr(token_header)
        self.max_length = max_length

    def _read(self, headers: Mapping[str, str], name: str) -> str | None:
        value = headers.get(name)
        if value is None:
            return None
        if len(value) > self.max_length or not value.isascii() or not value.isprintable():
            raise BadRequest(
                f"the {name} header is longer than {self.max_length} characters or not "
                "printable ASCII",
                code="malformed_credentials",
            )
        return value.strip()

    async def authenticate(self, headers: Mapping[str, str], account: str) -> Authenticated | None:
        app_key = self._read(headers, self.key_header)
        token = self._read(headers, self.token_header)
        if app_key is None and token is None:
            return None
        if not app_key or not token:
            raise Unauthorized(
                f"send both {self.key_header} and {self.token_header}",
                code="incomplete_credentials",
            )
        found = self.store.cached_lookup(app_key, account)
        if found is None:
            # Only a lookup that would reach the store needs the format checks: they keep
            # garbage from costing a round trip. On a cache hit the HMAC comparison below
            # refuses a malformed token all the same, with the same answer.
            if self.fmt.key_account(app_key) is None or not self.fmt.token_well_formed(token):
                raise invalid_credentials()
            found = await self.store.auth_lookup(app_key, account)
        matched = self.hasher.matches(token, found.token_digests)  # unknown keys pay it too
        if not found.exists:
            raise invalid_credentials()
        if not matched:
            raise invalid_credentials(wrong_token_for=app_key)
        if found.status != ACTIVE:
            raise Unauthorized(
                "this API key is inactive; its owner account can activate it",
                code="key_inactive",
            )
        assert found.owner is not None
        return Authenticated(Principal(app_key, found.owner), account, found.grant)


class Observer(Protocol):
    """Told about outcomes; must not block (the request path calls it)."""

    def authenticated(self, principal: Principal) -> None: ...

    def denied(
        self, principal: Principal, account: str, resource: str, action: str, reason: str,
        request_id: str,
    ) -> None: ...


class Gatekeeper:
    """authenticate → resolve grant → authorize, shared by the proxy and the management API."""

    def __init__(
        self,
        authenticators: Sequence[Authenticator],
        policy: Policy,
        observer: Observer | None = None,
        decision_cache_size: int = 100_000,
        limiter: AuthFailureLimiter | None = None,
        metrics: PipelineMetrics | None = None,
    ):
        self.authenticators = tuple(authenticators)
        self.policy = policy
        self.observer = observer
        self.limiter = limiter
        # stage timings and decision-cache counts; None (metrics off): nothing is timed
        self.metrics = metrics
        self._decisions: LRU[tuple[str, tuple[str, ...], str, str, str], bool] = LRU(
            decision_cache_size
        )

    def decide(self, roles: Sequence[str], account: str, resource: str, action: str) -> bool:
        """The policy's decision, cached under everything it depends on.

        The key holds the policy version, so swapping in a reloaded policy makes every
        cached decision of the old one unreachable (they age out of the LRU); leaving an
        element out of the key is the Oathkeeper CVE-2021-32701 class of bug.
        """
        policy = self.policy
        key = (policy.version, tuple(sorted(roles)), account, resource, action)
        decisions = self._decisions
        allowed = decisions.get(key)
        metrics = self.metrics
        if allowed is None:
            allowed = policy.decide(roles, account, resource, action)
            if metrics is not None:
                metrics.decision_miss()
                if len(decisions) >= decisions.size:
                    metrics.decision_evicted()  # the put below drops the oldest decision
            decisions.put(key, allowed)
        elif metrics is not None:
            metrics.decision_hit()
        return allowed

    async def check(
        self,
        headers: Mapping[str, str],
        account: str,
        resource: str,
        action: str | tuple[str, ...],
        request_id: str = "",
        client: str = "",
    ) -> Identity:
        """Authenticate, resolve the grant, authorize. ``client`` is the client's
        address as keygate trusts it (see ``trusted_proxies``), for the failure budgets.
        Several actions: the first one the roles allow (a denial names the first)."""
        limiter = self.limiter
        if limiter is not None:
            wait = limiter.address_blocked(client)
            if wait is not None:
                raise TooManyRequests(wait)
        authenticated = None
        metrics = self.metrics
        started = perf_counter() if metrics is not None else 0.0
        try:
            try:
                for authenticator in self.authenticators:
                    authenticated = await authenticator.authenticate(headers, account)
                    if authenticated is not None:
                        break
            finally:  # failures too: a slow store shows here first
                if metrics is not None:
                    metrics.authentication.observe(perf_counter() - started)
        except InvalidCredentials as failure:
            if limiter is not None:
                wait = await limiter.failed(client, failure.wrong_token_for)
                if wait is not None:
                    raise TooManyRequests(wait) from None
            raise
        if authenticated is None:
            raise Unauthorized(
                "no API credentials: send the API key and token headers",
                code="missing_credentials",
            )
        if self.observer is not None:
            self.observer.authenticated(authenticated.principal)
        if metrics is not None:
            started = perf_counter()
        try:
            try:
                return self.authorize(authenticated, resource, action)
            finally:
                if metrics is not None:
                    metrics.authorization.observe(perf_counter() - started)
        except Forbidden as refusal:
            if self.observer is not None:
                self.observer.denied(
                    authenticated.principal, account, resource,
                    action if isinstance(action, str) else action[0], refusal.code, request_id,
                )
            raise

    def authorize(
        self, auth: Authenticated, resource: str, action: str | tuple[str, ...]
    ) -> Identity:
        grant, account = auth.grant, auth.account
        if grant is None:
            raise Forbidden(
                f"this API key has no access to account {account!r}", code="no_grant"
            )
        if grant.status != ACTIVE:
            raise Forbidden(
                f"this API key's access to account {account!r} is inactive", code="grant_inactive"
            )
        if not grant.roles:
            raise Forbidden(f"this API key holds no roles in account {account!r}", code="no_roles")
        if isinstance(action, str):
            if self.decide(grant.roles, account, resource, action):
                return Identity(auth.principal, account, grant.roles, action)
        else:
            for candidate in action:
                if self.decide(grant.roles, account, resource, candidate):
                    return Identity(auth.principal, account, grant.roles, candidate)
        wanted = repr(action) if isinstance(action, str) else " or ".join(map(repr, action))
        raise Forbidden(
            f"the roles of this API key do not allow {wanted} on {resource!r} "
            f"in account {account!r}",
            code="not_permitted",
        )
