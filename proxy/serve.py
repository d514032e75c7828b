"""Running a replica: both apps on their sockets, and a graceful stop.

On SIGTERM (or SIGINT): readiness turns false and new requests get 503 at once; requests in
flight, streams included, get SHUTDOWN_GRACE seconds to finish; whatever still runs then is
cancelled, which releases its lease; then the process exits 0.

On SIGHUP the replica re-reads SESSIONS_FILE and syncs it, without a restart.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass

import structlog
from aiohttp import web

from proxy.app import build_ops_app, build_proxy_app
from proxy.config.pools import load_pools
from proxy.config.settings import Listen, Settings
from proxy.replica.replica import Replica

log = structlog.get_logger(__name__)


def _bound_port(runner: web.AppRunner) -> int:
    server = runner.addresses[0]
    return int(server[1])


@dataclass
class RunningReplica:
    """A replica listening on its sockets."""

    replica: Replica
    proxy_runner: web.AppRunner
    ops_runner: web.AppRunner

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{_bound_port(self.proxy_runner)}"

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{_bound_port(self.ops_runner)}"

    async def stop(self) -> None:
        """Drain, then close: new requests 503 at once, in-flight ones get SHUTDOWN_GRACE."""
        grace = self.replica.settings.shutdown_grace
        admission = self.replica.admission
        admission.draining = True
        log.info("draining", in_flight_grace_s=grace)
        if not await admission.wait_idle(grace):
            log.warning("shutdown grace over; cancelling the requests still running")
        await self.proxy_runner.cleanup()
        await self.ops_runner.cleanup()
        log.info("stopped")


async def _site(
    app: web.Application, where: Listen, *, cancel_on_disconnect: bool
) -> web.AppRunner:
    # A client that goes away cancels its handler, whose cleanup releases the lease at once.
    runner = web.AppRunner(
        app, handler_cancellation=cancel_on_disconnect, access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    await web.TCPSite(runner, where.host, where.port).start()
    return runner


async def start(replica: Replica) -> RunningReplica:
    settings = replica.settings
    proxy = await _site(
        build_proxy_app(replica), settings.listen_address, cancel_on_disconnect=True
    )
    ops = await _site(build_ops_app(replica), settings.admin_address, cancel_on_disconnect=False)
    running = RunningReplica(replica, proxy, ops)
    loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]  # uvloop or asyncio
    log.info(
        "serving",
        proxy=settings.listen,
        ops=settings.admin_listen,
        pools=list(replica.plans),
        event_loop=loop,
    )
    return running


async def serve(replica: Replica) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully; reload the sessions on SIGHUP."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, replica.request_reload)
    running = await start(replica)
    await stopping.wait()
    await running.stop()


def serve_forever(settings: Settings) -> None:
    replica = Replica(settings, load_pools(settings))
    if settings.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed; serving on asyncio's own event loop")
        else:
            # libuv's loop spends less CPU per request than asyncio's (docs/benchmarks.md).
            uvloop.run(serve(replica))
            return
    asyncio.run(serve(replica))
