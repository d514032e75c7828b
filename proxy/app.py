"""The two aiohttp applications of a replica: the proxy on LISTEN and the ops endpoints on
ADMIN_LISTEN. The replica's resources, and the request path's upstream client, open and close
with the proxy app (``cleanup_ctx``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from proxy.ops.admin import add_admin_routes
from proxy.ops.console import add_console_routes
from proxy.ops.endpoints import add_ops_routes
from proxy.replica.replica import REPLICA, Replica
from proxy.request.auth import api_key_middleware
from proxy.request.forward import ProxyRoute
from proxy.request.services import RequestSettings, Services, open_upstream_client


def build_proxy_app(replica: Replica) -> web.Application:
    keys = replica.settings.api_keys
    middlewares = [api_key_middleware(keys)] if keys else []
    # Bodies are streamed by the handler itself, bounded by MAX_BODY_BYTES.
    app = web.Application(middlewares=middlewares, client_max_size=replica.settings.max_body_bytes)
    app[REPLICA] = replica
    route = ProxyRoute(replica.admission)
    settings = RequestSettings.of(replica.settings)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        await replica.start()
        client = open_upstream_client(settings)
        route.serve(
            Services(
                settings=settings,
                pools=replica,
                leasing=replica.leasing,
                releases=replica.releases,
                metrics=replica.metrics,
                client=client,
            )
        )
        yield
        await client.close()
        await replica.close()

    app.cleanup_ctx.append(resources)
    app.router.add_route("*", "/{path:.*}", route.handle)
    return app


def build_ops_app(replica: Replica) -> web.Application:
    app = web.Application()
    app[REPLICA] = replica
    add_ops_routes(app)
    if replica.settings.admin_token:
        add_admin_routes(app, replica.settings.admin_token)
        add_console_routes(app)
    return app
