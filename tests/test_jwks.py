"""The JWKS as served on the management port (``/.well-known/jwks.json`` and under
``/api/v1``): cacheable for five minutes, with an ETag (a hash of the key set) that
``If-None-Match`` revalidates with a 304, and answered to HEAD. Real store, real
aiohttp app, real rotation."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

PATHS = ("/.well-known/jwks.json", "/api/v1/.well-known/jwks.json")


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


async def fetched(management: Any, path: str, **headers: str) -> tuple[int, Any, bytes]:
    response = await management.get(path, headers=headers)
    return response.status, response.headers, await response.read()


@pytest.mark.parametrize("path", PATHS)
async def test_the_jwks_has_an_etag_of_its_key_set_and_stays_cacheable(management, path):
    status, headers, body = await fetched(management, path)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert headers["Cache-Control"] == "public, max-age=300"
    assert headers["ETag"] == etag_of(body)
    other = "/api/v1/.well-known/jwks.json" if path == PATHS[0] else PATHS[0]
    assert (await fetched(management, other))[1]["ETag"] == headers["ETag"]  # same keys


@pytest.mark.parametrize("path", PATHS)
async def test_if_none_match_with_its_etag_is_a_304(management, path):
    _, headers, _ = await fetched(management, path)
    etag = headers["ETag"]
    for wanted in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        status, answered, body = await fetched(management, path, **{"If-None-Match": wanted})
        assert (status, body) == (304, b""), wanted
        assert answered["ETag"] == etag and answered["Cache-Control"] == "public, max-age=300"
    for wanted in ('"other"', etag.strip('"'), etag[:-2] + '"'):
        status, _, body = await fetched(management, path, **{"If-None-Match": wanted})
        assert status == 200 and body, wanted


@pytest.mark.parametrize("path", PATHS)
async def test_head_answers_with_the_gets_headers_and_no_body(management, path):
    """It was a 405."""
    _, got, body = await fetched(management, path)
    response = await management.head(path)
    assert response.status == 200
    assert await response.read() == b""
    for name in ("ETag", "Cache-Control", "Content-Type", "Content-Length"):
        assert response.headers[name] == got[name], name
    assert int(response.headers["Content-Length"]) == len(body)
    assert response.headers["X-Request-Id"]
    again = await management.head(path, headers={"If-None-Match": got["ETag"]})
    assert again.status == 304


async def test_a_rotation_changes_the_etag(management, gateway):
    _, before, body = await fetched(management, PATHS[0])
    await gateway.sessions.rotate()
    status, after, rotated = await fetched(management, PATHS[0],
                                           **{"If-None-Match": before["ETag"]})
    assert status == 200 and rotated != body
    assert after["ETag"] == etag_of(rotated) != before["ETag"]
    assert (await fetched(management, PATHS[1], **{"If-None-Match": after["ETag"]}))[0] == 304


async def test_head_is_answered_only_where_documented(management, admin_key):
    """The other operations still refuse HEAD (405), as before."""
    assert (await management.head("/api/v1/accounts/acme/keys",
                                  headers=admin_key.headers)).status == 405
    assert (await management.head("/api/v1/auth/login")).status == 405
