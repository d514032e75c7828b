"""The admin API under /admin on ADMIN_LISTEN; it exists only when ADMIN_TOKEN is set.

Every route needs ``Authorization: Bearer <ADMIN_TOKEN>``: 401 without a token, 403 with a wrong
one (compared in constant time). Request bodies are validated with msgspec; bad input gets 400
naming the field and the reason. Answers carry session ids and state, never a secret. An OpenAPI
3.1 document of it all is at /admin/openapi.json, its schemas generated from the same structs
(a session's tier and unit budget, the summary's tiers and budget totals included).

Every route works on one pool: the one named by the ``pool`` query parameter, else the default
pool (404 ``unknown_pool`` for a pool this replica does not serve). ``GET /admin/pools`` lists
the pools this replica serves, with their routes, fallback chains and summaries; ``GET
/admin/fleet`` the replicas with a live claim on a pool and those with requests waiting (the
web console's fleet figures, ``proxy/ops/console.py``).
"""

from __future__ import annotations

import hmac
import re
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import msgspec
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from broker import StoreError, UnknownSession
from broker.admin import RESERVED_REASONS, PoolSummary, SessionView
from broker.fleet import ReplicaClaim, fleet_presence
from broker.shard_admin import AnyAdmin
from proxy.ops.endpoints import package_version
from proxy.replica.replica import REPLICA, Replica

__all__ = ["add_admin_routes", "openapi_document"]

log = structlog.get_logger(__name__)

_REASON = r"^[A-Za-z0-9._ -]{1,64}$"
T = TypeVar("T")


class DisableBody(msgspec.Struct, forbid_unknown_fields=True):
    """Why the session is disabled (shown as ``disabled_reason``)."""

    reason: Annotated[str, msgspec.Meta(pattern=_REASON)] = "operator"


class WeightBody(msgspec.Struct, forbid_unknown_fields=True):
    """The weight overriding the configured one; null goes back to the configured weight."""

    weight: Annotated[float, msgspec.Meta(gt=0, le=1_000_000)] | None


class SessionList(msgspec.Struct):
    pool: str
    now_ms: int
    sessions: list[SessionView]


class PoolInfo(msgspec.Struct, kw_only=True):
    """A pool as this replica serves it: how requests reach it, what it falls back to (in the
    order tried), and its summary from the store. ``upstream`` is scheme, host and port only."""

    name: str
    default: bool
    strategy: str
    upstream: str
    path_prefix: str | None
    models: list[str]
    fallbacks: list[str]
    sessions_configured: int
    summary: PoolSummary


class PoolList(msgspec.Struct):
    #: The answering replica's id: the one its claims in the store, its logs and metrics carry.
    replica: str
    pool_header: str | None
    default_pool: str | None
    pools: list[PoolInfo]


class FleetView(msgspec.Struct, kw_only=True):
    """Who serves the pool: the replicas with a live claim on it (``replica`` is this one's
    claim id), how many of them have requests waiting for a session, and how many wait here."""

    pool: str
    now_ms: int
    replica: str
    replicas: list[ReplicaClaim]
    waiting_replicas: int
    waiting_here: int


class ErrorDetail(msgspec.Struct):
    code: str
    message: str
    field: str | None = None
    reason: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


class NoSuchPool(Exception):
    """The ``pool`` parameter names a pool this replica does not serve."""


class BadInput(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(value), status=status, content_type="application/json"
    )


def _error(
    status: int, code: str, message: str, *, field: str | None = None, reason: str | None = None
) -> web.Response:
    return _json(ErrorBody(ErrorDetail(code, message, field, reason)), status)


def _field_of(message: str) -> str:
    """The field a msgspec error is about: ``$.weight`` or a named missing/unknown field."""
    named = re.search(r"(?:unknown|required) field `([^`]+)`", message)
    if named:
        return named.group(1)
    path = re.search(r"at `\$\.?([^`]*)`", message)
    return path.group(1) if path and path.group(1) else "(body)"


async def _body(request: web.Request, kind: type[T], *, optional: bool) -> T:
    raw = await request.read()
    if not raw.strip():
        if optional:
            return msgspec.json.decode(b"{}", type=kind)
        raise BadInput("(body)", "a JSON object is required")
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        reason = re.sub(r" - at `\$[^`]*`$", "", str(exc)).replace("`", "")
        raise BadInput(_field_of(str(exc)), reason) from exc
    except msgspec.DecodeError as exc:
        raise BadInput("(body)", f"not valid JSON: {exc}") from exc


