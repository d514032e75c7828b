"""Topology settings: Sentinel and Cluster from the environment, and a clear error naming the
variable for every combination that cannot work."""

from __future__ import annotations

import pytest

from broker import ConfigError
from broker.store import SentinelMaster, open_store
from proxy.config.loading import load_settings

BASE = {"UPSTREAM_URL": "http://127.0.0.1:1", "SESSIONS": "k1"}

BAD = [
    ("REDIS_SENTINELS", {"REDIS_SENTINELS": "sentinel-without-port"}),
    ("REDIS_SENTINELS", {"REDIS_SENTINELS": "a:26379,b:notaport"}),
    ("REDIS_SENTINELS", {"REDIS_SENTINELS": " , "}),
    ("REDIS_SENTINEL_MASTER", {"REDIS_SENTINELS": "a:1", "REDIS_SENTINEL_MASTER": "my master"}),
    ("REDIS_CLUSTER", {"REDIS_CLUSTER": "perhaps"}),
    ("REDIS_CLUSTER", {"REDIS_CLUSTER": "true"}),
    (
        "REDIS_CLUSTER",
        {"REDIS_CLUSTER": "true", "REDIS_SENTINELS": "a:1", "REDIS_URL": "redis://h"},
    ),
    ("REDIS_URL", {"REDIS_CLUSTER": "true", "REDIS_URL": "redis://:pw@h:6379/2"}),
    ("REDIS_URL", {"REDIS_CLUSTER": "true", "REDIS_URL": "unix:///tmp/redis.sock"}),
    ("REDIS_URL", {"REDIS_SENTINELS": "a:1", "REDIS_URL": "unix:///tmp/redis.sock"}),
    ("SESSIONS_RELOAD_INTERVAL", {"SESSIONS_RELOAD_INTERVAL": "-1"}),
    ("SESSIONS_RELOAD_INTERVAL", {"SESSIONS_RELOAD_INTERVAL": "often"}),
]


@pytest.mark.parametrize(("name", "env"), BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD)])
def test_bad_topology_settings_name_the_variable(name: str, env: dict[str, str]) -> None:
    """Each impossible value or combination is a ConfigError naming the variable to fix."""
    with pytest.raises(ConfigError) as caught:
        load_settings(BASE | env)
    assert f"invalid setting {name}=" in str(caught.value)
    assert "pw" not in str(caught.value)


def test_sentinel_settings_reach_the_broker() -> None:
    """REDIS_SENTINELS, the master name and the sentinel password become typed broker settings;
    the password and URL stay out of the settings' repr."""
    broker = load_settings(
        BASE
        | {
            "REDIS_SENTINELS": "s0:26379, [::1]:26380",
            "REDIS_SENTINEL_MASTER": "primary",
            "REDIS_SENTINEL_PASSWORD": "sentinel-secret",
            "REDIS_URL": "rediss://user:url-secret@ignored/3",
        }
    ).broker()
    assert broker.redis_sentinels == (("s0", 26379), ("::1", 26380))
    assert broker.redis_sentinel_master == "primary"
    assert broker.redis_sentinel_password == "sentinel-secret"
    assert not broker.redis_cluster
    assert "secret" not in repr(broker)


async def test_sentinel_store_takes_the_masters_credentials_from_the_url() -> None:
    """With Sentinel, REDIS_URL lends the master's user, password, database and TLS; its host is
    not used. Nothing is contacted until the first command."""
    broker = load_settings(
        BASE | {"REDIS_SENTINELS": "127.0.0.1:1", "REDIS_URL": "rediss://user:pw@anyhost/3"}
    ).broker()
    store = open_store(broker)
    try:
        assert isinstance(store, SentinelMaster)
        options = store.connection_pool.connection_kwargs
        assert (options["username"], options["password"], options["db"]) == ("user", "pw", 3)
        assert "host" not in options
        assert store.connection_pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    finally:
        await store.aclose()


def test_cluster_setting_reaches_the_broker() -> None:
    """REDIS_CLUSTER=true with a node's URL selects the cluster client."""
    broker = load_settings(
        BASE | {"REDIS_CLUSTER": "true", "REDIS_URL": "redis://node-0:6379"}
    ).broker()
    assert broker.redis_cluster
    assert broker.redis_url == "redis://node-0:6379"
