"""The decision pipeline: one call decides for every front door.

::

    RequestFacts ─► route ─► authenticate ─► grant ─► authorize ─► mutate ─► Decision
                  routes.py  authenticators  grants    authorizer   mutators

As in Ory Oathkeeper, the stages are files and the kinds are interfaces: an
authenticator (key/token headers; a Bearer JWT one plugs in beside it), the grant
resolution, an :class:`~gateway.pipeline.authorizer.Authorizer` (Casbin behind it), and
mutators that turn a decision into what the upstream receives (identity headers; a
signed identity token plugs in beside them). :meth:`Pipeline.decide` is the one call:

* the proxy port gives it the request's facts, forwards when it allows, and adds the
  mutators' headers;
* the decision API (nginx ``auth_request``, Traefik ForwardAuth, Envoy ``ext_authz``)
  gives it the original request's facts as the front proxy reports them, and answers
  200 with the mutators' headers, or the refusal;
* the management API gives it an explicit :class:`Target` (its account, ``api-keys``,
  the action a handler needs) instead of a route: :meth:`Pipeline.check`.

A routed write that only keygate's session cookie authenticated must also prove that a
page of its own origin sent it (csrf.py; the management API's middleware applies the
same rule to its own port).

A refusal is returned, not raised, inside the :class:`Decision` (with how far the
request got: its route, if any), so that every front door can log and count it before
answering it in the one error shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, NamedTuple, Protocol

from ..errors import Forbidden, GatewayError, TooManyRequests
from ..ratelimit import AuthFailureLimiter, attempt
from ..routes import Routed, RouteTable
from .authenticators import AUTHORIZATION, Authenticator, InvalidCredentials, NoCredentials
from .authorizer import Authorizer
from .csrf import forged_request
from .grants import granted_roles
from .identity import Authenticated, Identity, Principal
from .mutators import Mutator

if TYPE_CHECKING:
    from ..series import PipelineMetrics

__all__ = [
    "Authenticated", "Decision", "Identity", "Observer", "Pipeline", "Principal",
    "RequestFacts", "Target",
]


class RequestFacts(NamedTuple):
    """What a front door knows of the request to decide: as the client sent it (the
    proxy port) or as a front proxy reports it (the decision API). ``client`` is the
    client's address as keygate trusts it (``trusted_proxies``)."""

    method: str
    host: str
    raw_path: str
    query: str
    headers: Mapping[str, str]
    client: str = ""
    request_id: str = ""


class Target(NamedTuple):
    """What is asked, when the caller knows it without a route (the management API).
    Several actions: the first one the roles allow."""

    account: str
    resource: str
    action: str | tuple[str, ...]


class Decision(NamedTuple):
    """The outcome: ``identity`` and the ``headers`` to set upstream when allowed,
    ``refusal`` (a :class:`~gateway.errors.GatewayError`) when not; ``routed`` says how
    far routing got (None with a :class:`Target`, or when no route matched)."""

    routed: Routed | None
    identity: Identity | None
    headers: list[tuple[str, str]]
    refusal: GatewayError | None

    @property
    def allowed(self) -> bool:
        return self.refusal is None


class Observer(Protocol):
    """Told about outcomes; must not block (the request path calls it)."""

    def authenticated(self, principal: Principal) -> None: ...

    def denied(
        self, principal: Principal, account: str, resource: str, action: str, reason: str,
        request_id: str,
    ) -> None: ...


_NO_HEADERS: list[tuple[str, str]] = []


