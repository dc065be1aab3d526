"""Unit tests of the pure parts: credentials, settings, routes and policy (real Casbin)."""

from __future__ import annotations

import hashlib
import hmac
import re
import zlib
from pathlib import Path

import pytest
import redis.exceptions
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from gateway.credentials import (
    BASE62,
    CROCKFORD32,
    CredentialFormat,
    TokenHasher,
    is_valid_account,
)
from gateway.errors import BadRequest, ConfigError
from gateway.policy import Policy
from gateway.routes import parse_routes
from gateway.settings import (
    MIN_SECRET_LENGTH,
    PROJECT_ROOT,
    SETTINGS,
    load_secrets,
    load_settings,
    url_without_passwords,
)
from gateway.store.core import store_unavailable

FMT = CredentialFormat()
SECRET = b"s" * 40
OLD_SECRET = b"o" * 40
MODEL = PROJECT_ROOT / "model.conf"
POLICIES = PROJECT_ROOT / "policies"


# -- credentials -----------------------------------------------------------------------
def test_token_format():
    token = FMT.new_token()
    assert token.startswith("kgt_")
    assert len(token) == 4 + 30 + 6
    assert set(token[4:]) <= set(BASE62)
    # the last six characters are the base62 CRC32 of the rest
    body, check = token[:-6], token[-6:]
    number = zlib.crc32(body.encode())
    expected = ""
    for _ in range(6):
        number, rem = divmod(number, 62)
        expected = BASE62[rem] + expected
    assert check == expected
    assert FMT.token_well_formed(token)


def test_tokens_are_distinct():
    assert len({FMT.new_token() for _ in range(200)}) == 200


def test_every_single_character_change_fails_the_check():
    token = FMT.new_token()
    for i, original in enumerate(token):
        for replacement in "0aZ_-":
            if replacement == original:
                continue
            mutated = token[:i] + replacement + token[i + 1 :]
            assert not FMT.token_well_formed(mutated), (i, replacement)


@pytest.mark.parametrize(
    "bad",
    ["", "kgt_", "kgt", "xyz_" + "A" * 36, "kgt-" + "A" * 36],
)
def test_malformed_tokens(bad):
    assert not FMT.token_well_formed(bad)


def test_token_length_and_prefix_are_checked():
    token = FMT.new_token()
    assert not FMT.token_well_formed(token + "A")
    assert not FMT.token_well_formed(token[:-1])
    assert not FMT.token_well_formed(" " + token)
    assert not FMT.token_well_formed(token + "\n")
    other = CredentialFormat("kgk", "abc")
    assert not other.token_well_formed(token)
    assert other.token_well_formed(other.new_token())
    assert not FMT.token_well_formed(other.new_token())


@given(st.data())
@hsettings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_random_tokens_validate_and_mutations_do_not(data):
    token = FMT.new_token()
    assert FMT.token_well_formed(token)
    position = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from(BASE62 + "_-"))
    if replacement == token[position]:
        return
    mutated = token[:position] + replacement + token[position + 1 :]
    assert not FMT.token_well_formed(mutated)


@given(st.text(alphabet=BASE62, min_size=36, max_size=36))
@hsettings(max_examples=300)
def test_made_up_tokens_validate_only_with_the_right_checksum(random_part):
    assert FMT.token_well_formed("kgt_" + random_part) == _crc_ok(random_part)


@given(st.lists(st.tuples(st.integers(0, 39), st.sampled_from(BASE62 + "_-")),
                min_size=1, max_size=5))
@hsettings(max_examples=300)
def test_random_mutations_almost_never_validate(changes):
    token = FMT.new_token()
    chars = list(token)
    for position, replacement in changes:
        chars[position] = replacement
    mutated = "".join(chars)
    if mutated == token:
        return
    # a CRC32 collision has probability 2**-32 per try: never in a few hundred
    assert not FMT.token_well_formed(mutated)


