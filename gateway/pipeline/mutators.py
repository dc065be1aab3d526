"""Mutators: what an authorized request carries to its upstream, from its decision.

As in Oathkeeper, a mutator turns a decision into headers for the upstream. The proxy
port adds them to the forwarded request; the decision API returns them for the front
proxy to set (nginx ``auth_request_set``, Traefik ``authResponseHeaders``, Envoy
``allowed_upstream_headers``): the identity headers on every route, and a signed
identity token (Oathkeeper's ``id_token``) on the routes that ask for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from multidict import istr

from ..routes import Route
from .identity import Identity


class Mutator(Protocol):
    def headers(self, identity: Identity, route: Route) -> list[tuple[str, str]]:
        """Headers to set upstream for this identity, on this route."""
        ...


class IdentitySigner(Protocol):
    def identity_token(self, app_key: str, owner: str, account: str, roles: Sequence[str],
                       resource: str, action: str, audience: str | None = None) -> str: ...


class IdentityHeaders:
    """``{prefix}Key``, ``{prefix}Owner-Account``, ``{prefix}Account``, ``{prefix}Roles``
    (``X-Keygate-`` by default). Clients can never set them: every client-sent header
    with the prefix is dropped before these are added."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        # istr: multidict folds their case once, not in every copy aiohttp makes
        self.names = (
            istr(prefix + "Key"),
            istr(prefix + "Owner-Account"),
            istr(prefix + "Account"),
            istr(prefix + "Roles"),
        )

    def headers(self, identity: Identity, route: Route) -> list[tuple[str, str]]:
        key, owner, account, roles = self.names
        principal = identity.principal
        return [
            (key, principal.app_key),
            (owner, principal.owner),
            (account, identity.account),
            (roles, ",".join(identity.roles)),
        ]


class IdentityToken:
    """A short-lived JWT signed by keygate (``identity_token_ttl``, 60 s by default) in
    ``identity_token_header``, on routes with ``identity_token = true``: the key, its
    owner account, the target account, the roles, the resource and the action. An
    upstream verifies it against ``/.well-known/jwks.json`` and so need not trust the
    network between keygate and itself, as it must for the plain identity headers.
    Its audience is the route's ``identity_token_audience``, else the setting of that
    name, never the sessions' one, so an upstream cannot replay it to keygate as a
    session; a route's own audience also keeps one upstream from replaying it to
    another."""

    def __init__(self, header: str, signer: IdentitySigner):
        self.header = istr(header)
        self.signer = signer

    def headers(self, identity: Identity, route: Route) -> list[tuple[str, str]]:
        if not route.identity_token:
            return []
        principal = identity.principal
        token = self.signer.identity_token(
            principal.app_key, principal.owner, identity.account, identity.roles,
            identity.resource, identity.action, route.identity_token_audience)
        return [(self.header, token)]