class Pipeline:
    def __init__(
        self,
        routes: RouteTable,
        authenticators: Sequence[Authenticator],
        authorizer: Authorizer,
        mutators: Sequence[Mutator] = (),
        observer: Observer | None = None,
        limiter: AuthFailureLimiter | None = None,
        metrics: PipelineMetrics | None = None,
    ):
        self.routes = routes
        self.authenticators = tuple(authenticators)
        self.authorizer = authorizer
        self.mutators = tuple(mutators)
        self.observer = observer
        self.limiter = limiter
        # stage timings; None (metrics off): nothing is timed
        self.metrics = metrics

    async def decide(self, facts: RequestFacts, target: Target | None = None) -> Decision:
        """Route (unless ``target`` says what is asked), authenticate, resolve the
        grant, authorize, mutate. Never raises a refusal: it is in the decision."""
        routed = None
        try:
            if target is None:
                routed = self.routes.resolve_request(facts.method, facts.host, facts.raw_path)
                account, resource, action = routed.account, routed.route.resource, routed.action
            else:
                account, resource, action = target
            identity = await self._identify(facts, account, resource, action)
        except GatewayError as refusal:
            return Decision(routed, None, _NO_HEADERS, refusal)
        if routed is None or not self.mutators:
            return Decision(routed, identity, _NO_HEADERS, None)
        headers: list[tuple[str, str]] = []
        for mutator in self.mutators:
            headers += mutator.headers(identity, routed.route)
        return Decision(routed, identity, headers, None)

    async def check(
        self,
        headers: Mapping[str, str],
        account: str,
        resource: str,
        action: str | tuple[str, ...],
        request_id: str = "",
        client: str = "",
    ) -> Identity:
        """:meth:`decide` for an explicit target: the identity, or the refusal raised."""
        facts = RequestFacts("", "", "", "", headers, client, request_id)
        decision = await self.decide(facts, Target(account, resource, action))
        if decision.refusal is not None:
            raise decision.refusal
        assert decision.identity is not None
        return decision.identity

    async def authenticate(
        self, headers: Mapping[str, str], account: str, client: str = ""
    ) -> Authenticated:
        """Who the credentials in ``headers`` prove, for ``account``, under the same
        failure budgets as every request (a login: no authorization follows)."""
        facts = RequestFacts("", "", "", "", headers, client)
        return await self._authenticated(facts, account)

    async def _authenticated(self, facts: RequestFacts, account: str) -> Authenticated:
        # the failure budgets bound what fails inside (ratelimit.py explains how, and
        # why a request whose credentials are in the local cache pays no round trip)
        budgeted = attempt(self.limiter, facts.client)
        if not budgeted.take_turn_now():  # (no coroutine when no other check is under way)
            await budgeted.wait_turn()
        try:
            metrics = self.metrics
            started = perf_counter() if metrics is not None else 0.0
            authenticated = None
            try:
                try:
                    for authenticator in self.authenticators:
                        authenticated = await authenticator.authenticate(facts.headers,
                                                                         account)
                        if authenticated is not None:
                            break
                finally:  # failures too: a slow store shows here first
                    if metrics is not None:
                        metrics.authentication.observe(perf_counter() - started)
            except InvalidCredentials as failure:
                wait = await budgeted.failed(failure.wrong_token_for)
                if wait is not None:
                    raise TooManyRequests(wait) from None
                raise
        finally:
            budgeted.end_turn()
        if authenticated is None:
            raise NoCredentials()
        if authenticated.carrier == "bearer" or AUTHORIZATION in facts.headers and any(
                a.keygate_bearer(facts.headers) for a in self.authenticators):
            authenticated = Authenticated(authenticated.principal, authenticated.account,
                                          authenticated.grant, authenticated.carrier,
                                          keygate_bearer=True)
        if self.observer is not None:
            self.observer.authenticated(authenticated.principal)
        return authenticated

    async def _identify(
        self, facts: RequestFacts, account: str, resource: str, action: str | tuple[str, ...]
    ) -> Identity:
        authenticated = await self._authenticated(facts, account)
        try:
            return await self._authorized(facts, authenticated, account, resource, action)
        except GatewayError as refusal:  # refused once proven: the log says whose key
            refusal.app_key = authenticated.principal.app_key
            raise

    async def _authorized(
        self, facts: RequestFacts, authenticated: Authenticated, account: str, resource: str,
        action: str | tuple[str, ...],
    ) -> Identity:
        if authenticated.carrier == "cookie" and facts.method:  # a routed request
            forgery = forged_request(facts.method, facts.headers, facts.host)
            if forgery is not None:
                raise forgery
        metrics = self.metrics
        started = perf_counter() if metrics is not None else 0.0
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
                    action if isinstance(action, str) else action[0], refusal.code,
                    facts.request_id,
                )
            raise

    def authorize(
        self, auth: Authenticated, resource: str, action: str | tuple[str, ...]
    ) -> Identity:
        """Grant, then authorizer: 403 unless the granted roles allow the action."""
        roles = granted_roles(auth)
        decide, account = self.authorizer.decide, auth.account
        if isinstance(action, str):
            if decide(roles, account, resource, action):
                return Identity(auth.principal, account, roles, action, resource, auth.carrier,
                                auth.keygate_bearer)
        else:
            for candidate in action:
                if decide(roles, account, resource, candidate):
                    return Identity(auth.principal, account, roles, candidate, resource,
                                    auth.carrier, auth.keygate_bearer)
        wanted = repr(action) if isinstance(action, str) else " or ".join(map(repr, action))
        raise Forbidden(
            f"the roles of this API key do not allow {wanted} on {resource!r} "
            f"in account {account!r}",
            code="not_permitted",
        )