def _crc_ok(random_part: str) -> bool:
    body = "kgt_" + random_part[:30]
    number = zlib.crc32(body.encode())
    check = ""
    for _ in range(6):
        number, rem = divmod(number, 62)
        check = BASE62[rem] + check
    return check == random_part[30:]


def test_key_format_and_account():
    key = FMT.new_key("acme")
    assert re.fullmatch(rf"kgk-acme-[{CROCKFORD32}]{{10}}", key)
    assert FMT.key_account(key) == "acme"
    multi = FMT.new_key("my-shop-2")
    assert FMT.key_account(multi) == "my-shop-2"
    assert len({FMT.new_key("acme") for _ in range(200)}) == 200


@pytest.mark.parametrize(
    "bad",
    [
        "", "kgk-acme", "kgk-acme-", "kgk-acme-0123456789A", "kgk-acme-012345678",
        "kgk-acme-0123456U89",  # U is not Crockford base32
        "kgk-ACME-0123456789", "xyz-acme-0123456789", "kgk--0123456789",
        "kgk---0123456789", "kgk-acme_x-0123456789", "kgk-acme-01234567ab",
    ],
)
def test_key_account_refuses_malformed_keys(bad):
    assert FMT.key_account(bad) is None


def test_new_key_refuses_bad_account():
    with pytest.raises(ValueError, match="invalid account"):
        FMT.new_key("Bad_Account")


@pytest.mark.parametrize("good", ["acme", "a", "a1", "my-shop", "0", "a" * 63])
def test_valid_accounts(good):
    assert is_valid_account(good)


@pytest.mark.parametrize("bad", ["", "ACME", "-a", "a-", "a_b", "a.b", "a" * 64, "a b"])
def test_invalid_accounts(bad):
    assert not is_valid_account(bad)


def test_trailing_newline_is_not_an_account():
    assert not is_valid_account("acme\n")
    assert FMT.key_account("kgk-acme-0123456789\n") is None


def test_credential_format_refuses_bad_prefixes():
    for bad in ("", "K", "k", "has-dash", "x" * 11, "9ab"):
        with pytest.raises(ValueError):
            CredentialFormat(key_prefix=bad)
        with pytest.raises(ValueError):
            CredentialFormat(token_prefix=bad)


def test_hasher_digest_is_hmac_sha256_hex():
    token = FMT.new_token()
    hasher = TokenHasher([SECRET])
    expected = hmac.new(SECRET, token.encode(), hashlib.sha256).hexdigest()
    assert hasher.digest(token) == expected
    assert re.fullmatch(r"[0-9a-f]{64}", expected)
    assert hasher.digest(token) != hashlib.sha256(token.encode()).hexdigest()


def test_hasher_rotation():
    token = FMT.new_token()
    old = TokenHasher([OLD_SECRET]).digest(token)
    rotated = TokenHasher([SECRET, OLD_SECRET])
    # the current secret signs new digests
    assert rotated.digest(token) == TokenHasher([SECRET]).digest(token)
    # digests under the current and the previous secret both match
    assert rotated.matches(token, [old])
    assert rotated.matches(token, [rotated.digest(token)])
    # once the old secret is dropped, its digests stop matching
    assert not TokenHasher([SECRET]).matches(token, [old])
    # another secret altogether never matches
    assert not TokenHasher([b"z" * 40]).matches(token, [old])
    assert not TokenHasher([b"z" * 40]).matches(token, [rotated.digest(token)])


def test_hasher_matches_over_several_digests():
    hasher = TokenHasher([SECRET])
    old_token, new_token, stranger = FMT.new_token(), FMT.new_token(), FMT.new_token()
    stored = [hasher.digest(old_token), None, hasher.digest(new_token)]
    assert hasher.matches(old_token, stored)
    assert hasher.matches(new_token, stored)
    assert not hasher.matches(stranger, stored)
    assert not hasher.matches(old_token, [])
    assert not hasher.matches(old_token, [None, ""])
    assert not hasher.matches(old_token, ["0" * 64])


def test_hasher_needs_a_secret():
    with pytest.raises(ValueError):
        TokenHasher([])


