"""Ops endpoints on ADMIN_LISTEN, a port of their own so they never shadow an upstream path:
/healthz, /readyz, /version, /metrics (ENABLE_METRICS); the admin API is in proxy/ops/admin.py."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.replica.replica import REPLICA


def package_version() -> str:
    try:
        return version("session-broker")
    except PackageNotFoundError:
        return "unknown"


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: sessions synced, store reachable, not draining."""
    replica = request.app[REPLICA]
    if await replica.ready():
        return web.json_response({"status": "ready"})
    status = "draining" if replica.draining else "not ready"
    return web.json_response({"status": status}, status=503)


async def version_info(request: web.Request) -> web.Response:
    return web.json_response({"name": "session-broker", "version": package_version()})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format (see proxy/telemetry/metrics.py)."""
    body = await request.app[REPLICA].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_ops_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/version", version_info)
    if app[REPLICA].settings.enable_metrics:
        app.router.add_get("/metrics", metrics)
