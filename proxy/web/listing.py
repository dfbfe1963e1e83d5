"""GET /files?prefix=&limit=&cursor=: one page of objects, in key order."""

from __future__ import annotations

from aiohttp import web

from proxy.rules.content_types import served_content_type
from proxy.web.errors import ApiError
from proxy.web.settings import STORAGE

MAX_LIMIT = 1000


def _limit(raw: str | None) -> int:
    if raw is None:
        return MAX_LIMIT
    # isascii() too: str.isdigit() takes digits such as '²' that int() refuses; and
    # no more digits than the limit has, as int() refuses thousands of them.
    if (
        not (raw.isascii() and raw.isdigit() and len(raw) <= len(str(MAX_LIMIT)))
        or not 1 <= int(raw) <= MAX_LIMIT
    ):
        raise ApiError(400, "invalid_limit", f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


async def list_files(request: web.Request) -> web.Response:
    prefix = request.query.get("prefix", "")
    page = await request.app[STORAGE].list(
        prefix, _limit(request.query.get("limit")), request.query.get("cursor") or None
    )
    objects = [
        {
            "key": o.key,
            "size": o.size,
            "etag": o.etag,
            "last_modified": o.last_modified.isoformat(),
            # S3 listings carry no content type: those are guessed from the key.
            "content_type": served_content_type(o.content_type, o.key),
        }
        for o in page.objects
    ]
    return web.json_response({"objects": objects, "next_cursor": page.next_cursor})
