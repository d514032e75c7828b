"""Running a replica: both apps on their sockets, and a graceful stop.

On SIGTERM (or SIGINT): readiness turns false and new requests get 503 at once; requests in
flight, streams included, get SHUTDOWN_GRACE seconds to finish; whatever still runs then is
cancelled, which releases its lease; then the process exits 0.

On SIGHUP the replica re-reads SESSIONS_FILE and syncs it, without a restart.

Start-up fails fast, before anything is written to the store: LISTEN and ADMIN_LISTEN are bound
first (a taken port stops it naming the setting), then the store is checked (credentials refused
or no such database stop it naming REDIS_URL; see ``check_store``), and only then does the
replica start and sync its sessions. SIGTERM and SIGINT stop it at any stage of start-up too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass

import structlog
from aiohttp import web

from proxy.app import build_ops_app, build_proxy_app
from proxy.config.pools import load_pools
from proxy.config.settings import Listen, Settings
from proxy.replica.leasing import check_store
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


async def _bind(name: str, where: Listen) -> list[socket.socket]:
    """Listening sockets on every address ``where`` names (as aiohttp's TCPSite would bind);
    raises OSError naming the setting ``name`` when one cannot be had (a port in use)."""
    loop = asyncio.get_running_loop()
    bound: list[socket.socket] = []
    try:
        found = await loop.getaddrinfo(
            where.host, where.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, _, _, _, address in dict.fromkeys(found):
            bound.append(socket.create_server(address, family=family))
    except OSError as exc:
        for sock in bound:
            sock.close()
        # The system's words for the errno, without the address the socket module appends.
        cause = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror
        raise OSError(exc.errno, f"{name} {where.host}:{where.port}: {cause or exc}") from exc
    return bound


async def _site(runner: web.AppRunner, sockets: Sequence[socket.socket]) -> web.AppRunner:
    await runner.setup()
    for sock in sockets:
        await web.SockSite(runner, sock).start()
    return runner


def _runner(app: web.Application, *, cancel_on_disconnect: bool) -> web.AppRunner:
    # A client that goes away cancels its handler, whose cleanup releases the lease at once.
    return web.AppRunner(
        app, handler_cancellation=cancel_on_disconnect, access_log=None, shutdown_timeout=1.0
    )


async def start(replica: Replica) -> RunningReplica:
    """Bind both ports, check the store, then start the replica and serve; on any failure (or
    cancellation) whatever was started is stopped again before the error goes on."""
    # Every line the replica logs carries its id, the one in its store claims, metrics and admin
    # API: its requests and background work inherit the context they start in, here; the
    # caller's own context is left as it was (a test may start several replicas).
    bound_id = structlog.contextvars.bind_contextvars(replica=replica.id)
    try:
        return await _start(replica)
    finally:
        structlog.contextvars.reset_contextvars(**bound_id)


async def _start(replica: Replica) -> RunningReplica:
    settings = replica.settings
    bound = await _bind("LISTEN", settings.listen_address)
    runners: list[web.AppRunner] = []
    try:
        admin_sockets = await _bind("ADMIN_LISTEN", settings.admin_address)
        proxy_sockets, bound = bound, [*bound, *admin_sockets]
        await check_store(settings.broker(), outage_ok=True)
        runners.append(_runner(build_proxy_app(replica), cancel_on_disconnect=True))
        proxy = await _site(runners[-1], proxy_sockets)
        runners.append(_runner(build_ops_app(replica), cancel_on_disconnect=False))
        ops = await _site(runners[-1], admin_sockets)
    except BaseException:
        for runner in reversed(runners):
            await runner.cleanup()
        for sock in bound:  # those no site took over (closing one twice does nothing)
            sock.close()
        raise
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
    """Serve until SIGTERM or SIGINT, then stop gracefully; reload the sessions on SIGHUP. A
    signal during start-up stops it there; a failed start-up raises its error."""
    structlog.contextvars.bind_contextvars(replica=replica.id)  # the stopping's lines too
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, replica.request_reload)
    starting = asyncio.create_task(start(replica))
    signalled = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait((starting, signalled), return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
    if not starting.done():
        starting.cancel()
        with suppress(asyncio.CancelledError):
            await starting
        log.info("stopped during start-up")
        return
    running = starting.result()
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