# -- settings --------------------------------------------------------------------------
def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults():
    s = load_settings(env={})
    assert s.proxy_listen == ("127.0.0.1", 8080)
    assert s.management_listen == ("127.0.0.1", 8081)
    assert s.store_url == "memory://" and s.in_memory
    assert s.store_prefix == "kg:"
    assert s.key_header == "X-API-AppKey" and s.token_header == "X-API-AppToken"
    assert s.routes == []
    assert s.model_path == MODEL and s.policies_dir == POLICIES
    assert s.access_log is False
    assert all(source == "default" for source in s.source.values())
    assert set(s.source) == {setting.name for setting in SETTINGS}


def test_file_overrides_defaults(tmp_path):
    config = write(tmp_path / "k.toml", """
proxy_listen = "10.0.0.1:9999"
store_prefix = "app1:"
upstream_read_timeout = 12
access_log = true
policies_dir = "pol"
""")
    s = load_settings(config, env={})
    assert s.proxy_listen == ("10.0.0.1", 9999)
    assert s.store_prefix == "app1:"
    assert s.upstream_read_timeout == 12.0
    assert s.access_log is True
    # relative paths follow the config file
    assert s.policies_dir == (tmp_path / "pol").resolve()
    assert s.source["proxy_listen"] == str(config)
    assert s.source["management_listen"] == "default"


def test_environment_beats_file(tmp_path):
    config = write(tmp_path / "k.toml", 'proxy_listen = "10.0.0.1:9999"\nstore_prefix = "f:"\n')
    env = {"KEYGATE_PROXY_LISTEN": "127.0.0.1:7000", "KEYGATE_ACCESS_LOG": "yes",
           "KEYGATE_UPSTREAM_MAX_CONNECTIONS": "7"}
    s = load_settings(config, env=env)
    assert s.proxy_listen == ("127.0.0.1", 7000)
    assert s.source["proxy_listen"] == "environment KEYGATE_PROXY_LISTEN"
    assert s.store_prefix == "f:"
    assert s.access_log is True
    assert s.upstream_max_connections == 7


def test_routes_cannot_come_from_the_environment():
    s = load_settings(env={"KEYGATE_ROUTES": "[]", "KEYGATE_STORE_PREFIX": "e:"})
    assert s.routes == [] and s.source["routes"] == "default"
    assert s.store_prefix == "e:"


def test_unknown_setting_in_file(tmp_path):
    config = write(tmp_path / "k.toml", 'proxy_listen = "127.0.0.1:1"\nproxy_lisen = "x"\n')
    with pytest.raises(ConfigError, match="proxy_lisen") as info:
        load_settings(config, env={})
    assert str(config) in str(info.value)


def test_bad_listen_names_setting_and_source(tmp_path):
    config = write(tmp_path / "k.toml", 'proxy_listen = "localhost"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config, env={})
    assert "proxy_listen" in str(info.value) and str(config) in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_settings(env={"KEYGATE_PROXY_LISTEN": "127.0.0.1:99999"})
    assert "proxy_listen" in str(info.value)
    assert "environment KEYGATE_PROXY_LISTEN" in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KEYGATE_STORE_URL", "http://localhost"),
        ("KEYGATE_UPSTREAM_READ_TIMEOUT", "-1"),
        ("KEYGATE_UPSTREAM_MAX_CONNECTIONS", "many"),
        ("KEYGATE_ACCESS_LOG", "maybe"),
        ("KEYGATE_KEY_HEADER", "X API"),
        ("KEYGATE_KEY_PREFIX", "K-G"),
    ],
)
def test_bad_env_values(name, value):
    setting = name.removeprefix("KEYGATE_").lower()
    with pytest.raises(ConfigError, match=setting.split("_")[0]):
        load_settings(env={name: value})


def test_nan_is_not_a_positive_number():
    with pytest.raises(ConfigError, match="upstream_read_timeout"):
        load_settings(env={"KEYGATE_UPSTREAM_READ_TIMEOUT": "nan"})


