"""Authenticators: from a request's headers to a proven principal, or "not mine".

As in Ory Oathkeeper, each authenticator either says "not mine" (None: the request
carries no credentials it understands), returns who is calling, or fails with 401
because the credentials it understands are wrong. When every authenticator says "not
mine", the request had no credentials at all. A Bearer JWT authenticator plugs in here
beside the key/token headers, without touching the callers.

What the client learns is deliberately little:

* An unknown key, a wrong token, a malformed key and a token with a bad checksum all get
  the *same* 401 body, so the gateway is no oracle for which keys exist. The unknown key
  still pays for an HMAC comparison against a dummy digest.
* Only after the token is proven does keygate say more (inactive key → 401 saying so,
  missing/inactive grant or no roles → 403), because then the caller holds the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping, istr

from ..credentials import CredentialFormat, TokenHasher
from ..errors import BadRequest, Unauthorized
from ..sessions.tokens import ExpiredSession, InvalidSession, SessionClaims, matches_generation
from ..store import ACTIVE, Store
from .identity import Authenticated, Principal


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


class Authenticator(Protocol):
    async def authenticate(
        self, headers: Mapping[str, str], account: str
    ) -> Authenticated | None: ...

    def keygate_bearer(self, headers: Mapping[str, str]) -> bool:
        """Whether the Authorization header holds a keygate session, whatever
        authenticated the request (no I/O)."""
        ...


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

    def keygate_bearer(self, headers: Mapping[str, str]) -> bool:
        return False

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


class NoCredentials(Unauthorized):
    code = "missing_credentials"
    message = "no API credentials: send the API key and token headers"


class InvalidSessionToken(InvalidCredentials):
    """A session token keygate issued (or one claiming to be) that does not verify, or
    whose key no longer holds the token it came from. Counted against the client's
    failure budget like a wrong token."""

    code = "invalid_session"
    message = "invalid session token: sign in again with the API key and token"


class ExpiredSessionToken(InvalidSessionToken):
    code = "session_expired"
    message = "the session has expired: sign in again with the API key and token"


class EndedSessionToken(InvalidSessionToken):
    code = "session_ended"
    message = "this session was signed out: sign in again with the API key and token"


AUTHORIZATION = istr("Authorization")
COOKIE = istr("Cookie")


class SessionVerifier(Protocol):
    async def verify(self, token: str) -> SessionClaims | None:
        """The claims of a valid session; None when the token is not keygate's;
        :class:`~gateway.sessions.tokens.InvalidSession` when it is and fails."""
        ...

    def is_keygates(self, token: str) -> bool:
        """Whether the token is (or claims to be) keygate's, by its header alone."""
        ...


class BearerAuthenticator:
    """``Authorization: Bearer <session JWT>``, or the session cookie (``session_cookie``;
    empty: none).

    "Not mine" for anything that is not a keygate session (another scheme, another
    issuer's Bearer token, no cookie), so an upstream's own tokens pass through
    untouched. A keygate session is a signature and claims (checked by the verifier,
    which caches what it verified) *and* the key's state now, read as the key/token pair
    reads it (the credential cache, invalidated on every change): a session stops working
    on the next request after its key is deactivated or deleted, or after the token it
    came from is replaced.
    """

    def __init__(self, store: Store, sessions: SessionVerifier, cookie: str = ""):
        self.store = store
        self.sessions = sessions
        self.cookie = cookie

    def keygate_bearer(self, headers: Mapping[str, str]) -> bool:
        """Whether an Authorization header holds a keygate session (or a token claiming
        to be keygate's). Beside the key/token pair, which then authenticates, it is
        still keygate's: the upstream never receives it, as it never receives the
        session cookie, while an upstream's own Bearer token passes."""
        for value in _all(headers, AUTHORIZATION):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and self.sessions.is_keygates(token.strip()):
                return True
        return False

    async def authenticate(self, headers: Mapping[str, str], account: str) -> Authenticated | None:
        """The first session presented that authenticates. A browser sends every cookie
        of the name that applies to the request, and another host of the site can plant
        one (``Domain=`` the parent, a longer ``Path`` to come first): taking the first
        alone let that cookie lock the administrator out. Each is tried (at most
        MAX_SESSION_COOKIES, so a request costs a few signature checks at most); when
        none authenticates, the first refusal is the answer."""
        refused: Unauthorized | None = None
        for token, carrier in session_tokens(headers, self.cookie):
            try:
                found = await self._authenticate(token, carrier, account)
            except Unauthorized as exc:
                refused = refused or exc
                continue
            if found is not None:
                return found
        if refused is not None:
            raise refused
        return None

    async def _authenticate(self, token: str, carrier: str,
                            account: str) -> Authenticated | None:
        try:
            claims = await self.sessions.verify(token)
        except ExpiredSession:
            raise ExpiredSessionToken() from None
        except InvalidSession:
            raise InvalidSessionToken() from None
        if claims is None:
            return None
        found = self.store.cached_lookup(claims.app_key, account)
        if found is None:
            found = await self.store.auth_lookup(claims.app_key, account)
        if not found.exists or found.owner != claims.owner:
            raise InvalidSessionToken()  # the key was deleted
        if not matches_generation(claims.generation, found.token_digests):
            raise InvalidSessionToken()  # the token the session came from was replaced
        if found.ended_sessions.ends(claims.jti, claims.issued):
            raise EndedSessionToken()
        if found.status != ACTIVE:
            raise Unauthorized(
                "this API key is inactive; its owner account can activate it",
                code="key_inactive",
            )
        return Authenticated(Principal(claims.app_key, found.owner), account, found.grant,
                             carrier)


