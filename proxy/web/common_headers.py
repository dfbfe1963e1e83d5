"""What every answer carries, errors included: the request's id, which its log lines
name too, ``X-Content-Type-Options: nosniff``, and a ``Server`` header that names no
versions."""

from __future__ import annotations

import uuid

from aiohttp import web

SERVER = "stream-proxy"
_REQUEST_ID = web.RequestKey("request_id", str)


def request_id(request: web.BaseRequest) -> str:
    """The id of ``request``, made on first use: clients quote it, the log names it."""
    found: str | None = request.get(_REQUEST_ID)
    if found is not None:
        return found
    made = uuid.uuid4().hex
    request[_REQUEST_ID] = made
    return made


def common_headers(request: web.BaseRequest) -> dict[str, str]:
    return {"Server": SERVER, "X-Content-Type-Options": "nosniff", "X-Request-ID": request_id(request)}


async def add_common_headers(request: web.Request, response: web.StreamResponse) -> None:
    """An on_response_prepare signal: runs for every answer the application makes,
    before its head is sent (the server's own answers add them themselves)."""
    response.headers.update(common_headers(request))
