"""The checks of settings that msgspec's types cannot express: URL forms, addresses, the
header template, settings that must agree with each other, a Redis topology that makes sense.
Each failure is an InvalidSetting naming the setting."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from redis.asyncio.connection import parse_url

from proxy.config.settings import FAMILIES, HEADER_NAME, Settings, invalid, parse_session_header

__all__ = ["check"]


def check(settings: Settings) -> None:
    """Checks msgspec's types cannot express: URL forms, addresses, the header template."""
    if settings.upstream_url is not None:
        url = urlsplit(settings.upstream_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise invalid("UPSTREAM_URL", settings.upstream_url, "not an http(s) URL with a host")
    _check_redis(settings)
    if settings.alert_webhook_url is not None:
        url = urlsplit(settings.alert_webhook_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise invalid("ALERT_WEBHOOK_URL", settings.alert_webhook_url, "not an http(s) URL")
    settings.listen_address  # noqa: B018 - parsing is the check
    settings.admin_address  # noqa: B018
    if parse_session_header(settings.session_header) is None:
        raise invalid("SESSION_HEADER", settings.session_header, "not 'Name: ...{secret}...'")
    if settings.pool_header != "none" and not HEADER_NAME.fullmatch(settings.pool_header):
        raise invalid("POOL_HEADER", settings.pool_header, "not a header name")
    if settings.backoff_base > settings.backoff_max:
        raise invalid("BACKOFF_BASE", settings.backoff_base, "larger than BACKOFF_MAX")
    if settings.rate_limit_cooldown > settings.rate_limit_cooldown_max:
        raise invalid("RATE_LIMIT_COOLDOWN", settings.rate_limit_cooldown, "larger than its _MAX")
    unknown = set(settings.header_families) - set(FAMILIES)
    if unknown:
        raise invalid(
            "RATE_LIMIT_HEADER_FAMILIES",
            settings.rate_limit_header_families,
            f"unknown {', '.join(sorted(unknown))}",
        )
    if settings.circuit_breaker_timeout > settings.circuit_breaker_timeout_max:
        raise invalid(
            "CIRCUIT_BREAKER_TIMEOUT", settings.circuit_breaker_timeout, "larger than its _MAX"
        )
    if settings.circuit_breaker_min_calls > settings.circuit_breaker_window:
        raise invalid(
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
            raise invalid("REDIS_SENTINELS", settings.redis_sentinels, "no host:port given")
        if settings.redis_cluster:
            raise invalid(
                "REDIS_CLUSTER", "true", "Sentinel (REDIS_SENTINELS) and Cluster exclude each other"
            )
        if url is not None and url.scheme == "unix":
            raise invalid(
                "REDIS_URL", settings.redis_url, "a unix:// socket cannot be used with Sentinel"
            )
    if settings.redis_cluster:
        if url is None:
            raise invalid("REDIS_CLUSTER", "true", "REDIS_URL must name a node of the cluster")
        if url.scheme == "unix":
            raise invalid(
                "REDIS_URL", settings.redis_url, "Redis Cluster is reached over TCP, not unix://"
            )
        if url.path.strip("/") not in ("", "0"):
            raise invalid("REDIS_URL", settings.redis_url, "Redis Cluster has only database 0")


def _check_redis_url(value: str) -> None:
    """What redis-py would fail on only when it first connects, or would silently ignore."""
    url = urlsplit(value)
    if url.scheme not in ("redis", "rediss", "unix"):
        raise invalid("REDIS_URL", value, "unknown scheme")
    if url.scheme != "unix":
        try:
            port = url.port
        except ValueError:  # not a number, or out of range
            port = 0
        if port == 0:
            raise invalid("REDIS_URL", value, "its port is not a number from 1 to 65535")
        database = unquote(url.path).strip("/")
        if database and not database.isdigit():
            raise invalid("REDIS_URL", value, "its database (the path) is not a number")
    try:
        parse_url(value)  # the options in its query, a unix:// URL's ?db=
    except ValueError as exc:
        raise invalid("REDIS_URL", value, str(exc).rstrip(".")) from exc
