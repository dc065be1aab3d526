"""Session and identity JWTs (gateway.sessions), attacked at the token level: every
forgery a verifier of JWTs has been known to accept."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.errors import ConfigError
from gateway.sessions import keys, tokens

ISS, AUD = "keygate", "keygate"
NOW = int(time.time())  # pyjwt checks times against the system clock
DIGEST = "ab" * 32


def ring_of(*signing: keys.SigningKey, lifetime: int = 21600, now: int = NOW) -> keys.KeyRing:
    return keys.KeyRing(list(signing), lifetime, now)


@pytest.fixture(params=keys.ALGORITHMS)
def ring(request) -> keys.KeyRing:
    return ring_of(keys.generate(request.param, NOW))


def session(ring: keys.KeyRing, ttl: int = 3600, now: int = NOW) -> str:
    token, _ = tokens.issue_session(ring, issuer=ISS, audience=AUD, app_key="acme.key",
                                    owner="acme", token_digest=DIGEST, ttl=ttl, now=now)
    return token


def verify(ring: keys.KeyRing, token: str):
    return tokens.verify_session(ring, token, issuer=ISS, audience=AUD, leeway=10)


def b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def parts(token: str) -> tuple[dict, dict, str]:
    head, body, signature = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (json.loads(base64.urlsafe_b64decode(pad(head))),
            json.loads(base64.urlsafe_b64decode(pad(body))), signature)


def test_a_session_verifies_and_carries_key_owner_and_generation(ring):
    claims = verify(ring, session(ring))
    assert claims is not None
    assert (claims.app_key, claims.owner) == ("acme.key", "acme")
    assert tokens.matches_generation(claims.generation, ["ff" * 32, DIGEST])
    assert not tokens.matches_generation(claims.generation, ["ff" * 32])
    header, body, _ = parts(session(ring))
    assert header["kid"] == ring.current.kid and header["typ"] == tokens.SESSION_TYP
    assert {"iss", "aud", "sub", "acct", "iat", "nbf", "exp", "jti", "gen"} <= set(body)
    assert DIGEST not in json.dumps(body)  # the marker reveals nothing of the digest


def test_expired_and_not_yet_valid_sessions_are_refused_with_a_small_leeway(ring):
    now = int(time.time())
    assert verify(ring, session(ring, ttl=60, now=now - 65)) is not None  # within 10 s
    with pytest.raises(tokens.ExpiredSession):
        verify(ring, session(ring, ttl=60, now=now - 75))
    with pytest.raises(tokens.InvalidSession):
        verify(ring, session(ring, ttl=60, now=now + 20))  # nbf and iat in the future


def signed(ring: keys.KeyRing, **claims) -> str:
    """A session as keygate issues one, with some claims replaced."""
    _, body, _ = parts(session(ring))
    key = ring.current
    return jwt.encode({**body, **claims}, key.private_key, algorithm=key.algorithm,
                      headers={"kid": key.kid, "typ": tokens.SESSION_TYP})


def test_nbf_is_checked_on_its_own_with_the_leeway(ring):
    """``nbf`` ahead of the clock by more than the leeway is refused even when ``iat`` is
    now (the iat check alone does not catch it); within the leeway it is accepted."""
    now = int(time.time())
    with pytest.raises(tokens.InvalidSession) as refused:
        verify(ring, signed(ring, iat=now, nbf=now + 60, exp=now + 3600))
    assert refused.value.reason == "ImmatureSignatureError"
    assert verify(ring, signed(ring, iat=now, nbf=now + 5, exp=now + 3600)) is not None


@pytest.mark.parametrize("issuer,audience", [("keygate", "other"), ("other", "keygate")])
def test_wrong_issuer_or_audience_is_refused(ring, issuer, audience):
    token = session(ring)
    with pytest.raises(tokens.InvalidSession):
        tokens.verify_session(ring, token, issuer=issuer, audience=audience, leeway=10)


def test_alg_none_is_refused(ring):
    header, body, _ = parts(session(ring))
    forged = f"{b64({**header, 'alg': 'none'})}.{b64(body)}."
    with pytest.raises(tokens.InvalidSession) as refused:
        verify(ring, forged)
    assert refused.value.reason == jwt.InvalidAlgorithmError.__name__


def test_hs256_signed_with_the_public_key_is_refused(ring):
    """Algorithm confusion: the public key (which the JWKS publishes) as an HMAC secret."""
    header, body, _ = parts(session(ring))
    public_pem = ring.current.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64({**header, 'alg': 'HS256'})}.{b64(body)}"
    import hashlib
    import hmac
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(tokens.InvalidSession) as refused:
        verify(ring, f"{signing_input}.{b64(signature)}")
    # refused because the kid's key pins its algorithm (pyjwt's allow-list, checked
    # before any key is prepared), not because an EC or Ed25519 key makes a poor HMAC
    # secret (TypeError) or pyjwt refuses a PEM as one (InvalidKeyError)
    assert refused.value.reason == jwt.InvalidAlgorithmError.__name__


def test_a_tampered_payload_is_refused(ring):
    header, body, signature = parts(session(ring))
    forged = f"{b64(header)}.{b64({**body, 'sub': 'acme.other', 'acct': 'evil'})}.{signature}"
    with pytest.raises(tokens.InvalidSession):
        verify(ring, forged)


def test_a_session_signed_by_another_key_under_our_kid_is_refused(ring):
    stranger = keys.generate(ring.current.algorithm, NOW)
    header, body, _ = parts(session(ring))
    forged = jwt.encode(body, stranger.private_key, algorithm=stranger.algorithm,
                        headers={"kid": ring.current.kid, "typ": tokens.SESSION_TYP})
    with pytest.raises(tokens.InvalidSession):
        verify(ring, forged)


def test_unknown_kid_is_invalid_when_it_claims_to_be_a_session_and_not_mine_otherwise(ring):
    stranger = ring_of(keys.generate(keys.ES256, NOW))
    with pytest.raises(tokens.InvalidSession):
        verify(ring, session(stranger))
    # an upstream's own Bearer token: not keygate's, so not "invalid" either
    foreign = jwt.encode({"sub": "x"}, "secret" * 8, algorithm="HS256")
    assert verify(ring, foreign) is None
    for garbage in ("", "abc", "a.b.c", "x" * 5000, "..", "e30.e30.", "\x00.\x00.\x00"):
        assert verify(ring, garbage) is None


@pytest.mark.parametrize("carried", ["jwk", "jku", "x5u", "x5c"])
def test_a_key_the_token_carries_or_points_to_is_never_used(ring, carried):
    """A token may name its own verification key (``jwk``), or where to fetch one
    (``jku``, ``x5u``, ``x5c``): keygate uses only the keys of its ring, found by kid,
    under our kid or the forger's own."""
    stranger = keys.generate(ring.current.algorithm, NOW)
    _, body, _ = parts(session(ring))
    pointers = {"jwk": stranger.jwk(), "jku": "https://evil.example/jwks.json",
                "x5u": "https://evil.example/cert.pem", "x5c": ["MIIB"]}
    for kid in (ring.current.kid, stranger.kid):
        forged = jwt.encode(body, stranger.private_key, algorithm=stranger.algorithm,
                            headers={"kid": kid, "typ": tokens.SESSION_TYP,
                                     carried: pointers[carried]})
        with pytest.raises(tokens.InvalidSession):
            verify(ring, forged)