def token_middleware(token: str) -> Any:
    expected = token.encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return _error(401, "unauthenticated", "send Authorization: Bearer <ADMIN_TOKEN>")
        # aiohttp keeps bytes that are not UTF-8 as surrogates: compare the bytes as sent.
        if not hmac.compare_digest(presented.strip().encode("utf-8", "surrogateescape"), expected):
            log.warning("admin request with a wrong token", path=request.path)
            return _error(403, "forbidden", "the admin token is not valid")
        try:
            return await handler(request)
        except BadInput as exc:
            return _error(400, "invalid_body", str(exc), field=exc.field, reason=exc.reason)
        except UnknownSession as exc:
            return _error(404, "unknown_session", str(exc))
        except NoSuchPool as exc:
            return _error(404, "unknown_pool", str(exc))
        except StoreError as exc:
            log.warning("admin request failed: store unavailable", error=str(exc))
            return _error(503, "store_unavailable", exc.failure.message)

    return check


def _replica(request: web.Request) -> Replica:
    return request.app[REPLICA]


def _admin(request: web.Request) -> AnyAdmin:
    """The admin of the pool the ``pool`` parameter names, else of the default pool."""
    replica = _replica(request)
    name = request.query.get("pool")
    if name is None:
        return replica.admin
    admin = replica.admins.get(name)
    if admin is None:
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise NoSuchPool(f"this replica serves no pool named {shown!r}")
    return admin


async def list_sessions(request: web.Request) -> web.Response:
    admin = _admin(request)
    now = await admin.now_ms()
    return _json(SessionList(admin.pool.name, now, await admin.sessions()))


async def get_session(request: web.Request) -> web.Response:
    return _json(await _admin(request).session(request.match_info["id"]))


async def pool_summary(request: web.Request) -> web.Response:
    return _json(await _admin(request).summary())


async def fleet(request: web.Request) -> web.Response:
    admin = _admin(request)
    presence = await fleet_presence(admin.pool)
    served = _replica(request).leasing.served.get(admin.pool.name)
    return _json(
        FleetView(
            pool=admin.pool.name,
            now_ms=presence.now_ms,
            replica=admin.pool.claimant,
            replicas=presence.replicas,
            waiting_replicas=presence.waiting_replicas,
            waiting_here=served.queue.depth if served is not None else 0,
        )
    )


async def list_pools(request: web.Request) -> web.Response:
    replica = _replica(request)
    table = replica.table
    pools = []
    for name, plan in table.pools.items():
        admin = replica.admins.get(name)
        if admin is None:  # a reload is adding it right now
            continue
        url = urlsplit(plan.upstream_url)
        pools.append(
            PoolInfo(
                name=name,
                default=name == table.default,
                strategy=plan.strategy.value,
                upstream=f"{url.scheme}://{url.hostname}" + (f":{url.port}" if url.port else ""),
                path_prefix=plan.path_prefix,
                models=list(plan.models),
                fallbacks=[link.name for link in table.chain(name)[1:]],
                sessions_configured=len(plan.sessions),
                summary=await admin.summary(),
            )
        )
    return _json(PoolList(replica.id, table.header, table.default, pools))


async def _act(request: web.Request, action: str, **detail: Any) -> web.Response:
    admin = _admin(request)
    session_id = request.match_info["id"]
    if action == "enable":
        result = await admin.enable(session_id)
    elif action == "disable":
        result = await admin.disable(session_id, detail["reason"])
    elif action == "drain":
        result = await admin.drain(session_id)
    elif action == "reset":
        result = await admin.reset(session_id)
    else:
        result = await admin.set_weight(session_id, detail["weight"])
    log.info("admin action", action=action, pool=admin.pool.name, session=session_id, **detail)
    return _json(result)


async def enable(request: web.Request) -> web.Response:
    return await _act(request, "enable")


async def disable(request: web.Request) -> web.Response:
    body = await _body(request, DisableBody, optional=True)
    if body.reason in RESERVED_REASONS:
        raise BadInput("reason", f"{body.reason!r} is reserved; use the drain route for a drain")
    return await _act(request, "disable", reason=body.reason)


