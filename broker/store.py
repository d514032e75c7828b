"""The store: a Redis client for a shared pool, or the embedded in-process one.

Three Redis topologies, all with the same scripts (every key of a pool shares one hash tag, so a
script touches one slot):

* standalone: ``redis://``, ``rediss://`` (TLS) or ``unix://``, ACL user and password in the URL;
* Sentinel: the sentinels name the current master; after a failover the client asks them again;
* Redis Cluster: any node's URL; the client discovers the others and follows MOVED/ASK.

A failover costs at most its own window: commands that fail on a dropped connection are retried
(every script is idempotent by its lease id), and a new master that lacks the scripts' function
library answers "Function not found", on which the library is loaded and the call made again
(``broker/library.py``).

Without a Redis URL the same Lua scripts run on fakeredis inside this process: a single replica
works with no Redis at all, but its state is shared with nobody.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import fakeredis
import structlog
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker.settings import BrokerSettings

__all__ = ["COMMAND_RETRIES", "ClusterStore", "SentinelMaster", "Store", "open_store"]

log = structlog.get_logger(__name__)

#: A client of any topology. Both kinds take the same commands and run the same scripts.
Store: TypeAlias = Redis | RedisCluster

#: Retries of one command after a dropped connection. Safe because every script is idempotent by
#: its client-made lease id. With the backoff below they span about 2 s, longer than a Sentinel
#: needs to notice a master is gone only when `down-after-milliseconds` is short; a longer
#: failover shows up as errors for its duration, which the proxy answers with 503.
COMMAND_RETRIES = 3
#: Backoff between those retries (seconds): first ceiling and largest ceiling, full jitter.
RETRY_BACKOFF_BASE_S = 0.05
RETRY_BACKOFF_CAP_S = 1.0
#: Connections one replica keeps to a standalone Redis at most; requests beyond them wait for one
#: (every call is short: two scripts per upstream attempt).
MAX_CONNECTIONS = 256
#: Seconds between PINGs on an idle pooled connection, so a dead one is noticed before use.
HEALTH_CHECK_INTERVAL_S = 30


def _retry() -> Retry:
    return Retry(
        ExponentialWithJitterBackoff(base=RETRY_BACKOFF_BASE_S, cap=RETRY_BACKOFF_CAP_S),
        COMMAND_RETRIES,
    )


def _common(settings: BrokerSettings) -> dict[str, Any]:
    """Connection options every topology shares."""
    return {
        "decode_responses": True,
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
        "retry": _retry(),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }


class SentinelMaster(Redis):
    """The client of a Sentinel-managed master; closing it also closes its sentinel clients."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            await self.sentinels.aclose()


class ClusterStore(RedisCluster):
    """A Redis Cluster client that finds an FCALL's slot from its keys as it does an EVALSHA's.

    redis-py asks a node (``COMMAND GETKEYS``) where the keys of a command with movable keys
    are, FCALL among them: a second round trip for every script call.
    """

    async def _determine_slot(self, command: str, *args: Any) -> int:
        if command.upper() in ("FCALL", "FCALL_RO") and len(args) > 2 and int(args[1]) == 1:
            return self.keyslot(args[2])
        return await super()._determine_slot(command, *args)


def _master_options(settings: BrokerSettings) -> dict[str, Any]:
    """User, password, database and TLS of the master, from ``redis_url`` when it is given.

    The URL's host and port are not used: the sentinels say where the master is.
    """
    if settings.redis_url is None:
        return {}
    options: dict[str, Any] = dict(parse_url(settings.redis_url))
    for address_part in ("host", "port", "path"):
        options.pop(address_part, None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    return options


def _sentinel(settings: BrokerSettings) -> Redis:
    master_options = _master_options(settings)
    sentinel_options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
        "decode_responses": True,
        # No retries of their own: each sentinel is asked in turn, and the master connection's
        # retry asks them all again. Nested retries would hold a misconfiguration for seconds.
        "retry": Retry(NoBackoff(), 0),
    }
    if settings.redis_sentinel_password is not None:
        sentinel_options["password"] = settings.redis_sentinel_password
    if master_options.get("ssl"):
        # One TLS setting for the deployment: sentinels are reached as the master is.
        sentinel_options |= {k: v for k, v in master_options.items() if k.startswith("ssl")}
    # redis-py leaves Sentinel's constructor unannotated.
    sentinels = Sentinel(  # type: ignore[no-untyped-call]
        list(settings.redis_sentinels), sentinel_kwargs=sentinel_options
    )
    client: SentinelMaster = sentinels.master_for(
        settings.redis_sentinel_master,
        redis_class=SentinelMaster,
        **(_common(settings) | master_options),
    )
    client.sentinels = sentinels
    return client


def open_store(settings: BrokerSettings) -> Store:
    """A client for the configured store. Connections are made lazily, on first use."""
    if settings.redis_sentinels:
        return _sentinel(settings)
    if settings.redis_url is None:
        log.warning(
            "embedded store",
            detail="no REDIS_URL: state lives in this process, not shared with other replicas",
        )
        # One connection: the in-process server runs one command at a time anyway, and calls
        # then reach it in the order they were made (a release handed over before a retry's
        # acquire is not overtaken by the retry's own release while a second connection opens).
        client: Redis = fakeredis.FakeAsyncRedis(
            server=fakeredis.FakeServer(), decode_responses=True, single_connection_client=True
        )
        return client
    if settings.redis_cluster:
        # Its retry re-discovers the slots before trying again, so a failover is followed.
        return ClusterStore.from_url(settings.redis_url, **_common(settings))
    # A pool that waits (up to the socket timeout) for a free connection: the default one raises
    # at its limit, which would read as the store being down under a burst of requests.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=MAX_CONNECTIONS,
        timeout=settings.redis_timeout_s,
        **_common(settings),
    )
    return Redis.from_pool(pool)