@pytest.mark.parametrize("kid", ["../../../etc/passwd", "k" * 3000, "", None, 7, ["a"],
                                 {"kid": "x"}, "' OR 1=1 --", "\u0000"])
def test_any_kid_is_only_looked_up(ring, kid):
    """The kid is a name in the ring and nothing else: a path, a very long one, or one
    of another type is refused as a session or is not keygate's token at all, never
    an error of another kind."""
    _, body, _ = parts(session(ring))
    for typ in ({"typ": tokens.SESSION_TYP}, {}):
        header = {"alg": ring.current.algorithm, "kid": kid, **typ}
        forged = f"{b64(header)}.{b64(body)}.{b64(b'x' * 64)}"
        try:
            assert verify(ring, forged) is None
        except tokens.InvalidSession:
            assert typ, "only a token claiming to be a session is refused as one"


def test_a_new_key_is_published_before_it_signs_and_the_previous_signs_until_then():
    """A rotation's key is in the JWKS from the start but signs only from its
    ``signs_from``: a verifier whose cached JWKS predates the rotation never meets a
    token signed with a key it has not seen. The previous key signs until that moment,
    is retired then, and verifies for the lifetime of its last tokens."""
    old = keys.generate(keys.ES256, NOW - 20)
    new = keys.generate(keys.ES256, NOW, signs_from=NOW + 300)
    ring = ring_of(old.retire(NOW + 300), new, lifetime=3600, now=NOW)
    assert ring.current.kid == old.kid and ring.changes_at == NOW + 300
    assert [k["kid"] for k in ring.jwks()["keys"]] == [old.kid, new.kid]
    last_old = session(ring, ttl=3600)
    assert ring.at(NOW + 299) is ring
    switched = ring.at(NOW + 300)
    assert switched.current.kid == new.kid and switched.changes_at is None
    assert [k["kid"] for k in switched.jwks()["keys"]] == [new.kid, old.kid]
    assert verify(switched, last_old) is not None
    # sealed and opened again, a key keeps when it signs
    secret = b"s" * 40
    assert keys.unseal(keys.seal(new, secret), [secret]).signs_from == NOW + 300