async def drain(request: web.Request) -> web.Response:
    return await _act(request, "drain")


async def reset(request: web.Request) -> web.Response:
    return await _act(request, "reset")


async def set_weight(request: web.Request) -> web.Response:
    body = await _body(request, WeightBody, optional=False)
    return await _act(request, "weight", weight=body.weight)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def add_admin_routes(app: web.Application, token: str) -> None:
    """Mount the admin API at /admin on the ops app."""
    admin = web.Application(middlewares=[token_middleware(token)])
    admin[REPLICA] = app[REPLICA]
    admin.router.add_get("/openapi.json", openapi)
    admin.router.add_get("/pool", pool_summary)
    admin.router.add_get("/fleet", fleet)
    admin.router.add_get("/pools", list_pools)
    admin.router.add_get("/sessions", list_sessions)
    admin.router.add_get("/sessions/{id}", get_session)
    admin.router.add_post("/sessions/{id}/enable", enable)
    admin.router.add_post("/sessions/{id}/disable", disable)
    admin.router.add_post("/sessions/{id}/drain", drain)
    admin.router.add_post("/sessions/{id}/reset", reset)
    admin.router.add_put("/sessions/{id}/weight", set_weight)
    app.add_subapp("/admin", admin)


def _operation(
    summary: str, response: str, *, body: str | None = None, session: bool = True
) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{response}"}
    error = {
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    }
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": ref}}},
            "401": {"description": "no token", **error},
            "403": {"description": "wrong token", **error},
            "503": {"description": "store unreachable", **error},
        },
    }
    op["parameters"] = [
        {
            "name": "pool",
            "in": "query",
            "required": False,
            "description": "the pool to work on (default: the default pool)",
            "schema": {"type": "string"},
        }
    ]
    op["responses"]["404"] = {"description": "no such pool", **error}
    if session:
        op["parameters"].append(
            {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
        )
        op["responses"]["404"] = {"description": "no such session or pool", **error}
    if body is not None:
        schema = {"$ref": f"#/components/schemas/{body}"}
        op["requestBody"] = {
            "required": body == "WeightBody",
            "content": {"application/json": {"schema": schema}},
        }
        op["responses"]["400"] = {"description": "invalid body: field and reason", **error}
    return op


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the admin API."""
    structs = (
        SessionView, SessionList, PoolSummary, PoolList, FleetView, DisableBody, WeightBody,
        ErrorBody,
    )  # fmt: skip
    _, components = msgspec.json.schema_components(
        structs, ref_template="#/components/schemas/{name}"
    )
    view = "SessionView"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "session-broker admin API",
            "version": package_version(),
            "description": "Operate a pool of sessions: ids and state only, never secrets.",
        },
        "servers": [{"url": "/admin"}],
        "security": [{"bearer": []}],
        "paths": {
            "/pool": {
                "get": _operation(
                    "Counts by state and by tier, unit budgets, leases, breakers, alerts",
                    "PoolSummary",
                    session=False,
                )
            },
            "/fleet": {
                "get": _operation(
                    "The replicas serving the pool, and those with requests waiting",
                    "FleetView",
                    session=False,
                )
            },
            "/pools": {
                "get": {
                    "summary": "Every pool this replica serves: routes, fallbacks, summaries",
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/PoolList"}
                                }
                            },
                        },
                        "401": {"description": "no token"},
                        "403": {"description": "wrong token"},
                        "503": {"description": "store unreachable"},
                    },
                }
            },
            "/sessions": {
                "get": _operation(
                    "Every session with state, health, tier and unit budget",
                    "SessionList",
                    session=False,
                )
            },
            "/sessions/{id}": {"get": _operation("One session", view)},
            "/sessions/{id}/enable": {"post": _operation("Enable a session", view)},
            "/sessions/{id}/disable": {
                "post": _operation("Disable a session fleet-wide", view, body="DisableBody")
            },
            "/sessions/{id}/drain": {"post": _operation("No new leases; leases out finish", view)},
            "/sessions/{id}/reset": {
                "post": _operation("Clear cooldown, breaker and counters", view)
            },
            "/sessions/{id}/weight": {
                "put": _operation("Override the weight (null: configured)", view, body="WeightBody")
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1 document"}},
                }
            },
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
