"""The one module that reads the environment (and the equivalent command-line flags).

Every setting is an environment variable and a flag of the same name (``LEASE_TTL`` and
``--lease-ttl``); a flag wins over the variable. A bad value stops start-up with a message that
names the variable and what it accepts. Everything else receives the typed ``Settings``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

import msgspec
from redis.asyncio.connection import parse_url

from broker import BrokerSettings, ConfigError, Strategy
from broker.constants import (
    DEFAULT_BREAKER_FAILURE_RATIO,
    DEFAULT_BREAKER_MIN_CALLS,
    DEFAULT_BREAKER_TIMEOUT_MS,
    DEFAULT_BREAKER_WINDOW,
    DEFAULT_SENTINEL_MASTER,
)
from broker.shard_layout import MAX_SHARDS

__all__ = [
    "FAMILIES",
    "GROUPS",
    "HELP",
    "SECRET_SETTINGS",
    "STORE_SETTINGS",
    "Listen",
    "SessionHeader",
    "Settings",
    "flag_name",
    "load_settings",
    "parse_session_header",
]

#: The rate-limit header families proxy.request.ratelimit_headers reads: what
#: RATE_LIMIT_HEADER_FAMILIES accepts.
FAMILIES = ("openai", "anthropic", "github", "ietf")

Seconds = Annotated[float, msgspec.Meta(ge=0, le=86_400 * 7)]

#: What each setting accepts, declared once by group: ``--help``, every error about a setting
#: and the reference docs/configuration.md (``python -m proxy.config.reference``) read it.
GROUPS: dict[str, dict[str, str]] = {
    "Upstream": {
        "UPSTREAM_URL": "the upstream base URL, http:// or https://; the client's path and query "
        "are appended (required for serve, unless every pool has its own upstream_url)",
        "SESSION_HEADER": "'Header-Name: template' where the template contains {secret}, e.g. "
        "'Cookie: session-token={secret}' or 'x-api-key: {secret}'",
        "UPSTREAM_CONNECT_TIMEOUT": "seconds to connect to the upstream, more than 0",
        "UPSTREAM_READ_TIMEOUT": "seconds the upstream may stay silent while answering (per "
        "read, so long streams are fine), more than 0",
        "MAX_BODY_BYTES": "largest request body in bytes (413 beyond), at least 0",
        "BODY_TIMEOUT": "seconds a client has, from its request's arrival, to send the whole "
        "request body (408 beyond), more than 0",
    },
    "Sessions and pools": {
        "SESSIONS": "comma-separated session secrets (or use SESSIONS_FILE)",
        "SESSIONS_FILE": "path of a JSON or TOML sessions file (.toml for TOML)",
        "SESSIONS_RELOAD_INTERVAL": "seconds between checks of SESSIONS_FILE for changes; 0 turns "
        "the checks off (SIGHUP still reloads)",
        "POOL": "pool name: letters, digits, '.', '_' or '-', up to 64 (the pool of SESSIONS or of "
        "a sessions file without pools; the operator commands' pool)",
        "POOL_HEADER": "request header that names the pool to use when SESSIONS_FILE declares "
        "several; removed before forwarding; none: pools are not chosen by header",
        "POOL_SHARDS": "hash slots each pool is spread over, 1-64, so a Redis Cluster spreads "
        "one pool over its nodes (docs/scaling.md); 1 keeps a pool in one slot; a pools file's "
        "'shards' sets it per pool",
    },
    "Redis": {
        "REDIS_URL": "redis://, rediss:// or unix:// URL with optional user:password; "
        "unset runs the embedded in-process store",
        "REDIS_SENTINELS": "comma-separated host:port of Redis Sentinels; they name the master "
        "(REDIS_URL then only gives user, password, database and TLS)",
        "REDIS_SENTINEL_MASTER": "the master's name as the sentinels know it",
        "REDIS_SENTINEL_PASSWORD": "password of the sentinels themselves, if they require one",
        "REDIS_CLUSTER": "true or false: REDIS_URL is one node of a Redis Cluster",
        "REDIS_FAILURE_MODE": "closed (503 while the store is unreachable) or open (serve from a "
        "local pool)",
    },
    "Serving": {
        "LISTEN": "host:port the proxy listens on",
        "ADMIN_LISTEN": "host:port of the ops endpoints (/healthz, /readyz, /version, /metrics, "
        "/admin)",
        "PROXY_API_KEYS": "comma-separated keys clients must present as 'Authorization: Bearer "
        "<key>' or 'X-Api-Key: <key>' (compared in constant time); unset: no client auth",
        "EVENT_LOOP": "uvloop (libuv's loop, less CPU per request; where it is not installed, "
        "asyncio's own loop, said in the log) or asyncio",
        "SHUTDOWN_GRACE": "seconds in-flight requests get to finish after SIGTERM",
    },
    "Selection, retries and waiting": {
        "SESSION_SELECTION_STRATEGY": "one of health, round-robin, random, lru, least-busy",
        "RETRY_COUNT": "attempts per request, 1-100 (default: the pool size, at most 10)",
        "LEASE_TTL": "seconds a lease lives unless renewed (a dead replica's leases free up "
        "after it), at least 1",
        "EXPONENTIAL_BACKOFF_ENABLED": "true or false: back off (full jitter) after "
        "5xx/network errors",
        "BACKOFF_BASE": "seconds of the first backoff ceiling (doubles per attempt; each wait "
        "is uniform below its ceiling)",
        "BACKOFF_MAX": "largest backoff ceiling in seconds",
        "QUEUE_TIMEOUT": "seconds a request may wait for a free session (0: answer at once)",
        "QUEUE_MAX": "most requests waiting per replica, at least 1; beyond it: answer at once",
    },
    "Rate limits and unit budgets": {
        "RATE_LIMIT_COOLDOWN": "seconds a session cools at most after a 429 without a usable "
        "wait: the cap of the probe cooldown (1 s, doubling per 429 in a row); with "
        "RATE_LIMIT_LEARNING=false, the flat cooldown of every such 429",
        "RATE_LIMIT_LEARNING": "true: learn a rate per session from header-less 429s and "
        "rate-limit headers and pace the session at it (docs/learning.md); false: no learned "
        "rate, a flat RATE_LIMIT_COOLDOWN after each header-less 429 (the predecessor's way)",
        "RATE_LIMIT_COOLDOWN_MAX": "largest cooldown in seconds; longer Retry-After values are cut",
        "RATE_LIMIT_HEADER_FAMILIES": "comma-separated rate-limit header families to learn from: "
        "openai, anthropic, github, ietf; or none",
        "UNIT_PRECHARGE": "estimate (charge a tpm session, at lease time, the request's JSON "
        "max_tokens plus its size in bytes / 4, settled by the usage reported) or off",
        "USAGE_HEADER": "response header holding the units (tokens) an answer consumed, for tpm "
        "budgets; empty: read usage.total_tokens from JSON and event-stream bodies",
    },
    "Circuit breaker": {
        "CIRCUIT_BREAKER_ENABLED": "true or false: open a session's breaker after repeated "
        "failures",
        "CIRCUIT_BREAKER_THRESHOLD": "consecutive 5xx/network/timeout failures that open it, "
        "1-1000",
        "CIRCUIT_BREAKER_WINDOW": "the failure-rate trigger's window: the last calls (successes "
        "and 5xx/network/timeout failures) it looks at, 1-1000",
        "CIRCUIT_BREAKER_MIN_CALLS": "calls in the window before its failure ratio counts, "
        "1-1000 (at most CIRCUIT_BREAKER_WINDOW)",
        "CIRCUIT_BREAKER_FAILURE_RATIO": "failure ratio over the window that opens it too, "
        "0-1 exclusive of 0",
        "CIRCUIT_BREAKER_TIMEOUT": "seconds a breaker stays open at first (doubles per trip "
        "that follows a failed probe; a probe's success ends the doubling)",
        "CIRCUIT_BREAKER_TIMEOUT_MAX": "longest time a breaker stays open, in seconds",
        "CIRCUIT_BREAKER_HALF_OPEN_PROBES": "requests a half-open breaker admits, fleet-wide, "
        "1-1000",
    },
    "Logs, metrics and alerts": {
        "LOG_LEVEL": "one of debug, info, warning, error",
        "LOG_FORMAT": "json (one object per line) or console (for a terminal)",
        "ENABLE_METRICS": "true or false: serve Prometheus metrics at /metrics on ADMIN_LISTEN",
        "METRICS_PREFIX": "prefix of every metric name: letters, digits and '_', not starting "
        "with a digit",
        "METRICS_PER_SESSION": "true or false: label the metrics by session id too (a series per "
        "session on every replica, for small pools; per-session figures are always in the admin "
        "API and status)",
        "HEALTH_CHECK_INTERVAL": "seconds between health summaries in the log (one replica of the "
        "fleet writes each; also after every 100 requests, at most every 10 s), at least 1",
        "ADMIN_TOKEN": "bearer token of the admin API under /admin on ADMIN_LISTEN, at least 16 "
        "characters; unset: no admin API",
        "ALERT_WEBHOOK_URL": "http(s) URL that alerts are POSTed to as JSON with a "
        "Slack-compatible 'text'; unset: no alerts",
        "ALERT_ERROR_RATE": "fleet-wide share of failed upstream attempts (5xx, network, timeout, "
        "401/403) over ALERT_ERROR_WINDOW that raises an alert (with at least 20 attempts in "
        "the window), 0-1",
        "ALERT_ERROR_WINDOW": "seconds over which ALERT_ERROR_RATE is measured (10 s "
        "resolution), 10-86400",
        "ALERT_CHECK_INTERVAL": "seconds between a replica's checks of the fleet's alerts and its "
        "turn at the health summary, more than 0",
    },
}
#: What each setting accepts, by name.
HELP: dict[str, str] = {name: text for group in GROUPS.values() for name, text in group.items()}
#: Values never echoed back in an error message (and marked secret in the reference).
SECRET_SETTINGS = frozenset(
    {
        "SESSIONS",
        "PROXY_API_KEYS",
        "REDIS_URL",
        "REDIS_SENTINEL_PASSWORD",
        "ADMIN_TOKEN",
        "ALERT_WEBHOOK_URL",
    }
)
#: What the operator commands (status, sessions, export, import) need: the store and the pool.
STORE_SETTINGS = (
    "REDIS_URL",
    "REDIS_SENTINELS",
    "REDIS_SENTINEL_MASTER",
    "REDIS_SENTINEL_PASSWORD",
    "REDIS_CLUSTER",
    "POOL",
    "POOL_SHARDS",
    "LOG_LEVEL",
    "LOG_FORMAT",
)
_POOL_NAME = r"^[A-Za-z0-9._-]{1,64}$"
_SENTINEL_MASTER_NAME = r"^[^\s]{1,128}$"
#: An HTTP field name (RFC 9110 token).
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class SessionHeader:
    """Where a session's secret goes: header ``name`` with ``{secret}`` in ``template``."""

    name: str
    template: str

    def value(self, secret: str) -> str:
        return self.template.replace("{secret}", secret)


