"""The settings' declarations: what each one accepts (``GROUPS``), its type, bounds and default
(``Settings``).

Every setting is an environment variable, a flag of the same name (``LEASE_TTL`` and
``--lease-ttl``, proxy/config/flags.py) and a key of the optional configuration file;
proxy/config/loading.py reads them all, in that order of precedence, and proxy/config/checks.py
checks what types cannot express. A bad value stops start-up
with a message that names the variable and what it accepts. Everything else receives the typed
``Settings``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

import msgspec

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
    "HEADER_NAME",
    "HELP",
    "SECRET_FILES",
    "SECRET_SETTINGS",
    "STORE_SETTINGS",
    "InvalidSetting",
    "Listen",
    "SessionHeader",
    "Settings",
    "invalid",
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
        "required by the operator commands (status, sessions, export, import) unless "
        "REDIS_SENTINELS is set; unset, serve runs the embedded in-process store (one process, "
        "shared with nobody)",
        "REDIS_SENTINELS": "comma-separated host:port of Redis Sentinels; they name the master "
        "(REDIS_URL then only gives user, password, database and TLS)",
        "REDIS_SENTINEL_MASTER": "the master's name as the sentinels know it",
        "REDIS_SENTINEL_PASSWORD": "password of the sentinels themselves, if they require one",
        "REDIS_CLUSTER": "REDIS_URL is one node of a Redis Cluster",
        "REDIS_FAILURE_MODE": "closed (503 while the store is unreachable) or open (serve from a "
        "local pool)",
    },
    "Serving": {
        "LISTEN": "host:port the proxy listens on (port 1-65535, or 0 for any free port)",
        "ADMIN_LISTEN": "host:port of the ops endpoints: /healthz (alive), /readyz (store "
        "reachable, sessions synced, not draining), /version, /metrics (with ENABLE_METRICS) "
        "and, with ADMIN_TOKEN, the admin API under /admin with its /admin/openapi.json and the "
        "web console at /ui/",
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
        "EXPONENTIAL_BACKOFF_ENABLED": "back off (full jitter) after 5xx/network errors",
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
        "CIRCUIT_BREAKER_ENABLED": "open a session's breaker after repeated failures",
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
        "LOG_LEVEL": "one of debug, info, warning, error (in any case); the operator commands "
        "log only errors unless it is set",
        "LOG_FORMAT": "json (one object per line) or console (for a terminal; the operator "
        "commands' format unless it is set)",
        "ENABLE_METRICS": "serve Prometheus metrics at /metrics on ADMIN_LISTEN",
        "METRICS_PREFIX": "prefix of every metric name: letters, digits and '_', not starting "
        "with a digit",
        "METRICS_PER_SESSION": "label the metrics by session id too (a series per "
        "session on every replica, for small pools; per-session figures are always in the admin "
        "API and status)",
        "HEALTH_CHECK_INTERVAL": "seconds between health summaries in the log (one replica of the "
        "fleet writes each; also after every 100 requests, at most every 10 s), at least 1",
        "ADMIN_TOKEN": "bearer token of the admin API under /admin on ADMIN_LISTEN (the web "
        "console at /ui/ asks for it), at least 16 characters; unset: no admin API and no console",
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
#: Secrets that may be read from a file instead: ``ADMIN_TOKEN_FILE=/run/secrets/token`` holds
#: ADMIN_TOKEN's value (its trailing newline dropped), so that no secret needs to be a flag or a
#: variable that ``ps`` shows. SESSIONS has none: SESSIONS_FILE is the sessions file already.
SECRET_FILES: dict[str, str] = {
    f"{name}_FILE": name for name in sorted(SECRET_SETTINGS) if name != "SESSIONS"
}
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
HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


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
    if not HEADER_NAME.fullmatch(name) or "{secret}" not in template:
        return None
    return SessionHeader(name, template)


class InvalidSetting(ConfigError):
    """Setting ``name`` has a value it does not accept: the message shows the value (unless
    secret), why, and what it accepts; ``source`` says where the value came from when that is
    not the environment."""

    def __init__(self, name: str, value: object, reason: str, *, source: str = "") -> None:
        self.name, self.value, self.reason = name, value, reason
        shown = "(hidden)" if name in SECRET_SETTINGS else repr(value)
        where = f" (from {source})" if source else ""
        super().__init__(f"invalid setting {name}={shown}{where}: {reason}; accepts {HELP[name]}")

    def came_from(self, source: str) -> InvalidSetting:
        return InvalidSetting(self.name, self.value, self.reason, source=source)


invalid = InvalidSetting


def _listen(name: str, value: str) -> Listen:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise invalid(name, value, "not host:port")
    if int(port) > 65535:
        reason = f"port {int(port)} is out of range (1-65535, or 0 for any free port)"
        raise invalid(name, value, reason)
    return Listen(host.strip("[]") or "0.0.0.0", int(port))
