"""Session and identity JWTs: issued and verified, with no I/O.

A **session token** is what ``POST /api/v1/auth/login`` trades for a key and token, so the
long-lived token crosses the wire once. Verified here as a signature and claims; the
authenticator then checks the key's current state in the store (active, and still
holding the token the session came from), so a session ends on the next request after
its key is deactivated or deleted, or its token replaced.

An **identity token** is what keygate sends an upstream about an authorized request
(Oathkeeper's ``id_token`` mutator): short-lived, for the upstream's audience.

Security reasoning:

* The two kinds are told apart by ``typ`` in the header *and* by audience, so an identity
  token an upstream received (or leaked) can never be replayed to keygate as a session.
* Algorithms are pinned by ``kid`` (:mod:`gateway.sessions.keys`); ``iss``, ``aud``,
  ``exp``, ``nbf`` and ``iat`` are required and checked with a small leeway.
* ``gen`` marks the token generation the session came from without revealing anything
  about it: a hash of the token's stored digest under a fixed label, which the store's
  copy of the key can recompute and an outsider cannot invert.
* "Not mine": a Bearer value that is not a JWT, or one whose header names neither a
  session ``typ`` nor one of keygate's ``kid``\\ s, is somebody else's token
  (:func:`verify_session` returns None), so an upstream's own Bearer tokens do not make
  keygate answer "invalid".
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from typing import Any, NamedTuple

import jwt

from ..errors import Unauthorized
from .keys import KeyRing

SESSION_TYP = "keygate-session+jwt"
IDENTITY_TYP = "keygate-id+jwt"
MAX_TOKEN_LENGTH = 4096  # a keygate session is ~600 characters; longer is not ours


class InvalidSession(Unauthorized):
    """A session token keygate issued (or claims to have) that does not verify. One code
    for every reason, as for key/token pairs; the reason is for the log only."""

    code = "invalid_session"
    message = "invalid session token: sign in again with the API key and token"

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class UnknownKid(InvalidSession):
    """A session naming a signing key this process does not have."""


class ExpiredSession(InvalidSession):
    code = "session_expired"
    message = "the session has expired: sign in again with the API key and token"


class SessionClaims(NamedTuple):
    app_key: str
    owner: str
    generation: str
    jti: str
    issued: int
    expires: int


def generation_marker(token_digest: str) -> str:
    """What a session carries of the token it was issued from (see the module notes)."""
    labelled = b"keygate session generation v1\x00" + token_digest.encode()
    return hashlib.sha256(labelled).hexdigest()[:22]


def matches_generation(marker: str, token_digests: Iterable[str]) -> bool:
    return any(generation_marker(digest) == marker for digest in token_digests)


def issue_session(
    ring: KeyRing, *, issuer: str, audience: str, app_key: str, owner: str,
    token_digest: str, ttl: int, now: int,
) -> tuple[str, int]:
    """The session JWT and its expiry (epoch seconds)."""
    key = ring.current
    expires = now + ttl
    claims = {
        "iss": issuer, "aud": audience, "sub": app_key, "acct": owner,
        "iat": now, "nbf": now, "exp": expires, "jti": secrets.token_urlsafe(16),
        "gen": generation_marker(token_digest),
    }
    token = jwt.encode(claims, key.private_key, algorithm=key.algorithm,
                       headers={"kid": key.kid, "typ": SESSION_TYP})
    return token, expires


def _header(token: str) -> dict[str, Any] | None:
    # A JWT is base64url and dots. Anything else (header bytes that are not UTF-8 arrive
    # as surrogates) is not a token of ours, and pyjwt would fail to encode it.
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii() or token.count(".") != 2:
        return None
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return None
    return header if isinstance(header, dict) else None


def is_keygates(ring: KeyRing | None, token: str) -> bool:
    """Whether ``token`` is a JWT of keygate's, or claims to be: a session's or an
    identity token's ``typ``, or a ``kid`` of the ring, by its header alone (no
    signature checked: a forgery is held back all the same)."""
    header = _header(token)
    if header is None:
        return False
    kid = header.get("kid")
    return header.get("typ") in (SESSION_TYP, IDENTITY_TYP) or (
        ring is not None and isinstance(kid, str) and ring.verifying(kid) is not None)


def verify_session(
    ring: KeyRing, token: str, *, issuer: str, audience: str, leeway: float,
) -> SessionClaims | None:
    """The claims of a valid session token; None when the token is not keygate's at all;
    :class:`InvalidSession` (or :class:`ExpiredSession`) when it is and fails. Times are
    checked against the system clock (pyjwt's)."""
    header = _header(token)
    if header is None:
        return None
    kid, typ = header.get("kid"), header.get("typ")
    key = ring.verifying(kid) if isinstance(kid, str) else None
    if key is None:
        if typ == SESSION_TYP:  # ours, by a key retired long ago (or not heard of yet)
            raise UnknownKid("unknown kid")
        return None
    if typ != SESSION_TYP:
        raise InvalidSession(f"typ {typ!r} is not a session's")
    try:
        claims = jwt.decode(
            token, key.public_key, algorithms=[key.algorithm], audience=audience,
            issuer=issuer, leeway=leeway,
            options={"require": ["iss", "aud", "sub", "iat", "nbf", "exp", "jti"],
                     "verify_iat": True},
        )
    except jwt.ExpiredSignatureError:
        raise ExpiredSession("expired") from None
    except jwt.PyJWTError as exc:
        raise InvalidSession(exc.__class__.__name__) from None
    try:
        return SessionClaims(str(claims["sub"]), str(claims["acct"]), str(claims["gen"]),
                             str(claims["jti"]), int(claims["iat"]), int(claims["exp"]))
    except (KeyError, TypeError, ValueError):
        raise InvalidSession("claims of the wrong shape") from None


def issue_identity(
    ring: KeyRing, *, issuer: str, audience: str, app_key: str, owner: str, account: str,
    roles: Iterable[str], resource: str, action: str, ttl: int, now: int,
) -> str:
    """The identity token for an upstream: who the caller is and what it was allowed."""
    key = ring.current
    claims = {
        "iss": issuer, "aud": audience, "sub": app_key, "acct": owner,
        "account": account, "roles": list(roles), "resource": resource, "action": action,
        "iat": now, "nbf": now, "exp": now + ttl, "jti": secrets.token_urlsafe(12),
    }
    return jwt.encode(claims, key.private_key, algorithm=key.algorithm,
                      headers={"kid": key.kid, "typ": IDENTITY_TYP})
