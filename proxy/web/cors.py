"""CORS: the pages of the sites in ``auth.cors_origins`` may call this server from
script (a player, tus-js-client, Uppy) and read its answers.

A preflight (OPTIONS with ``Access-Control-Request-Method``) from such an origin is
answered here, before routing decides anything, with the methods and request headers
those clients send; from any other origin it is refused. Every answer to a listed
origin, errors included (so that a page can read why it was refused), names the
origin and exposes the headers a client must read (tus offsets, ranges, ETag).

Such origins may also write (PUT, POST, PATCH, DELETE), as those in
``server.allowed_origins`` may (proxy/rules/origins.py): settings.py adds them to
that list. The converse does not hold: ``server.allowed_origins`` lets a page of
another site send a form, not read the answers. Credentials are bearer tokens or
signed URLs, never cookies, so ``Access-Control-Allow-Credentials`` is not sent.
"""

from __future__ import annotations

from aiohttp import web

from proxy.config import Config
from proxy.rules.origins import same_origin
from proxy.web.errors import ApiError, Handler
from proxy.web.settings import CORS_ORIGINS

ALLOWED_METHODS = "GET, HEAD, PUT, POST, PATCH, DELETE, OPTIONS"
# What tus-js-client, Uppy and players send beyond the CORS-safelisted headers.
_ALLOWED_HEADERS = frozenset(
    {"authorization", "content-type", "x-http-method-override", "range", "x-requested-with"}
)
_ALLOWED_HEADER_PREFIXES = ("upload-", "tus-", "if-")
# What a page's script may read of an answer, beyond the safelisted headers.
EXPOSED_HEADERS = ", ".join(
    (
        "Location",
        "Upload-Offset",
        "Upload-Length",
        "Upload-Expires",
        "Upload-Metadata",
        "Upload-Defer-Length",
        "Tus-Resumable",
        "Tus-Version",
        "Tus-Extension",
        "Tus-Max-Size",
        "Tus-Checksum-Algorithm",
        "Content-Range",
        "Content-Length",
        "Accept-Ranges",
        "ETag",
        "Object-Location",
        "X-Request-ID",
    )
)
# Seconds a browser may reuse a preflight's answer (Chromium caps it at 7200).
MAX_AGE = 600


def install(app: web.Application, config: Config) -> None:
    app[CORS_ORIGINS] = config.auth.cors_origins if config.auth is not None else ()


def _allowed(request: web.Request, origin: str | None) -> bool:
    return origin is not None and any(same_origin(origin, o) for o in request.app[CORS_ORIGINS])


def header_allowed(name: str) -> bool:
    lower = name.strip().lower()
    return lower in _ALLOWED_HEADERS or lower.startswith(_ALLOWED_HEADER_PREFIXES)


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    is_preflight = (
        request.method == "OPTIONS"
        and "Origin" in request.headers
        and "Access-Control-Request-Method" in request.headers
    )
    if not (is_preflight and request.app[CORS_ORIGINS]):
        return await handler(request)
    origin = request.headers["Origin"]
    if not _allowed(request, origin):
        message = "pages of this origin may not call this server (see auth.cors_origins)"
        raise ApiError(403, "cross_origin_refused", message)
    requested = request.headers.get("Access-Control-Request-Headers", "").split(",")
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": ALLOWED_METHODS,
        "Access-Control-Max-Age": str(MAX_AGE),
    }
    # Only the headers allowed are named: a browser then refuses a request with others.
    names = [h.strip() for h in requested if h.strip() and header_allowed(h)]
    if names:
        headers["Access-Control-Allow-Headers"] = ", ".join(names)
    return web.Response(status=204, headers=headers)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """An on_response_prepare signal: every answer, errors included."""
    if not request.app[CORS_ORIGINS]:
        return
    # Caches must keep the answers to different origins apart.
    response.headers.add("Vary", "Origin")
    origin = request.headers.get("Origin")
    if _allowed(request, origin) and "Access-Control-Allow-Origin" not in response.headers:
        assert origin is not None
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
