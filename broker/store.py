"""The store: a Redis client for a shared pool, or the embedded in-process one.

Without a Redis URL the same Lua scripts run on fakeredis inside this process: a single replica
works with no Redis at all, but its state is shared with nobody.
"""

from __future__ import annotations

import fakeredis
import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker.settings import BrokerSettings

log = structlog.get_logger(__name__)

#: Retries of one command after a dropped connection. Safe because every script is idempotent by
#: its client-made lease id.
COMMAND_RETRIES = 3


def open_store(settings: BrokerSettings) -> Redis:
    """A client for the configured store. Connections are made lazily, on first use."""
    if settings.redis_url is None:
        log.warning(
            "embedded store",
            detail="no REDIS_URL: state lives in this process, not shared with other replicas",
        )
        client: Redis = fakeredis.FakeAsyncRedis(
            server=fakeredis.FakeServer(), decode_responses=True
        )
        return client
    return Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), COMMAND_RETRIES),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
    )
