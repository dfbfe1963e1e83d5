"""GET /files?prefix=&limit=&cursor=: one page of objects, in key order; for a
caller who may list only some prefixes (auth.py), only the keys under those."""

from __future__ import annotations

from aiohttp import web

from proxy.rules.content_types import served_content_type
from proxy.rules.keys import validate_cursor
from proxy.storage.base import ObjectInfo, ObjectPage, Storage
from proxy.web.auth import listing_prefixes
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
    limit, cursor = _limit(request.query.get("limit")), request.query.get("cursor") or None
    visible = listing_prefixes(request)
    if visible is None:
        page = await request.app[STORAGE].list(prefix, limit, cursor)
    else:
        page = await _list_within(request.app[STORAGE], visible, limit, cursor)
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


async def _list_within(
    storage: Storage, prefixes: tuple[str, ...], limit: int, cursor: str | None
) -> ObjectPage:
    """One page of the keys under ``prefixes`` (in key order, none inside another, so
    their keys follow each other prefix by prefix), after ``cursor``."""
    if cursor is not None:
        validate_cursor(cursor)
    found: list[ObjectInfo] = []
    for prefix in prefixes:
        if cursor is not None and cursor > prefix and not cursor.startswith(prefix):
            continue  # every key under this prefix sorts before the cursor
        page = await storage.list(prefix, limit - len(found), cursor)
        found += page.objects
        if page.next_cursor is not None:
            return ObjectPage(found, page.next_cursor)
        if len(found) == limit:
            # Later prefixes may hold more: the next page starts after the last key.
            return ObjectPage(found, found[-1].key if prefix != prefixes[-1] else None)
    return ObjectPage(found, None)
