"""API key and token formats, generation and verification. Pure: no I/O, no clock.

Security reasoning, in one place:

* An **API key** (``kgk-acme-7QX2M4PZ9B``) is an identifier, like a user name. It carries
  its owner account so people can read it, and 50 random bits so keys are not guessable
  in bulk; uniqueness is enforced by the store, not by chance.
* An **API token** (``kgt_`` + 30 base62 characters + 6 checksum characters) is the
  secret. 30 base62 characters from :mod:`secrets` give 178 bits, far beyond guessing.
  The fixed prefix lets secret scanners recognise a leaked token; the CRC32 checksum
  lets keygate refuse a mistyped or made-up token before touching the store, so a flood
  of garbage costs one CRC per request and no round trip.
* At rest only ``HMAC-SHA256(server secret, token)`` is kept. A slow KDF would be wrong:
  the token is uniformly random (nothing to brute-force a dictionary against) and every
  request pays for verification. The HMAC key means a copy of the store alone does not
  let anyone check guesses offline.
* Verification compares digests with :func:`hmac.compare_digest`, against every stored
  digest (a key has two during a token renewal) with every server secret (the first
  signs new tokens, the rest are previous secrets kept during a rotation), without
  stopping early, so timing does not say which one matched. An unknown key is checked
  against a dummy digest so it costs the same as a wrong token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CROCKFORD32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

TOKEN_RANDOM_CHARS = 30
TOKEN_CHECKSUM_CHARS = 6
KEY_RANDOM_CHARS = 10

# Patterns are used with fullmatch: "$" alone would also accept a trailing newline.
ACCOUNT_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,9}$")

# Never a valid digest of anything: used so that an unknown key pays for a comparison.
_DUMMY_DIGEST = "0" * 64


def is_valid_account(name: str) -> bool:
    """Accounts are DNS labels, so they can also come from a host name."""
    return bool(ACCOUNT_RE.fullmatch(name))


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(BASE62[rem])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), TOKEN_CHECKSUM_CHARS)


@dataclass(frozen=True)
class CredentialFormat:
    """The shape of keys and tokens for one deployment (prefixes are settings)."""

    key_prefix: str = "kgk"
    token_prefix: str = "kgt"  # noqa: S105 - a public marker for secret scanners

    def __post_init__(self) -> None:
        for name in ("key_prefix", "token_prefix"):
            if not PREFIX_RE.fullmatch(getattr(self, name)):
                raise ValueError(f"{name} must be 2-10 lowercase letters or digits")
        random_part = rf"[{CROCKFORD32}]{{{KEY_RANDOM_CHARS}}}"
        key_re = rf"^{self.key_prefix}-(?P<account>[a-z0-9-]+)-{random_part}$"
        token_length = TOKEN_RANDOM_CHARS + TOKEN_CHECKSUM_CHARS
        token_re = rf"^{self.token_prefix}_[0-9A-Za-z]{{{token_length}}}$"
        # frozen dataclass: derived attributes are set once, here
        object.__setattr__(self, "_key_re", re.compile(key_re))
        object.__setattr__(self, "_token_re", re.compile(token_re))

    # -- keys ------------------------------------------------------------------------
    def new_key(self, account: str) -> str:
        if not is_valid_account(account):
            raise ValueError(f"invalid account name {account!r}")
        rand = "".join(secrets.choice(CROCKFORD32) for _ in range(KEY_RANDOM_CHARS))
        return f"{self.key_prefix}-{account}-{rand}"

    def key_account(self, app_key: str) -> str | None:
        """The owner account written into a well-formed key, else None."""
        match = self._key_re.fullmatch(app_key)
        if not match or not is_valid_account(match["account"]):
            return None
        return match["account"]

    # -- tokens ----------------------------------------------------------------------
    def new_token(self) -> str:
        body = f"{self.token_prefix}_" + "".join(
            secrets.choice(BASE62) for _ in range(TOKEN_RANDOM_CHARS)
        )
        return body + _checksum(body)

    def token_well_formed(self, token: str) -> bool:
        """Prefix, alphabet, length and checksum: refuses typos without any lookup."""
        if not self._token_re.fullmatch(token):
            return False
        body, check = token[:-TOKEN_CHECKSUM_CHARS], token[-TOKEN_CHECKSUM_CHARS:]
        return hmac.compare_digest(_checksum(body), check)


class TokenHasher:
    """HMAC-SHA256 of tokens under the server secrets; the first secret is current.

    Keeping previous secrets in the list lets an operator rotate the server secret
    without invalidating every token at once (as itsdangerous does with its key list).
    """

    def __init__(self, server_secrets: Sequence[bytes]) -> None:
        if not server_secrets:
            raise ValueError("at least one server secret is required")
        # keyed HMAC states, copied per use: saves re-deriving the padded key every time
        # (callgrind: 17k instructions per token against 24k for a fresh hmac.new and
        # 23k for OpenSSL 3's one-shot hmac.digest, which looks the MAC up every call)
        self._keyed = tuple(hmac.new(s, digestmod=hashlib.sha256) for s in server_secrets)

    def _hmac(self, keyed: hmac.HMAC, raw: bytes) -> str:
        mac = keyed.copy()
        mac.update(raw)
        return mac.hexdigest()

    def digest(self, token: str) -> str:
        return self._hmac(self._keyed[0], token.encode("ascii"))

    def matches(self, token: str, stored: Iterable[str | None]) -> bool:
        """True when ``token`` hashes to one of the ``stored`` digests (None skipped)."""
        raw = token.encode("ascii")
        candidates = [self._hmac(keyed, raw) for keyed in self._keyed]
        stored = [d for d in stored if d] or [_DUMMY_DIGEST]
        found = False
        for digest in stored:
            for candidate in candidates:
                found |= hmac.compare_digest(candidate, digest)
        return found


# -- one-time token links ----------------------------------------------------------------
# A link hands a token to an integrator without pasting it into a chat. The link secret
# (256 bits) is the credential: the store keeps only sha256(secret) as the link's name and
# the token sealed with AES-256-GCM under a key derived from the secret, so neither a
# copy of the store nor anyone without the URL can recover the token.
LINK_SECRET_BYTES = 32


def new_link_secret() -> str:
    return secrets.token_urlsafe(LINK_SECRET_BYTES)


LINK_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")


def is_link_secret(value: str) -> bool:
    return bool(LINK_SECRET_RE.fullmatch(value))


def link_id(link_secret: str) -> str:
    return hashlib.sha256(link_secret.encode("ascii")).hexdigest()


def _link_key(link_secret: str) -> bytes:
    return hmac.new(link_secret.encode("ascii"), b"keygate token link v1", hashlib.sha256).digest()


def seal_token(link_secret: str, token: str, associated: str) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(12)
    sealed = AESGCM(_link_key(link_secret)).encrypt(
        nonce, token.encode("ascii"), associated.encode()
    )
    return base64.urlsafe_b64encode(nonce + sealed).decode("ascii")


def unseal_token(link_secret: str, sealed: str, associated: str) -> str | None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    raw = base64.urlsafe_b64decode(sealed)
    try:
        token = AESGCM(_link_key(link_secret)).decrypt(raw[:12], raw[12:], associated.encode())
    except InvalidTag:
        return None
    return token.decode("ascii")
