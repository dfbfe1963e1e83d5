"""GET /files: the listing's fields, prefixes and pages, on both backends, over the
objects the shared read-only proxy of each backend holds."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.web.downloads_support import (
    ALL_KEYS,
    CONTENT_TYPES,
    LISTED,
    Shared,
    module_loop,
    parse_date,
    raw,
)


async def list_page(client: TestClient[Any, Any], **query: str) -> dict[str, Any]:
    response = await client.get("/files", params=query)
    body: dict[str, Any] = await response.json()
    assert response.status == 200, body
    return body


@module_loop
async def test_listing_fields(shared: Shared) -> None:
    page = await list_page(shared.client, prefix="list/")
    assert page["next_cursor"] is None
    assert [o["key"] for o in page["objects"]] == sorted(LISTED)
    for obj in page["objects"]:
        key = obj["key"]
        assert set(obj) == {"key", "size", "etag", "last_modified", "content_type"}
        assert obj["size"] == len(shared.data[key]) == shared.stored[key]["size"]
        assert obj["etag"] == shared.stored[key]["etag"]
        assert obj["content_type"] == LISTED[key]
        modified = datetime.fromisoformat(obj["last_modified"])
        assert modified.utcoffset() is not None
        head = await raw(shared.client, "HEAD", f"/files/{key}")
        assert head.headers["ETag"] == obj["etag"]
        assert parse_date(head.headers["Last-Modified"]) == modified.replace(microsecond=0)


@module_loop
@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("list/", sorted(LISTED)),
        ("list/b", ["list/b/c.mp4", "list/b/d.png", "list/bz.json"]),
        ("list/b/", ["list/b/c.mp4", "list/b/d.png"]),
        ("list/b/d", ["list/b/d.png"]),
        ("list/c.bin", ["list/c.bin"]),
        ("list/zzz", []),
        ("list/b/x/", []),
        ("nothing/", []),
        ("ct/", sorted(key for key, _, _ in CONTENT_TYPES)),
    ],
)
async def test_listing_prefix(shared: Shared, prefix: str, expected: list[str]) -> None:
    page = await list_page(shared.client, prefix=prefix)
    assert [o["key"] for o in page["objects"]] == expected
    assert page["next_cursor"] is None


@module_loop
async def test_listing_everything(shared: Shared) -> None:
    for query in ({}, {"prefix": ""}, {"limit": "1000"}):
        page = await list_page(shared.client, **query)
        assert [o["key"] for o in page["objects"]] == ALL_KEYS == sorted(shared.data)
        assert page["next_cursor"] is None


@module_loop
@pytest.mark.parametrize(
    ("prefix", "limit", "pages"),
    [
        ("list/", 2, [["list/a.txt", "list/b/c.mp4"], ["list/b/d.png", "list/bz.json"], ["list/c.bin"]]),
        ("list/", 1, [[k] for k in sorted(LISTED)]),
        ("list/", 4, [sorted(LISTED)[:4], ["list/c.bin"]]),
        ("list/", 5, [sorted(LISTED)]),
        ("list/b", 2, [["list/b/c.mp4", "list/b/d.png"], ["list/bz.json"]]),
        ("list/b/", 1, [["list/b/c.mp4"], ["list/b/d.png"]]),
        ("", 4, [ALL_KEYS[i : i + 4] for i in range(0, len(ALL_KEYS), 4)]),
    ],
)
async def test_listing_pages(shared: Shared, prefix: str, limit: int, pages: list[list[str]]) -> None:
    seen: list[list[str]] = []
    cursor: str | None = None
    while len(seen) <= len(pages):
        query = {"prefix": prefix, "limit": str(limit)}
        if cursor is not None:
            query["cursor"] = cursor
        page = await list_page(shared.client, **query)
        seen.append([o["key"] for o in page["objects"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert cursor == seen[-1][-1]
    assert seen == pages


@module_loop
@pytest.mark.parametrize("limit", ["0", "-1", "abc", "1001", "1.5", "+5", "99999999999999999999"])
async def test_listing_bad_limit(shared: Shared, limit: str) -> None:
    response = await shared.client.get("/files", params={"limit": limit})
    body = await response.json()
    assert response.status == 400, body
    assert body["error"] == "invalid_limit" and body["message"]
