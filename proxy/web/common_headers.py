"""What every answer carries, errors included: the request's id, which its log lines
name too, ``X-Content-Type-Options: nosniff``, and a ``Server`` header that names no
versions."""

from __future__ import annotations

import re
import uuid

from aiohttp import web

SERVER = "stream-proxy"
_REQUEST_ID = web.RequestKey("request_id", str)
# An id a trusted proxy gives (nginx's $request_id is 32 hex digits): nothing that
# could break a log line or a header.
_GIVEN_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id(request: web.BaseRequest) -> str:
    """The id of ``request``, made on first use: clients quote it, the log names it."""
    found: str | None = request.get(_REQUEST_ID)
    if found is not None:
        return found
    made = uuid.uuid4().hex
    request[_REQUEST_ID] = made
    return made


def adopt_request_id(request: web.BaseRequest, given: str) -> None:
    """Make ``given`` (a trusted proxy's id for this request) the request's id, so that
    the proxy's log and this one name it alike; unless it is no id or one was made."""
    if _REQUEST_ID not in request and _GIVEN_ID.fullmatch(given):
        request[_REQUEST_ID] = given


def common_headers(request: web.BaseRequest) -> dict[str, str]:
    return {"Server": SERVER, "X-Content-Type-Options": "nosniff", "X-Request-ID": request_id(request)}


async def add_common_headers(request: web.Request, response: web.StreamResponse) -> None:
    """An on_response_prepare signal: runs for every answer the application makes,
    before its head is sent (the server's own answers add them themselves)."""
    response.headers.update(common_headers(request))