def test_an_identity_token_is_never_a_session(ring):
    """An upstream that received (or leaked) an identity token cannot sign in with it."""
    identity = tokens.issue_identity(
        ring, issuer=ISS, audience=AUD, app_key="acme.key", owner="acme", account="acme",
        roles=["owner"], resource="orders", action="read", ttl=60, now=NOW)
    with pytest.raises(tokens.InvalidSession):
        verify(ring, identity)


def test_rotation_keeps_the_previous_key_for_verification_until_its_tokens_expired():
    old = keys.generate(keys.ES256, NOW - 20)
    token = session(ring_of(old), ttl=3600)
    new = keys.generate(keys.ES256, NOW - 10)
    rotated = ring_of(old.retire(NOW - 10), new, lifetime=3600, now=NOW)
    assert rotated.current.kid == new.kid
    assert verify(rotated, token) is not None
    assert [k["kid"] for k in rotated.jwks()["keys"]] == [new.kid, old.kid]
    # once the old key's tokens can no longer be alive, it leaves the ring
    later = ring_of(old.retire(NOW - 10), new, lifetime=3600, now=NOW + 3600)
    assert [k["kid"] for k in later.jwks()["keys"]] == [new.kid]
    with pytest.raises(tokens.InvalidSession):
        verify(later, token)


def test_sealed_keys_open_with_any_listed_secret_and_nothing_else():
    key = keys.generate(keys.EDDSA, NOW)
    sealed = keys.seal(key, b"current-secret")
    assert "PRIVATE" not in sealed
    opened = keys.unseal(sealed, [b"new-secret", b"current-secret"])
    assert opened.kid == key.kid and opened.algorithm == keys.EDDSA
    with pytest.raises(keys.UnsealError):
        keys.unseal(sealed, [b"wrong"])
    record = json.loads(sealed)
    other = keys.generate(keys.EDDSA, NOW)
    record["kid"] = other.kid  # a sealed key moved under another kid
    with pytest.raises(keys.UnsealError):
        keys.unseal(json.dumps(record), [b"current-secret"])
    for junk in ("", "{}", "[]", '{"kid": 1}', "not json"):
        with pytest.raises(keys.UnsealError):
            keys.unseal(junk, [b"current-secret"])


def test_pem_files_load_p256_and_ed25519_and_refuse_other_keys(tmp_path):
    def pem(private) -> bytes:
        return private.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())

    cases = {"p256.pem": ec.generate_private_key(ec.SECP256R1()),
             "ed.pem": ed25519.Ed25519PrivateKey.generate()}
    for name, private in cases.items():
        (tmp_path / name).write_bytes(pem(private))
    assert keys.load_pem(tmp_path / "p256.pem").algorithm == keys.ES256
    assert keys.load_pem(tmp_path / "ed.pem").algorithm == keys.EDDSA
    (tmp_path / "p384.pem").write_bytes(pem(ec.generate_private_key(ec.SECP384R1())))
    (tmp_path / "rsa.pem").write_bytes(pem(rsa.generate_private_key(65537, 2048)))
    (tmp_path / "junk.pem").write_text("-----BEGIN PRIVATE KEY-----\nxx\n")
    for name in ("p384.pem", "rsa.pem", "junk.pem", "missing.pem"):
        with pytest.raises(ConfigError, match="jwt_private_key_files"):
            keys.load_pem(tmp_path / name)


def test_identity_tokens_verify_against_the_published_jwks(ring):
    token = tokens.issue_identity(
        ring, issuer=ISS, audience="orders-api", app_key="acme.key", owner="acme",
        account="beta", roles=["orders-reader"], resource="orders", action="read", ttl=60,
        now=int(time.time()))
    jwk = jwt.PyJWKSet.from_dict(ring.jwks())[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(token, jwk.key, algorithms=[ring.current.algorithm],
                        audience="orders-api", issuer=ISS)
    assert claims["account"] == "beta" and claims["roles"] == ["orders-reader"]
    assert (claims["resource"], claims["action"]) == ("orders", "read")
    assert claims["exp"] - claims["iat"] == 60