def test_fractional_value_for_an_integer_setting_is_refused(tmp_path):
    config = write(tmp_path / "k.toml", "upstream_max_connections = 2.7\n")
    with pytest.raises(ConfigError, match="upstream_max_connections"):
        load_settings(config, env={})


def test_not_toml(tmp_path):
    config = write(tmp_path / "k.toml", "proxy_listen = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml", env={})


def test_real_store_needs_a_secret():
    s = load_settings(env={"KEYGATE_STORE_URL": "redis://127.0.0.1:1/0"})
    with pytest.raises(ConfigError, match="secret"):
        load_secrets(s)


def test_short_secret_is_refused():
    env = {"KEYGATE_STORE_URL": "redis://127.0.0.1:1/0",
           "KEYGATE_SECRET": "x" * (MIN_SECRET_LENGTH - 1)}
    with pytest.raises(ConfigError, match=str(MIN_SECRET_LENGTH)):
        load_secrets(load_settings(env=env))
    env["KEYGATE_SECRET"] = "x" * MIN_SECRET_LENGTH
    assert load_secrets(load_settings(env=env)) == ([b"x" * MIN_SECRET_LENGTH], False)


def test_secret_file_lines_are_a_rotation_list(tmp_path):
    current, previous = "c" * 40, "p" * 40
    secret_file = write(tmp_path / "secret", f"{current}\n\n  {previous}  \n")
    s = load_settings(env={"KEYGATE_STORE_URL": "redis://127.0.0.1:1/0",
                           "KEYGATE_SECRET_FILE": str(secret_file)})
    found, generated = load_secrets(s)
    assert found == [current.encode(), previous.encode()]
    assert generated is False


def test_secret_file_with_a_short_line_is_refused(tmp_path):
    secret_file = write(tmp_path / "secret", "c" * 40 + "\nshort\n")
    s = load_settings(env={"KEYGATE_STORE_URL": "redis://127.0.0.1:1/0",
                           "KEYGATE_SECRET_FILE": str(secret_file)})
    with pytest.raises(ConfigError, match="secret"):
        load_secrets(s)


