"""The public surface of the broker package and the package data it ships."""

from __future__ import annotations

import broker
from broker import BrokerSettings, Pool, Session, open_store, preamble


def test_all_is_pinned() -> None:
    """``broker.__all__`` is exactly the documented public surface; a change here is deliberate."""
    assert broker.__all__ == [
        "BrokerError",
        "BrokerSettings",
        "ConfigError",
        "Lease",
        "LeaseError",
        "NoSessionAvailable",
        "Outcome",
        "Pool",
        "PoolKeys",
        "QueueFull",
        "Release",
        "Released",
        "Session",
        "ShardedPool",
        "StoreError",
        "Strategy",
        "Ticket",
        "UnknownSession",
        "WaitQueue",
        "load_sessions",
        "open_pool",
        "open_store",
        "session_id_for",
    ]


def test_every_exported_name_exists() -> None:
    """Every name in ``broker.__all__`` is importable from ``broker``."""
    missing = [name for name in broker.__all__ if not hasattr(broker, name)]
    assert missing == []


def test_errors_share_one_root() -> None:
    """Every broker error can be caught as BrokerError."""
    for name in ("ConfigError", "LeaseError", "NoSessionAvailable", "StoreError", "UnknownSession"):
        assert issubclass(getattr(broker, name), broker.BrokerError)


def test_script_source_is_preamble_prelude_then_script() -> None:
    """``preamble.source(op)`` is the generated preamble, the common prelude, then the script."""
    text = preamble.source("acquire")
    prelude_at = text.index("-- common.lua:")
    script_at = text.index("-- acquire.lua:")
    assert text.startswith(preamble.preamble())
    assert len(preamble.preamble()) == prelude_at < script_at
    assert "local function housekeeping(now, always)" in text[:script_at]
    assert "local function choose()" in text[script_at:]


def test_the_library_holds_every_operation_once() -> None:
    """The library is the preamble, the prelude, then one function per operation whose body is
    its script file unchanged; each registered under the library's versioned name."""
    text = preamble.library()
    name = preamble.library_name()
    assert text.startswith(f"#!lua name={name}\n{preamble.preamble()}")
    assert text.count("-- common.lua:") == 1
    for operation in preamble.OPERATIONS:
        body = preamble.source(operation).split("begin(KEYS[1])\n", 1)[1]
        assert f"local function op_{operation}(KEYS, ARGV)\nbegin(KEYS[1])\n{body}\nend\n" in text
        assert f"function_name='{name}_{operation}', callback=op_{operation}," in text
    assert "flags={'no-writes'}" in text.split(f"function_name='{name}_units'", 1)[1]


def test_every_operation_has_its_script() -> None:
    """Each operation the Pool registers has a script file behind the shared prelude."""
    for operation in preamble.OPERATIONS:
        text = preamble.source(operation)
        assert "-- common.lua:" in text
        assert f"-- {operation}.lua:" in text


async def test_embedded_store_runs_the_scripts() -> None:
    """Without a Redis URL, open_store gives an in-process store on which a pool works."""
    settings = BrokerSettings(redis_url=None)
    client = open_store(settings)
    try:
        pool = Pool(client, settings)
        assert await pool.sync([Session(id="only", secret="x")]) == 1
        lease = await pool.acquire()
        assert lease.session_id == "only"
        assert (await pool.release(lease, broker.Outcome.SUCCESS)).status == "released"
    finally:
        await client.aclose()


async def test_embedded_stores_are_not_shared() -> None:
    """Two embedded stores are separate: state in one is invisible to the other."""
    settings = BrokerSettings(redis_url=None)
    first, second = open_store(settings), open_store(settings)
    try:
        await Pool(first, settings).sync([Session(id="only", secret="x")])
        assert await second.exists("sb:{default}:members") == 0
    finally:
        await first.aclose()
        await second.aclose()