class Settings(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    """All settings, validated. Durations in seconds; see HELP for each."""

    upstream_url: str | None = None
    sessions: str | None = None
    sessions_file: str | None = None
    sessions_reload_interval: Seconds = 10.0
    redis_url: str | None = None
    redis_sentinels: str | None = None
    redis_sentinel_master: Annotated[str, msgspec.Meta(pattern=_SENTINEL_MASTER_NAME)] = (
        DEFAULT_SENTINEL_MASTER
    )
    redis_sentinel_password: str | None = None
    redis_cluster: bool = False
    pool: Annotated[str, msgspec.Meta(pattern=_POOL_NAME)] = "default"
    pool_header: str = "X-Pool"
    pool_shards: Annotated[int, msgspec.Meta(ge=1, le=MAX_SHARDS)] = 1
    listen: str = "0.0.0.0:8080"
    admin_listen: str = "0.0.0.0:9090"
    session_header: str = "Authorization: Bearer {secret}"
    session_selection_strategy: Strategy = Strategy.HEALTH
    retry_count: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None
    rate_limit_cooldown: Seconds = 60.0
    rate_limit_cooldown_max: Seconds = 3600.0
    rate_limit_learning: bool = True
    rate_limit_header_families: str = ",".join(FAMILIES)
    usage_header: str = ""
    unit_precharge: Literal["estimate", "off"] = "estimate"
    circuit_breaker_enabled: bool = True
    circuit_breaker_threshold: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    circuit_breaker_window: Annotated[int, msgspec.Meta(ge=1, le=1000)] = DEFAULT_BREAKER_WINDOW
    circuit_breaker_min_calls: Annotated[int, msgspec.Meta(ge=1, le=1000)] = (
        DEFAULT_BREAKER_MIN_CALLS
    )
    circuit_breaker_failure_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] = (
        DEFAULT_BREAKER_FAILURE_RATIO
    )
    circuit_breaker_timeout: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = (
        DEFAULT_BREAKER_TIMEOUT_MS / 1000
    )
    circuit_breaker_timeout_max: Annotated[float, msgspec.Meta(gt=0, le=86_400 * 7)] = 600.0
    circuit_breaker_half_open_probes: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    lease_ttl: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 60.0
    exponential_backoff_enabled: bool = True
    backoff_base: Seconds = 0.1
    backoff_max: Seconds = 2.0
    upstream_connect_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    upstream_read_timeout: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 120.0
    max_body_bytes: Annotated[int, msgspec.Meta(ge=0)] = 10 * 1024 * 1024
    body_timeout: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 60.0
    proxy_api_keys: str | None = None
    queue_timeout: Seconds = 0.0
    queue_max: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000
    redis_failure_mode: Literal["closed", "open"] = "closed"
    shutdown_grace: Seconds = 30.0
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    enable_metrics: bool = True
    metrics_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")] = (
        "session_broker"
    )
    metrics_per_session: bool = False
    health_check_interval: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 300.0
    admin_token: Annotated[str, msgspec.Meta(min_length=16)] | None = None
    alert_webhook_url: str | None = None
    alert_error_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    alert_error_window: Annotated[float, msgspec.Meta(ge=10, le=86_400)] = 300.0
    alert_check_interval: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0

    def broker(self) -> BrokerSettings:
        return BrokerSettings(
            redis_url=self.redis_url,
            redis_sentinels=self.sentinel_addresses,
            redis_sentinel_master=self.redis_sentinel_master,
            redis_sentinel_password=self.redis_sentinel_password,
            redis_cluster=self.redis_cluster,
            pool=self.pool,
            strategy=self.session_selection_strategy,
            shards=self.pool_shards,
            lease_ttl_ms=round(self.lease_ttl * 1000),
            rate_limit_cooldown_ms=round(self.rate_limit_cooldown * 1000),
            rate_limit_cooldown_max_ms=round(self.rate_limit_cooldown_max * 1000),
            rate_learning=self.rate_limit_learning,
            breaker_threshold=self.circuit_breaker_threshold if self.circuit_breaker_enabled else 0,
            breaker_timeout_ms=round(self.circuit_breaker_timeout * 1000),
            breaker_timeout_max_ms=round(self.circuit_breaker_timeout_max * 1000),
            half_open_probes=self.circuit_breaker_half_open_probes,
            breaker_window=self.circuit_breaker_window,
            breaker_min_calls=self.circuit_breaker_min_calls,
            breaker_failure_ratio=self.circuit_breaker_failure_ratio,
        )

    @property
    def header_families(self) -> tuple[str, ...]:
        names = [n.strip() for n in self.rate_limit_header_families.split(",") if n.strip()]
        return () if names == ["none"] else tuple(names)

    @property
    def sentinel_addresses(self) -> tuple[tuple[str, int], ...]:
        parts = (self.redis_sentinels or "").split(",")
        found = [_listen("REDIS_SENTINELS", p.strip()) for p in parts if p.strip()]
        return tuple((where.host, where.port) for where in found)

    @property
    def listen_address(self) -> Listen:
        return _listen("LISTEN", self.listen)

    @property
    def admin_address(self) -> Listen:
        return _listen("ADMIN_LISTEN", self.admin_listen)

    @property
    def header(self) -> SessionHeader:
        header = parse_session_header(self.session_header)
        assert header is not None, "checked by load_settings"
        return header

    @property
    def api_keys(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in (self.proxy_api_keys or "").split(",") if k.strip())

    @property
    def secret_values(self) -> tuple[str, ...]:
        """Every secret these settings hold (sessions' secrets aside), for the log redaction:
        client API keys, the admin token, Redis passwords, the webhook URL and its path."""
        found = [*self.api_keys, self.admin_token, self.redis_sentinel_password]
        if self.redis_url is not None:
            password = urlsplit(self.redis_url).password
            found += [password, unquote(password or "")]
        if self.alert_webhook_url is not None:
            url = urlsplit(self.alert_webhook_url)
            path = url.path + (f"?{url.query}" if url.query else "")
            found += [self.alert_webhook_url, path if len(path) > 1 else None, url.password]
        return tuple(value for value in found if value)


