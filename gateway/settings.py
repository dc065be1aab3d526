"""One table of settings feeds the defaults, the TOML file, the environment and the docs.

Precedence, lowest to highest: the default in :data:`SETTINGS`, the TOML file given to
``--config``, then ``KEYGATE_<NAME>`` environment variables. ``routes`` is the one
structured setting; it lives in the TOML file and is validated by :mod:`gateway.routes`.
Every problem is a :class:`~gateway.errors.ConfigError` naming the setting and where the
value came from, raised before anything listens.
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import math
import os
import re
import secrets
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .credentials import CredentialFormat
from .errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # a checkout's root (tests, tools)
# The shipped model, policies and demo config travel inside the package, so an installed
# keygate finds them wherever it lives. In a checkout gateway/defaults/ holds symlinks to
# the top-level model.conf, policies/ and deploy/demo.toml; resolving them makes every
# message name the file people edit. (A zip import is not supported: Casbin reads files.)
DEFAULTS_DIR = Path(str(importlib.resources.files(__package__) / "defaults"))


def shipped_default(name: str) -> Path:
    """A file or directory shipped in ``gateway/defaults``, symlinks resolved."""
    return (DEFAULTS_DIR / name).resolve()


MIN_SECRET_LENGTH = 32


def _listen(value: Any) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT with a port from 0 to 65535")
    return host, int(port)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _header(value: Any) -> str:
    value = _str(value)
    if not value or not all(c.isalnum() or c in "-_" for c in value):
        raise ValueError("expected an HTTP header name (letters, digits, '-' and '_')")
    return value


def store_url_setting(value: Any) -> str:
    """A ``store_url`` value checked (the same rules for ``keygate store copy --to``)."""
    value = _str(value)
    if value.lower().startswith("redis+sentinel://"):
        from .store.connection import parse_sentinel_url  # the store owns the format

        parse_sentinel_url(value)
        return value
    if value.lower().startswith("redis+cluster://"):
        from .store.connection import parse_cluster_url

        parse_cluster_url(value)
        return value
    if not value.startswith(("memory://", "redis://", "rediss://", "unix://")):
        raise ValueError("expected memory://, redis://HOST:PORT/DB, rediss://…, unix://PATH, "
                         "redis+sentinel://HOST:PORT,…/SERVICE or redis+cluster://HOST:PORT,…")
    if not value.startswith("memory://"):
        from .store.connection import check_redis_url

        check_redis_url(value)
    return value


def url_without_passwords(value: Any) -> str:
    """A store URL as an error message may show it: credentials replaced by ***."""
    if not isinstance(value, str):
        return repr(value)
    # up to the last '@': a password may hold '/', '?' or '#' (showing too little of a
    # URL is the safe mistake)
    shown = re.sub(r"//.*@", "//***@", value)
    shown = re.sub(r"(password=)[^&#]*", r"\1***", shown, flags=re.IGNORECASE)
    return repr(shown if len(shown) <= 300 else shown[:300] + "…")


def withheld(value: Any) -> str:
    """A secret setting's value as an error message shows it: its type, never itself
    (``secret = ["old", "new"]`` in the config file is an easy mistake to make)."""
    return f"a value of type {type(value).__name__} (withheld: it may be the secret)"


def _positive(kind: type) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if isinstance(value, str):
            value = kind(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("expected a positive number")
        if not math.isfinite(value) or value <= 0:
            raise ValueError("expected a positive, finite number")
        if kind is int and value != int(value):
            raise ValueError("expected a whole number")
        return kind(value)

    return parse


def _non_negative_int(value: Any) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected a whole number, 0 or more")
    return value


def _non_negative_number(value: Any) -> float:
    if isinstance(value, str):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a number, 0 or more")
    if not math.isfinite(value) or value < 0:
        raise ValueError("expected a finite number, 0 or more")
    return float(value)


def _interval(value: Any) -> float:
    """Seconds, or 0 for off; a tiny interval would spend the process polling."""
    if isinstance(value, str):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("expected 0 (off) or a number of seconds")
    if value != 0 and value < 0.1:
        raise ValueError("expected 0 (off) or at least 0.1 seconds")
    return float(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    words = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False}
    if isinstance(value, str) and value.lower() in words:
        return words[value.lower()]
    raise ValueError("expected true or false")


def _path(value: Any) -> Path:
    return Path(_str(value)).expanduser()


def _optional_path(value: Any) -> Path | None:
    return _path(value) if _str(value) else None


def _optional_listen(value: Any) -> tuple[str, int] | None:
    if value == "" or value is None:
        return None
    return _listen(value)


def _paths(value: Any) -> tuple[Path, ...]:
    """Paths as a TOML list, or comma-separated in the environment."""
    if isinstance(value, str):
        value = [v for v in (part.strip() for part in value.split(",")) if v]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("expected a list of file paths")
    return tuple(Path(v).expanduser() for v in value)


def _non_negative_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("expected a number of seconds")
    try:
        number = float(value)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not 0 <= number <= 3600:
        raise ValueError("expected 0 to 3600 seconds")
    return number


def _cookie_name(value: Any) -> str:
    """RFC 6265 cookie-name (a token), or empty."""
    text = _str(value)
    if text and not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}", text):
        raise ValueError("expected a cookie name (letters, digits and !#$%&'*+-.^_`|~)")
    return text


def _networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """CIDRs as a TOML list, or comma-separated in the environment."""
    if isinstance(value, str):
        value = [v for v in (part.strip() for part in value.split(",")) if v]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of addresses or CIDRs, e.g. [\"10.0.0.0/8\"]")
    try:
        return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in value)
    except ValueError as exc:
        raise ValueError(f"not an address or CIDR ({exc})") from None


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"expected one of: {', '.join(allowed)}")
        return value

    return parse


def _routes(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise ValueError("expected a list of [[routes]] tables")
    return value


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    parse: Callable[[Any], Any] = _str
    env: bool = True
    shown: Callable[[Any], str] = repr  # how an error message quotes a wrong value


SETTINGS: tuple[Setting, ...] = (
    Setting("proxy_listen", "127.0.0.1:8080", "Address of the proxy port.", _listen),
    Setting("management_listen", "127.0.0.1:8081",
            "Address of the management API port (keep it off the public network).", _listen),
    Setting("store_url", "memory://",
            "Key store: redis://HOST:PORT/DB, rediss://… or unix://PATH; "
            "redis+sentinel://HOST:PORT,HOST:PORT,…/SERVICE for a master found through "
            "Redis Sentinel (see Redis Sentinel); redis+cluster://HOST:PORT,HOST:PORT,… for "
            "a Redis Cluster (see Redis Cluster). memory:// is an in-process store for "
            "trying keygate out; it keeps nothing.", store_url_setting,
            shown=url_without_passwords),
    Setting("store_max_connections", 100,
            "Redis connections per process; more concurrent store calls wait for one.",
            _positive(int)),
    Setting("store_prefix", "kg:",
            "Prefix of every Redis key keygate writes, so deployments can share a Redis."),
    Setting("secret", "",
            "Server secret for hashing tokens (≥ 32 characters). Prefer the environment "
            "(KEYGATE_SECRET) or secret_file to writing it into the config file.",
            shown=withheld),
    Setting("secret_file", "",
            "File holding the server secret; more lines are previous secrets still accepted "
            "during a rotation (first line signs new tokens).", _optional_path),
    Setting("key_header", "X-API-AppKey", "Request header carrying the API key.", _header),
    Setting("token_header", "X-API-AppToken", "Request header carrying the API token.", _header),
    Setting("identity_header_prefix", "X-Keygate-",
            "Prefix of the identity headers added upstream; client-sent headers with this "
            "prefix are always removed.", _header),
    Setting("key_prefix", "kgk", "First part of every generated API key."),
    Setting("token_prefix", "kgt", "Prefix of every token (lets secret scanners find leaks)."),
    Setting("model_path", str(shipped_default("model.conf")), "Casbin model file.", _path),
    Setting("policies_dir", str(shipped_default("policies")),
            "Directory whose *.csv files hold the Casbin policy lines.", _path),
    Setting("policy_watch_interval", 0.0,
            "Seconds between checks of model_path and the policy files for changes; a "
            "change reloads the policy as SIGHUP does (validated, announced to the other "
            "instances). 0: off, reload with SIGHUP or POST /api/v1/policy/reload.",
            _interval),
    Setting("upstream_connect_timeout", 5.0,
            "Seconds to connect to an upstream before answering 504.", _positive(float)),
    Setting("upstream_read_timeout", 60.0,
            "Seconds an upstream may stay silent before keygate answers 504.", _positive(float)),
    Setting("upstream_max_connections", 1000,
            "Connections keygate keeps open to all upstreams together.", _positive(int)),
    Setting("upstream_idle_timeout", 15.0,
            "Seconds an idle keep-alive connection to an upstream is kept for reuse; keep it "
            "below the upstream's own keep-alive timeout.", _positive(float)),
    Setting("max_credential_length", 256,
            "Longer key or token headers are refused with 400 before any lookup.",
            _positive(int)),
    Setting("management_max_body", 65536,
            "Largest management API request body in bytes.", _positive(int)),
    Setting("token_link_ttl", 86400.0,
            "Seconds a one-time token link stays valid if nobody opens it.", _positive(float)),
    Setting("management_public_url", "",
            "Base URL of the management port as integrators reach it, for one-time token "
            "links (default: the scheme and host the request that made the link was sent "
            "to; behind trusted_proxies, the X-Forwarded-Proto and -Host they set)."),
    Setting("audit_max_events", 100000,
            "Audit events kept per account (older ones are trimmed).", _positive(int)),
    Setting("search_index_max_keys", 2000000,
            "Keys whose labels each process copies to answer q in accounts of at least "
            "20,000 keys (about 240 bytes per key kept; making an account's copy, one at a "
            "time, holds about 700 bytes per key of that account for a few seconds; 0 "
            "answers q in Redis alone).",
            _non_negative_int),
    Setting("last_used_interval", 60.0,
            "Seconds between writes of a key's last-used time (batched, off the request "
            "path).", _positive(float)),
    Setting("denial_sample_seconds", 60.0,
            "An access denial of a key on a resource is written to the audit log at most "
            "once per this many seconds, with the count since the last sample.",
            _positive(float)),
    Setting("credential_cache_size", 100000,
            "Keys whose record and grants each process caches (0 turns the cache off). "
            "Changes reach every process at once over Redis pub/sub.", _non_negative_int),
    Setting("credential_cache_ttl", 60.0,
            "Seconds a cached key record may be used at most (a safety net; changes "
            "invalidate it at once).", _positive(float)),
    Setting("unknown_key_cache_ttl", 2.0,
            "Seconds an unknown key is remembered as unknown (in a separate small cache).",
            _positive(float)),
    Setting("decision_cache_size", 100000,
            "Authorization decisions each process caches, keyed by roles, account, "
            "resource, action and policy version.", _positive(int)),
    Setting("header_timeout", 10.0,
            "Seconds a client has, from connecting (or from the first byte of its next "
            "request on a kept-alive connection), to send a complete request head; slower "
            "clients are disconnected (slowloris).", _positive(float)),
    Setting("keepalive_timeout", 60.0,
            "Seconds an idle keep-alive client connection is kept open between requests.",
            _positive(float)),
    Setting("body_timeout", 30.0,
            "Seconds a client may pause while sending a request body before its connection "
            "is closed.", _positive(float)),
    Setting("body_min_rate", 500.0,
            "Bytes per second a client must send a request body at, on average from the "
            "start of its request, once body_timeout has passed; a slower client is "
            "disconnected (a byte now and then would hold its connection, which the "
            "max_connections cap cannot evict, for ever). 0: off.", _non_negative_number),
    Setting("max_connections", 0,
            "Client connections each process holds on all its ports together. 0 derives it "
            "from the file descriptor limit, keeping room for upstream and store "
            "connections. At the cap, the oldest connection that is idle or still sending "
            "its head is closed to make room; if there is none, a new one gets 503.",
            _non_negative_int),
    Setting("trusted_proxies", [],
            "Addresses or CIDRs of load balancers in front of keygate. From them, "
            "X-Forwarded-For is extended and the client address (for rate limits and logs) "
            "is the first untrusted address in it; from anyone else it is replaced.",
            _networks),
    Setting("auth_failure_limit", 30,
            "Failed authentications (unknown key, wrong token) allowed per client address "
            "per auth_failure_window, counted in the store across workers and instances; "
            "once they are spent, 429 with Retry-After until the window ends.",
            _positive(int)),
    Setting("auth_failure_key_limit", 30,
            "Wrong tokens allowed per API key per auth_failure_window; past it, wrong tokens "
            "for that key get 429 (the right token still works).", _positive(int)),
    Setting("auth_failure_window", 60.0,
            "Seconds of the failed-authentication budgets.", _positive(float)),
    Setting("decision_listen", "",
            "Address of the decision API, for nginx auth_request, Traefik ForwardAuth and "
            "Envoy ext_authz in front of keygate (empty: off; keep it on loopback or a "
            "private network: it answers who a request's credentials belong to).",
            _optional_listen),
    Setting("decision_original_method_header", "X-Original-Method",
            "Header in which nginx passes the original request's method to the decision "
            "API.", _header),
    Setting("decision_original_uri_header", "X-Original-URI",
            "Header in which nginx passes the original request's URI to the decision API.",
            _header),
    Setting("decision_envoy_prefix", "/envoy",
            "Path prefix under which Envoy's ext_authz HTTP service sends the original path "
            "to the decision API (its path_prefix).", _str),
    Setting("jwt_algorithm", "ES256",
            "Algorithm of the JWT signing keys keygate generates: ES256 (P-256) or EdDSA "
            "(Ed25519).", _choice("ES256", "EdDSA")),
    Setting("jwt_private_key_files", [],
            "PEM files of JWT signing keys (P-256 or Ed25519, unencrypted), the first "
            "signing and the others still verifying; empty: keygate generates one into the "
            "store, sealed under the server secret, and `keygate jwt rotate` adds the "
            "next.", _paths),
    Setting("jwt_issuer", "keygate", "The iss claim of keygate's session and identity "
            "tokens, checked when a session comes back.", _str),
    Setting("jwt_audience", "keygate", "The aud claim of session tokens (identity tokens "
            "have their own, identity_token_audience).", _str),
    Setting("jwt_leeway", 10.0, "Seconds of clock skew allowed when checking a token's exp, "
            "nbf and iat.", _non_negative_float),
    Setting("session_ttl", 21600, "Seconds a session token from POST /api/v1/auth/login "
            "lives (6 hours by default).", _positive(int)),
    Setting("session_cookie", "keygate_session",
            "Cookie that may carry a session token instead of Authorization: Bearer; "
            "login over TLS names it __Host-<name>, and every port then reads "
            "that name alone (empty: sessions only in the Authorization header).",
            _cookie_name),
    Setting("identity_token_header", "X-Keygate-Identity",
            "Header carrying the signed identity token to the upstream, on routes with "
            "identity_token = true (client-sent values are always removed).", _header),
    Setting("identity_token_audience", "keygate-upstream",
            "The aud claim of identity tokens: what upstreams check (never the sessions' "
            "audience, so an identity token cannot be used as a session).", _str),
    Setting("identity_token_ttl", 60, "Seconds an identity token sent upstream lives.",
            _positive(int)),
    Setting("metrics_listen", "127.0.0.1:9108",
            "Address of the Prometheus /metrics port (empty: off). Keep it off the public "
            "network; it is never served beside the management API.", _optional_listen),
    Setting("renewal_gauge_interval", 300.0,
            "Seconds between background recomputations of the renewal-alert gauge (a scrape "
            "only reads the last result).", _positive(float)),
    Setting("audit_max_access_events", 10000,
            "Access events (sampled denials) kept per account, apart from change events, so "
            "that no volume of requests can push a change out of the audit log.",
            _positive(int)),
    Setting("access_log", False,
            "Write an access log line per request to standard error.", _bool),
    Setting("log_format", "text",
            "How log lines look on standard error: text (for people) or json (one JSON "
            "object per line, for log shippers).", _choice("text", "json")),
    Setting("shutdown_timeout", 30.0,
            "Seconds a stopping keygate (SIGTERM) lets requests in flight finish after it "
            "stops accepting connections; then it closes them, writes what is batched and "
            "closes the store.", _positive(float)),
    Setting("routes", [], "Route table: [[routes]] tables, see the README.", _routes, env=False),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    values: Mapping[str, Any]
    source: Mapping[str, str] = field(default_factory=dict)
    config_dir: Path | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "values":  # copy/pickle probe before init
            raise AttributeError(name)
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def in_memory(self) -> bool:
        return self.store_url.startswith("memory://")

    @property
    def credential_format(self) -> CredentialFormat:
        return CredentialFormat(self.key_prefix, self.token_prefix)

    def with_values(self, **changes: Any) -> Settings:
        values = dict(self.values)
        for name, raw in changes.items():
            values[name] = _parse(_BY_NAME[name], raw, "code")
        return Settings(values, self.source, self.config_dir)


def _parse(setting: Setting, raw: Any, origin: str) -> Any:
    try:
        return setting.parse(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"setting {setting.name} (from {origin}): {exc}; got {setting.shown(raw)}"
        ) from None


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults ← TOML file ← ``KEYGATE_*`` environment; relative paths follow the file."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    source: dict[str, str] = {}
    config_dir = None
    if config_file is not None:
        path = Path(config_file)
        config_dir = path.resolve().parent
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: not valid TOML ({exc})") from None
        unknown = sorted(set(raw) - set(_BY_NAME))
        if unknown:
            raise ConfigError(
                f"config file {path}: unknown setting {unknown[0]!r}; "
                f"known settings: {', '.join(_BY_NAME)}"
            )
        source = {name: str(path) for name in raw}

    values: dict[str, Any] = {}
    for setting in SETTINGS:
        env_name = "KEYGATE_" + setting.name.upper()
        if setting.env and env_name in env:
            values[setting.name] = _parse(setting, env[env_name], f"environment {env_name}")
            source[setting.name] = f"environment {env_name}"
        elif setting.name in raw:
            values[setting.name] = _parse(setting, raw[setting.name], source[setting.name])
        else:
            values[setting.name] = setting.parse(setting.default)
            source[setting.name] = "default"
        from_file = source[setting.name] != "default"
        if isinstance(values[setting.name], Path) and config_dir and from_file:
            values[setting.name] = (config_dir / values[setting.name]).resolve()
        elif setting.parse is _paths and config_dir and from_file:
            values[setting.name] = tuple((config_dir / p).resolve() for p in values[setting.name])
    settings = Settings(values, source, config_dir)
    try:
        settings.credential_format  # noqa: B018 - validates the prefixes early
    except ValueError as exc:
        raise ConfigError(f"setting key_prefix/token_prefix: {exc}") from None
    return settings


def load_secrets(settings: Settings) -> tuple[list[bytes], bool]:
    """The server secrets, current first, and whether they were generated for this run.

    A real store refuses to start without a secret: tokens hashed under a throwaway
    secret would all stop working at the next restart.
    """
    found: list[str] = []
    if settings.secret:
        found.append(settings.secret)
    if settings.secret_file:
        try:
            text = settings.secret_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"setting secret_file: cannot read {settings.secret_file} ({exc.strerror})"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(
                f"setting secret_file: {settings.secret_file} is not UTF-8 text (a secret "
                "is text: generate one with python -c 'import secrets; "
                "print(secrets.token_urlsafe(48))')"
            ) from None
        found.extend(line.strip() for line in text.splitlines() if line.strip())
    for value in found:
        if len(value) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"setting secret: a server secret must be at least {MIN_SECRET_LENGTH} "
                f"characters (generate one with: python -c 'import secrets; "
                f"print(secrets.token_urlsafe(48))')"
            )
    if found:
        return [v.encode() for v in found], False
    if settings.in_memory:
        return [secrets.token_bytes(32)], True
    raise ConfigError(
        "setting secret: no server secret, and store_url is a real store; set KEYGATE_SECRET "
        "or secret_file (tokens are hashed with it, so it must survive restarts)"
    )


def reference_markdown() -> str:
    """The config reference for the README, generated from the table."""
    lines = ["| setting | environment | default | meaning |", "|---|---|---|---|"]
    # the shipped files' place on this machine means nothing to a reader
    shown = {str(shipped_default(n)): f"<package>/defaults/{n}" for n in ("model.conf", "policies")}
    for s in SETTINGS:
        env_name = f"`KEYGATE_{s.name.upper()}`" if s.env else "(file only)"
        default = s.default
        if isinstance(default, str):
            default = shown.get(default, default)
        lines.append(f"| `{s.name}` | {env_name} | `{default!r}` | {s.help} |")
    return "\n".join(lines)
