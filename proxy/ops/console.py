"""The web console at /ui/ on ADMIN_LISTEN, mounted with the admin API (only with ADMIN_TOKEN).

One static page, a stylesheet and a script (``proxy/ops/ui/``, package data: no build step). The
page holds no data and needs no token: its script asks the admin API with the token the operator
types, which it keeps in the tab's ``sessionStorage``. Only the files named in ``ASSETS`` are
served, read once when the app is built: no path from a request ever reaches the file system, so
no traversal is possible. Each answer carries a strict Content-Security-Policy (scripts and
styles from this origin only, nothing inline, no framing), ``nosniff``, no referrer, and an ETag;
``Cache-Control: no-cache`` makes a browser revalidate (a 304 when nothing changed), so an
upgraded replica serves its new console at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = ["ASSETS", "CONTENT_SECURITY_POLICY", "add_console_routes"]

#: The console's files and their content types; nothing else is served under /ui/.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
#: Only this origin's own script, styles and API; no inline code, no plugins, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str


def _load() -> dict[str, _Asset]:
    folder = resources.files("proxy.ops").joinpath("ui")
    assets = {}
    for name, content_type in ASSETS.items():
        body = folder.joinpath(name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[name] = _Asset(body, content_type, etag)
    return assets


def _handler(asset: _Asset) -> Handler:
    async def serve(request: web.Request) -> web.Response:
        headers = {**_HEADERS, "ETag": asset.etag}
        if asset.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, headers=headers | {"Content-Type": asset.content_type})

    return serve


async def _to_index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect("/ui/")


def add_console_routes(app: web.Application) -> None:
    """Serve the console at /ui/ (and /ui -> /ui/)."""
    assets = _load()
    app.router.add_get("/ui", _to_index)
    app.router.add_get("/ui/", _handler(assets["index.html"]))
    for name, asset in assets.items():
        app.router.add_get(f"/ui/{name}", _handler(asset))
