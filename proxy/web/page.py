"""The web page (proxy/page/static/): a list of the objects, uploads through tus, a
player. Served from the package, so that an installed wheel has it; no build step.

Routes (routes.py; under ``/s/<signature>`` too, so that a page opened through a
signed URL keeps the signature on its relative requests): ``/`` the list, ``/watch``
the player (``?key=``), ``/static/<name>`` the scripts, the style and vendor/.

The files are read once, in a thread, on first use, and kept in memory (about half a
megabyte, nearly all of it hls.js: proxy/page/files.py). Every answer is ``Cache-Control: no-cache`` with
a strong ETag of its bytes: the names carry no version (vendor/ neither), so a cache
must ask each time, and an unchanged file costs a 304 with no body; a long max-age
would keep an upgraded server's old script running against its new API.

Every answer carries a strict Content-Security-Policy: scripts, styles and fetches
from this origin only, nothing inline, nothing framing the page. ``blob:`` is allowed
for media and workers only, as hls.js feeds the ``<video>`` from a MediaSource and
runs its demuxer in a worker made from a blob. ``Referrer-Policy: no-referrer``, so
that a signature in the page's URL goes nowhere else.
"""

from __future__ import annotations

from aiohttp import web

from proxy.web.errors import ApiError
from proxy.web.settings import PAGE_FILES

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",  # data: for the empty favicon, so that none is fetched
        "media-src 'self' blob:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    )
)
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"}


async def _serve(request: web.Request, name: str) -> web.Response:
    found = await request.app[PAGE_FILES].get(name)
    if found is None:
        raise ApiError(404, "not_found", "no such file")
    headers = {**SECURITY_HEADERS, "ETag": found.etag, "Cache-Control": "no-cache"}
    if found.etag in {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}:
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = found.content_type
    return web.Response(body=found.body, headers=headers)


async def index(request: web.Request) -> web.Response:
    return await _serve(request, "index.html")


async def player(request: web.Request) -> web.Response:
    return await _serve(request, "player.html")


async def static_file(request: web.Request) -> web.Response:
    return await _serve(request, request.match_info["name"])