def test_missing_secret_file_names_the_setting(tmp_path):
    s = load_settings(env={"KEYGATE_SECRET_FILE": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="secret_file"):
        load_secrets(s)


def test_relative_secret_file_follows_the_config_file(tmp_path, monkeypatch):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    write(conf_dir / "secret", "c" * 40 + "\n")
    config = write(conf_dir / "k.toml",
                   'store_url = "redis://127.0.0.1:1/0"\nsecret_file = "secret"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    found, _ = load_secrets(load_settings(config, env={}))
    assert found == [b"c" * 40]


def test_memory_store_generates_a_secret():
    s = load_settings(env={})
    first, generated = load_secrets(s)
    assert generated is True
    assert len(first) == 1 and len(first[0]) >= 32
    second, _ = load_secrets(s)
    assert first != second


# -- routes ----------------------------------------------------------------------------
UP = "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("route", "field"),
    [
        ({"account": "acme", "resource": "orders"}, "upstream"),
        ({"upstream": "ftp://x", "account": "acme", "resource": "orders"}, "upstream"),
        ({"upstream": UP, "account": "Acme!", "resource": "orders"}, "account"),
        ({"upstream": UP, "account": "acme", "account_from": "host", "resource": "orders"},
         "account"),
        ({"upstream": UP, "account": "acme", "account_from": "path", "account_segment": 2,
          "resource": "orders"}, "account"),
        ({"upstream": UP, "resource": "orders"}, "account_from"),
        ({"upstream": UP, "account_from": "path", "resource": "orders"}, "account_segment"),
        ({"upstream": UP, "account": "acme", "resource": "orders", "colour": "red"}, "colour"),
        ({"upstream": UP, "account": "acme", "resource": "orders", "action": "rm -rf"},
         "action"),
        ({"upstream": UP, "account": "acme", "resource": "orders", "actions": {"GET": 1}},
         "actions"),
        ({"upstream": UP, "account": "acme"}, "resource"),
        ({"upstream": UP, "account": "acme", "resource": "o", "path_prefix": "/../x"},
         "path_prefix"),
        ({"upstream": UP, "account": "acme", "resource": "o", "strip_prefix": "yes"},
         "strip_prefix"),
        ({"upstream": UP, "account": "acme", "resource": "o",
          "identity_token_audience": "billing"}, "identity_token_audience"),
        ({"upstream": UP, "account": "acme", "resource": "o", "identity_token": True,
          "identity_token_audience": ""}, "identity_token_audience"),
        ({"upstream": UP, "account": "acme", "resource": "o", "identity_token": True,
          "identity_token_audience": "a\nb"}, "identity_token_audience"),
        ({"upstream": UP, "account": "acme", "resource": "o", "identity_token": True,
          "identity_token_audience": "x" * 257}, "identity_token_audience"),
        ({"upstream": UP, "account": "acme", "resource": "o", "identity_token": True,
          "identity_token_audience": ["billing"]}, "identity_token_audience"),
    ],
)
def test_route_errors_name_the_field(route, field):
    good = {"upstream": UP, "account": "acme", "resource": "orders"}
    with pytest.raises(ConfigError) as info:
        parse_routes([good, route])
    assert f"routes[1].{field}" in str(info.value)


def test_duplicate_route_names():
    route = {"name": "same", "upstream": UP, "account": "acme", "resource": "orders"}
    with pytest.raises(ConfigError, match=r"routes\[1\]\.name"):
        parse_routes([route, dict(route)])


def test_valid_routes_parse_and_match():
    table = parse_routes([
        {"name": "orders", "upstream": UP, "path_prefix": "/orders/", "account": "acme",
         "resource": "orders", "actions": {"delete": "admin"}},
        {"name": "per", "upstream": UP, "path_prefix": "/accounts", "account_from": "path",
         "account_segment": 2, "resource": "orders"},
    ])
    route = table.match("DELETE", "x", "/orders/1")
    assert route is not None and route.name == "orders"
    assert route.action_for("DELETE") == "admin" and route.action_for("GET") == "read"
    assert route.action_for("POST") == "write"
    assert table.match("GET", "x", "/ordersX") is None
    per = table.match("GET", "x", "/accounts/beta/orders")
    assert per is not None and per.account_for("x", "/accounts/beta/orders") == "beta"


@pytest.mark.parametrize("segment", [1, 2, 3])
@pytest.mark.parametrize(
    "path",
    ["/", "/accounts", "/accounts/", "/accounts/acme", "/accounts/acme/",
     "/accounts/acme/orders/1", "/a/b/c/d/e"],
)
def test_account_from_path_segment_counts_from_the_first_segment(path, segment):
    route = parse_routes([{"name": "r", "upstream": UP, "account_from": "path",
                           "account_segment": segment, "resource": "orders"}]).routes[0]
    segments = path.strip("/").split("/")
    expected = segments[segment - 1] if segment <= len(segments) else ""
    if expected in ("acme", "accounts", "orders", "a", "b", "c", "1"):
        assert route.account_for("x", path) == expected
    else:
        with pytest.raises(BadRequest, match=f"path segment {segment}"):
            route.account_for("x", path)


# -- policy ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.load(MODEL, POLICIES)


API_ACTIONS = ("view", "edit", "renew-token", "edit-settings")


def test_owner_may_do_everything(policy):
    for resource, action in [("orders", "read"), ("orders", "write"), ("catalog", "read"),
                             ("api-keys", "edit"), ("anything", "whatever")]:
        assert policy.decide(["owner"], "acme", resource, action)
        assert policy.decide(["owner"], "beta", resource, action)


def test_user_admin_restricted_has_the_four_api_keys_actions_only(policy):
    for action in API_ACTIONS:
        assert policy.decide(["user-admin-restricted"], "acme", "api-keys", action)
    assert not policy.decide(["user-admin-restricted"], "acme", "api-keys", "delete-all")
    assert not policy.decide(["user-admin-restricted"], "acme", "orders", "read")
    assert not policy.decide(["user-admin-restricted"], "acme", "catalog", "read")


def test_api_keys_viewer_only_views(policy):
    assert policy.decide(["api-keys-viewer"], "acme", "api-keys", "view")
    for action in API_ACTIONS[1:]:
        assert not policy.decide(["api-keys-viewer"], "acme", "api-keys", action)


def test_orders_writer_inherits_orders_reader(policy):
    assert policy.decide(["orders-writer"], "acme", "orders", "write")
    assert policy.decide(["orders-writer"], "acme", "orders", "read")
    assert policy.decide(["orders-reader"], "acme", "orders", "read")
    assert not policy.decide(["orders-reader"], "acme", "orders", "write")
    assert not policy.decide(["orders-writer"], "acme", "catalog", "read")
    assert not policy.decide(["orders-writer"], "acme", "api-keys", "view")


def test_deny_beats_allow_across_roles(policy):
    for roles in (["owner", "suspended-partner"], ["suspended-partner", "orders-writer"]):
        assert not policy.decide(roles, "acme", "orders", "read")
        assert not policy.decide(roles, "acme", "orders", "write")
    # the deny is about orders only
    assert policy.decide(["owner", "suspended-partner"], "acme", "api-keys", "edit")
    assert not policy.decide(["suspended-partner"], "acme", "api-keys", "edit")


def test_no_roles_and_unknown_roles_are_denied(policy):
    assert not policy.decide([], "acme", "orders", "read")
    assert not policy.decide(["no-such-role"], "acme", "orders", "read")


def test_roles_and_unknown_roles(policy):
    assert {"owner", "user-admin-restricted", "api-keys-viewer", "orders-reader",
            "orders-writer", "catalog-reader", "suspended-partner"} <= policy.roles
    assert policy.unknown_roles(["owner", "nope", "orders-reader", "zz"]) == ["nope", "zz"]


def test_explain_names_the_matching_lines(policy):
    allowed, lines = policy.explain(["orders-writer"], "acme", "orders", "read")
    assert allowed
    assert lines == [["orders-reader", "*", "orders", "read", "allow"]]
    denied, lines = policy.explain(["owner", "suspended-partner"], "acme", "orders", "read")
    assert not denied
    assert ["suspended-partner", "*", "orders", "*", "deny"] in lines


def make_policies(tmp_path: Path, text: str, name: str = "p.csv") -> Path:
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(text, encoding="utf-8")
    return directory


def test_account_specific_line_only_applies_in_that_account(tmp_path):
    directory = make_policies(tmp_path, """
p, beta-auditor, beta, orders, read, allow
p, everyone-reader, *, orders, read, allow
p, everyone-reader, gamma, orders, read, deny
""")
    policy = Policy.load(MODEL, directory)
    assert policy.decide(["beta-auditor"], "beta", "orders", "read")
    assert not policy.decide(["beta-auditor"], "acme", "orders", "read")
    assert not policy.decide(["beta-auditor"], "beta", "orders", "write")
    assert policy.decide(["everyone-reader"], "acme", "orders", "read")
    assert not policy.decide(["everyone-reader"], "gamma", "orders", "read")


def test_wildcard_resources(tmp_path):
    directory = make_policies(tmp_path, "p, r, *, orders/*, read, allow\n")
    policy = Policy.load(MODEL, directory)
    assert policy.decide(["r"], "acme", "orders/eu", "read")
    assert not policy.decide(["r"], "acme", "catalog", "read")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("# ok\np, r, *, orders, read, allow\np, r, *, orders, read\n", 3, "5 values"),
        ("p, r, *, orders, read, allow\n\np, r, *, orders, read, maybe\n", 3, "effect"),
        ("p, r, *, orders, read, allow\nx, r, q\n", 2, "p or g"),
        ("g, a, b, c\n", 1, "2 values"),
        ("p, r, Acme, orders, read, allow\n", 1, "account"),
        ("p, bad role, *, orders, read, allow\n", 1, "role"),
        ("g, a, a\n", 1, "itself"),
        ("p, a, *, orders, read, allow\ng, a, b\ng, b, c\ng, c, a\n", None, "cycle"),
    ],
)
def test_invalid_policy_files_are_refused(tmp_path, text, line, fragment):
    directory = make_policies(tmp_path, text, name="team.csv")
    with pytest.raises(ConfigError) as info:
        Policy.load(MODEL, directory)
    message = str(info.value)
    assert "team.csv" in message
    assert fragment in message
    if line is not None:
        assert f"line {line}" in message
    else:
        assert re.search(r"line [234]\b", message)