def parse_session_header(value: str) -> SessionHeader | None:
    """``'Name: template'`` as a SessionHeader; None unless the name is a valid header name and
    the template holds ``{secret}``."""
    name, _, template = value.partition(":")
    name, template = name.strip(), template.strip()
    if not _HEADER_NAME.fullmatch(name) or "{secret}" not in template:
        return None
    return SessionHeader(name, template)


def _bad(name: str, value: object, reason: str) -> ConfigError:
    shown = "(hidden)" if name in SECRET_SETTINGS else repr(value)
    return ConfigError(f"invalid setting {name}={shown}: {reason}; accepts {HELP[name]}")


def _listen(name: str, value: str) -> Listen:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise _bad(name, value, "not host:port")
    return Listen(host.strip("[]") or "0.0.0.0", int(port))


def _check(settings: Settings) -> None:
    """Checks msgspec's types cannot express: URL forms, addresses, the header template."""
    if settings.upstream_url is not None:
        url = urlsplit(settings.upstream_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise _bad("UPSTREAM_URL", settings.upstream_url, "not an http(s) URL with a host")
    _check_redis(settings)
    if settings.alert_webhook_url is not None:
        url = urlsplit(settings.alert_webhook_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise _bad("ALERT_WEBHOOK_URL", settings.alert_webhook_url, "not an http(s) URL")
    settings.listen_address  # noqa: B018 - parsing is the check
    settings.admin_address  # noqa: B018
    if parse_session_header(settings.session_header) is None:
        raise _bad("SESSION_HEADER", settings.session_header, "not 'Name: ...{secret}...'")
    if settings.pool_header != "none" and not _HEADER_NAME.fullmatch(settings.pool_header):
        raise _bad("POOL_HEADER", settings.pool_header, "not a header name")
    if settings.backoff_base > settings.backoff_max:
        raise _bad("BACKOFF_BASE", settings.backoff_base, "larger than BACKOFF_MAX")
    if settings.rate_limit_cooldown > settings.rate_limit_cooldown_max:
        raise _bad("RATE_LIMIT_COOLDOWN", settings.rate_limit_cooldown, "larger than its _MAX")
    unknown = set(settings.header_families) - set(FAMILIES)
    if unknown:
        raise _bad(
            "RATE_LIMIT_HEADER_FAMILIES",
            settings.rate_limit_header_families,
            f"unknown {', '.join(sorted(unknown))}",
        )
    if settings.circuit_breaker_timeout > settings.circuit_breaker_timeout_max:
        raise _bad(
            "CIRCUIT_BREAKER_TIMEOUT", settings.circuit_breaker_timeout, "larger than its _MAX"
        )
    if settings.circuit_breaker_min_calls > settings.circuit_breaker_window:
        raise _bad(
            "CIRCUIT_BREAKER_MIN_CALLS",
            settings.circuit_breaker_min_calls,
            "larger than CIRCUIT_BREAKER_WINDOW",
        )


def _check_redis(settings: Settings) -> None:
    """The URL's scheme, and a topology that makes sense: Sentinel or Cluster, not both."""
    url = urlsplit(settings.redis_url) if settings.redis_url is not None else None
    if settings.redis_url is not None:
        _check_redis_url(settings.redis_url)
    if settings.redis_sentinels is not None:
        if not settings.sentinel_addresses:
            raise _bad("REDIS_SENTINELS", settings.redis_sentinels, "no host:port given")
        if settings.redis_cluster:
            raise _bad(
                "REDIS_CLUSTER", "true", "Sentinel (REDIS_SENTINELS) and Cluster exclude each other"
            )
        if url is not None and url.scheme == "unix":
            raise _bad(
                "REDIS_URL", settings.redis_url, "a unix:// socket cannot be used with Sentinel"
            )
    if settings.redis_cluster:
        if url is None:
            raise _bad("REDIS_CLUSTER", "true", "REDIS_URL must name a node of the cluster")
        if url.scheme == "unix":
            raise _bad(
                "REDIS_URL", settings.redis_url, "Redis Cluster is reached over TCP, not unix://"
            )
        if url.path.strip("/") not in ("", "0"):
            raise _bad("REDIS_URL", settings.redis_url, "Redis Cluster has only database 0")


def _check_redis_url(value: str) -> None:
    """What redis-py would fail on only when it first connects, or would silently ignore."""
    url = urlsplit(value)
    if url.scheme not in ("redis", "rediss", "unix"):
        raise _bad("REDIS_URL", value, "unknown scheme")
    if url.scheme != "unix":
        try:
            port = url.port
        except ValueError:  # not a number, or out of range
            port = 0
        if port == 0:
            raise _bad("REDIS_URL", value, "its port is not a number from 1 to 65535")
        database = unquote(url.path).strip("/")
        if database and not database.isdigit():
            raise _bad("REDIS_URL", value, "its database (the path) is not a number")
    try:
        parse_url(value)  # the options in its query, a unix:// URL's ?db=
    except ValueError as exc:
        raise _bad("REDIS_URL", value, str(exc).rstrip(".")) from exc


def flag_name(name: str) -> str:
    """The flag of a setting: ``LEASE_TTL`` is ``--lease-ttl``."""
    return "--" + name.lower().replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, *, only: Collection[str] | None = None) -> None:
    """One flag per setting (of ``only``, when given), named after its variable."""
    for name, text in HELP.items():
        if only is None or name in only:
            parser.add_argument(flag_name(name), dest=name, metavar="VALUE", help=f"{name}: {text}")


def load_settings(
    environ: Mapping[str, str],
    flags: argparse.Namespace | None = None,
    *,
    only: Collection[str] | None = None,
) -> Settings:
    """Settings from the environment, overridden by flags; raises ConfigError when invalid.

    With ``only`` (e.g. STORE_SETTINGS for the operator commands), just those settings are read
    and checked; the others keep their defaults, so a command that never forwards a request
    needs no UPSTREAM_URL or sessions and is not stopped by a setting it does not use.
    """
    names = [name for name in HELP if only is None or name in only]
    raw: dict[str, str] = {name: environ[name] for name in names if environ.get(name, "") != ""}
    if flags is not None:
        raw |= {name: getattr(flags, name) for name in names if getattr(flags, name, None)}
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        match = re.search(r"at `\$\.([A-Z_]+)`", str(exc))
        if match is None:
            raise ConfigError(f"invalid settings: {exc}") from exc
        name = match.group(1)
        reason = str(exc)[: match.start()].rstrip(" -")
        raise _bad(name, raw.get(name), reason.replace("`", "")) from exc
    _check(settings)
    return settings
