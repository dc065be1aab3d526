"""Mutators: what an authorized request carries to its upstream, from its decision.

As in Oathkeeper, a mutator turns a decision into headers for the upstream. The proxy
port adds them to the forwarded request; the decision API returns them for the front
proxy to set (nginx ``auth_request_set``, Traefik ``authResponseHeaders``, Envoy
``allowed_upstream_headers``). Today: the identity headers. A signed identity token
plugs in as another mutator.
"""

from __future__ import annotations

from typing import Protocol

from multidict import istr

from .identity import Identity


class Mutator(Protocol):
    def headers(self, identity: Identity) -> list[tuple[str, str]]:
        """Headers to set upstream for this identity."""
        ...


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

    def headers(self, identity: Identity) -> list[tuple[str, str]]:
        key, owner, account, roles = self.names
        principal = identity.principal
        return [
            (key, principal.app_key),
            (owner, principal.owner),
            (account, identity.account),
            (roles, ",".join(identity.roles)),
        ]