def test_missing_policies_and_model(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="policies_dir"):
        Policy.load(MODEL, empty)
    with pytest.raises(ConfigError, match="policies_dir"):
        Policy.load(MODEL, tmp_path / "missing")
    with pytest.raises(ConfigError, match="model_path"):
        Policy.load(tmp_path / "missing.conf", POLICIES)


def test_policy_version_follows_the_lines(tmp_path):
    directory = make_policies(tmp_path, "p, r, *, orders, read, allow\n")
    first = Policy.load(MODEL, directory).version
    assert Policy.load(MODEL, directory).version == first
    # comments and blank lines do not change what is authorized, nor the version
    make_policies(tmp_path, "# note\n\np, r, *, orders, read, allow\n")
    assert Policy.load(MODEL, directory).version == first
    make_policies(tmp_path, "p, r, *, orders, write, allow\n")
    changed = Policy.load(MODEL, directory).version
    assert changed != first
    make_policies(tmp_path, "p, r, *, orders, write, deny\n")
    assert Policy.load(MODEL, directory).version not in (first, changed)


def test_policies_from_several_files_are_merged(tmp_path):
    make_policies(tmp_path, "p, a, *, orders, read, allow\n", name="1.csv")
    directory = make_policies(tmp_path, "g, b, a\np, b, *, orders, read, deny\n",
                              name="2.csv")
    (directory / "ignored.txt").write_text("nonsense\n")
    policy = Policy.load(MODEL, directory)
    assert policy.decide(["a"], "acme", "orders", "read")
    assert not policy.decide(["b"], "acme", "orders", "read")
    assert policy.lines == 3


