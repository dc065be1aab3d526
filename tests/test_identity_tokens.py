"""Identity tokens (the signed identity an upstream receives) are reused for the same
claims while half their lifetime remains (gateway.sessions.service): never for other
claims, never once another key signs, never expiring sooner than half a lifetime after
they are handed out, and never more of them kept than IDENTITY_TOKENS."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from test_session_service import APP_KEY, sessions_on

from gateway.sessions import keys
from gateway.sessions.service import IDENTITY_TOKENS, Sessions

CLAIMS = {"app_key": APP_KEY, "owner": "acme", "account": "acme",
          "roles": ["orders-reader"], "resource": "orders", "action": "read"}


def pem_file(tmp_path: Path) -> Path:
    path = tmp_path / "signing.pem"
    path.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return path


def from_files(tmp_path: Path, now: list[float]) -> Sessions:
    return sessions_on(None, clock=lambda: now[0], algorithm=keys.EDDSA,
                       key_files=[pem_file(tmp_path)])


def claims_of(sessions: Sessions, token: str) -> dict:
    """The token's claims, its signature checked against the JWKS (times not checked:
    the tests move the clock)."""
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in sessions.jwks()["keys"] if k["kid"] == kid)
    return jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=[jwk["alg"]],
                      audience="keygate-upstream", options={"verify_exp": False,
                                                            "verify_iat": False,
                                                            "verify_nbf": False})


def test_a_token_is_reused_while_half_its_lifetime_remains_and_never_longer(tmp_path):
    now = [1_000_000.9]  # a fraction of a second past iat: reuse counts from iat
    sessions = from_files(tmp_path, now)
    first = sessions.identity_token(**CLAIMS)
    issued = claims_of(sessions, first)
    assert issued["iat"] == 1_000_000 and issued["exp"] == 1_000_060
    now[0] = 1_000_029.99
    assert sessions.identity_token(**CLAIMS) == first
    assert issued["exp"] - now[0] >= 30  # what is left when it is last handed out
    now[0] = 1_000_030.0
    second = sessions.identity_token(**CLAIMS)
    assert second != first
    assert claims_of(sessions, second)["iat"] == 1_000_030
    assert claims_of(sessions, second)["jti"] != issued["jti"]


def test_other_claims_never_get_a_kept_token(tmp_path):
    """Every claim is part of what a kept token is found by: a key whose roles changed,
    another account, resource, action or audience gets a token that says so."""
    now = [2_000_000.0]
    sessions = from_files(tmp_path, now)
    sessions.identity_token(**CLAIMS)
    variants = [
        {"roles": ["orders-reader", "orders-writer"]}, {"roles": []},
        {"account": "beta"}, {"owner": "beta"}, {"app_key": "kgk-acme-8QX2M4PZ9B"},
        {"resource": "invoices"}, {"action": "write"},
    ]
    for change in variants:
        token = sessions.identity_token(**{**CLAIMS, **change})
        got = claims_of(sessions, token)
        expected = {**CLAIMS, **change}
        assert (got["sub"], got["acct"], got["account"], got["roles"], got["resource"],
                got["action"]) == (expected["app_key"], expected["owner"],
                                   expected["account"], expected["roles"],
                                   expected["resource"], expected["action"]), change
    other_audience = sessions.identity_token(**CLAIMS, audience="billing-api")
    assert jwt.decode(other_audience, options={"verify_signature": False})["aud"] == (
        "billing-api")


async def test_a_rotation_at_once_is_never_answered_with_the_old_keys_token(gateway):
    """After `keygate jwt rotate --now` (a key believed leaked), the next identity token
    is signed by the new key, though the old one's token had most of its life left."""
    sessions = sessions_on(gateway.store)
    old_kid = (await sessions.ready()).current.kid
    before = sessions.identity_token(**CLAIMS)
    assert jwt.get_unverified_header(before)["kid"] == old_kid
    assert sessions.identity_token(**CLAIMS) == before
    new = await sessions.rotate(at_once=True)
    after = sessions.identity_token(**CLAIMS)
    assert jwt.get_unverified_header(after)["kid"] == new.kid != old_kid
    await sessions.close()


def test_the_kept_tokens_are_bounded_whatever_the_callers_ask_for(tmp_path):
    """One key asking for ever new claims (accounts, resources) makes a process keep at
    most IDENTITY_TOKENS tokens; the most recent stay reusable."""
    sessions = from_files(tmp_path, [time.time()])
    for i in range(IDENTITY_TOKENS + 300):
        sessions.identity_token(**{**CLAIMS, "account": f"acct{i}"})
    assert sessions.identity_tokens_kept == IDENTITY_TOKENS
    last = {**CLAIMS, "account": f"acct{IDENTITY_TOKENS + 299}"}
    assert sessions.identity_token(**last) == sessions.identity_token(**last)
