async def test_authorized_request_reaches_upstream(proxy, make_key, upstream):
    key = await make_key("acme", ["orders-reader"])
    response = await proxy.get("/orders/42", headers=key.headers)
    assert response.status == 200
    assert upstream.last["raw_path"] == "/orders/42"
    assert upstream.last["headers"]["X-Keygate-Key"] == key.app_key
    assert "X-API-AppToken" not in upstream.last["headers"]


async def test_management_lists_keys(management, admin_key):
    response = await management.get("/api/v1/accounts/acme/keys", headers=admin_key.headers)
    assert response.status == 200
    body = await response.json()
    assert body["total"] == 1 and body["items"][0]["appKey"] == admin_key.app_key