@pytest.mark.parametrize("url", [
    "redis://:hunter2@h:6379/0", "redis://user:hunter2@h/0", "redis://:ab/hunter2@h:1/0",
    "redis://:a?hunter2@h/0", "redis://:a#hunter2@h/0", "redis://:a@hunter2@h/0",
    "redis+sentinel://:hunter2/x@h1:1,h2:2/svc", "redis+cluster://u:hun/ter2/hunter2@h:7000",
    "redis://h/0?password=hunter2", "redis+sentinel://h:1/s?sentinel_password=hunter2&x=1",
])
def test_what_an_error_shows_of_a_store_url_holds_no_password(url):
    shown = url_without_passwords(url)
    assert "hunter2" not in shown and "***" in shown, shown


@pytest.mark.parametrize("reply, unavailable", [
    ("NOREPLICAS Not enough good replicas to write.", True),
    # inside a transaction, as redis-py up to 8.1 words it, then from 8.2
    ("Command # 1 (INCRBY kg:rl:a:1:127.0.0.1 1) of pipeline caused error: "
     "('NOREPLICAS Not enough good replicas to write.',)", True),
    ("Command # 1 (INCRBY kg:rl:a:1:127.0.0.1 1) of pipeline caused error: "
     "NOREPLICAS Not enough good replicas to write.", True),
    ("Command # 1 (INCRBY kg:x 1) of pipeline caused error: "
     "WRONGTYPE Operation against a key holding the wrong kind of value", False),
    ("ERR value is not an integer or out of range", False),
])
def test_a_store_that_refuses_writes_is_unavailable_however_the_client_words_it(
        reply, unavailable):
    """A NOREPLICAS reply is a 503 (the store cannot serve now), in a transaction too,
    whatever the client library's wording; any other refusal is a bug, not a 503."""
    assert store_unavailable(redis.exceptions.ResponseError(reply)) is unavailable