HOST_PREFIX = "__Host-"
MAX_SESSION_COOKIES = 4  # session cookies tried per request (each may cost a signature check)


def session_cookie_names(name: str) -> tuple[str, ...]:
    """The names the session cookie ``name`` goes by ('' for none): login sets
    ``__Host-{name}`` when the client reached keygate over TLS, ``name`` otherwise.
    Browsers accept a ``__Host-`` cookie only from a secure origin, with ``Secure``,
    ``Path=/`` and no ``Domain``: no other host of the site, nor plain HTTP, can set,
    replace or shadow it. So over TLS every port reads the ``__Host-`` name alone
    (:func:`credentials_over_tls`): a plain-named cookie another host planted, holding the
    planter's own session, would sign its victim in as the planter."""
    return (HOST_PREFIX + name, name) if name else ()


def session_tokens(headers: Mapping[str, str], cookie: str) -> list[tuple[str, str]]:
    """The session tokens a request carries and where (``bearer``: the Authorization
    header, alone when it holds one; ``cookie``: every value of the session cookie, the
    ``__Host-`` name first, at most MAX_SESSION_COOKIES), in the order to try them."""
    value = headers.get(AUTHORIZATION)
    if value is not None:
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return [(token.strip(), "bearer")]
    found: list[tuple[str, str]] = []
    for name in session_cookie_names(cookie):
        for token in _cookie_values(headers, name):
            if (token, "cookie") not in found:
                found.append((token, "cookie"))
                if len(found) == MAX_SESSION_COOKIES:
                    return found
    return found


def _cookie_pairs(cookie_header: str) -> list[tuple[str, str, str]]:
    """A ``Cookie`` header's pairs: each as sent, its name and its value, read as
    browsers write them (the name is what comes before the first ``=``)."""
    pairs = []
    for pair in cookie_header.split(";"):
        name, _, value = pair.strip().partition("=")
        pairs.append((pair, name, value))
    return pairs


def _without_cookies(cookie_header: str, names: tuple[str, ...]) -> str:
    """A ``Cookie`` header without the cookies of ``names``; empty when nothing is
    left."""
    return ";".join(pair for pair, name, _ in _cookie_pairs(cookie_header)
                    if name not in names).strip()


def _cookie_values(headers: Mapping[str, str], name: str) -> list[str]:
    return [value for header in _all(headers, COOKIE)
            for _, found, value in _cookie_pairs(header) if found == name and value]


def carries_session_cookie(headers: Mapping[str, str], cookie: str) -> bool:
    """Whether a session cookie is present, under either of its names, read as the
    session authenticator reads it."""
    return any(_cookie_values(headers, name) for name in session_cookie_names(cookie))


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, ()))
    value = headers.get(name)
    return [value] if value is not None else []


def without_session_cookie(cookie_header: str, name: str) -> str:
    """A ``Cookie`` header without the session cookie ``name``, under either of its
    names (the others pass to the upstream as they were); empty when nothing is left."""
    return _without_cookies(cookie_header, session_cookie_names(name))


def credentials_over_tls(headers: MultiMapping[str], name: str) -> MultiMapping[str]:
    """``headers`` as a request's credentials are read from them when the client reached
    keygate over TLS, on every port: without the session cookie's plain name ``name``.
    Any other host of the site (``Domain=`` the parent) or a plain-HTTP answer can set
    that name, so a session planted under it, the planter's own, would make a browser
    that holds no ``__Host-`` cookie yet act as the planter (login fixation). The
    headers themselves, unless a ``Cookie`` header holds the plain name: the common
    request (key/token headers, no cookie) is not copied."""
    if not name or COOKIE not in headers:
        return headers
    cookies = headers.getall(COOKIE)
    if not any(name in value and any(found == name for _, found, _ in _cookie_pairs(value))
               for value in cookies):
        return headers
    kept: CIMultiDict[str] = CIMultiDict()
    for header, value in headers.items():
        if header.lower() == "cookie":
            # its __Host- name and every other cookie stay
            value = _without_cookies(value, (name,))
            if not value:
                continue
        kept.add(header, value)
    return CIMultiDictProxy(kept)


def sets_session_cookie(set_cookie: str, name: str) -> bool:
    """Whether a ``Set-Cookie`` value sets the session cookie ``name`` (either of its
    names), read as browsers read it: the name is what comes before the first ``=``,
    with the whitespace around it dropped."""
    return set_cookie.partition("=")[0].strip() in session_cookie_names(name)
