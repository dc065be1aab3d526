"""Who is calling and what it was authorized as: the records the stages pass along.

NamedTuples rather than frozen dataclasses: they are built on every request, and a
frozen dataclass pays an ``object.__setattr__`` per field.
"""

from __future__ import annotations

from typing import NamedTuple

from ..store import Grant


class Principal(NamedTuple):
    """Who is calling: an API key and the account that owns it."""

    app_key: str
    owner: str


class Authenticated(NamedTuple):
    """What an authenticator proved, with the key's grant in the target account (read
    in the same store round trip)."""

    principal: Principal
    account: str
    grant: Grant | None
    # what carried the credentials when it was not the key/token headers: "bearer" (the
    # Authorization header) or "cookie" (the session cookie); never sent upstream
    carrier: str = ""
    # the Authorization header holds a keygate session, whatever authenticated (a
    # session beside the key/token pair too): never sent upstream
    keygate_bearer: bool = False


class Identity(NamedTuple):
    """A principal authorized in a target account with these roles, for ``action`` on
    ``resource`` (the action allowed, when it was asked for one of several)."""

    principal: Principal
    account: str
    roles: tuple[str, ...]
    action: str = ""
    resource: str = ""
    carrier: str = ""  # as Authenticated.carrier
    keygate_bearer: bool = False  # as Authenticated.keygate_bearer


def carrier_of(identity: Identity) -> str:
    """What held a keygate session the upstream must not receive: ``bearer`` (the
    Authorization header) when it held one, whatever authenticated, else the carrier."""
    return "bearer" if identity.keygate_bearer else identity.carrier
