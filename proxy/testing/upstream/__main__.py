"""``python -m proxy.testing.upstream --port 8000 --config sim.json``: the simulated upstream as
its own process (the file is an ``UpstreamConfig`` in JSON; see its docstring), serving until
SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec
from aiohttp import web

from proxy.testing.upstream.app import SimulatedUpstream
from proxy.testing.upstream.config import UpstreamConfig


async def serve(upstream: SimulatedUpstream, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    runner = web.AppRunner(upstream.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    upstream.reset()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    print(f"simulated upstream on http://{host}:{runner.addresses[0][1]}", flush=True)
    await stopping.wait()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m proxy.testing.upstream",
        description="A simulated upstream API enforcing per-credential limits, with faults.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--config", type=Path, help="an UpstreamConfig as JSON")
    args = parser.parse_args(argv)
    try:
        config = (
            UpstreamConfig.from_json(args.config.read_bytes()) if args.config else UpstreamConfig()
        )
    except (OSError, msgspec.ValidationError, msgspec.DecodeError) as exc:
        print(f"simulated upstream: bad --config: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(config.build(), args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
