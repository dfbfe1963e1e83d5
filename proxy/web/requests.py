"""What every handler reads off a request: the object key, and the body as chunks
within the upload limit."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from proxy.rules.keys import validate_key
from proxy.streaming.bodies import limited
from proxy.web.settings import MAX_UPLOAD


def object_key(request: web.Request) -> str:
    return validate_key(request.match_info["key"])


async def request_chunks(request: web.Request) -> AsyncIterator[bytes]:
    while chunk := await request.content.readany():
        yield chunk


def within_upload_limit(request: web.Request, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``body``, failing with BodyTooLarge past ``server.max_upload_bytes`` (0: none)."""
    limit = request.app[MAX_UPLOAD]
    return limited(body, limit) if limit else body
