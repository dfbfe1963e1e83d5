"""GET and HEAD /files/{key} on both backends, checked on the wire: single and multiple
ranges, range sets answered with the whole object, the headers of GET and HEAD, content
types and missing keys.

The tests only read, so they share one proxy per backend (the ``shared`` fixture).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from proxy.config import Config, LocalConfig, ServerConfig, StorageConfig
from tests.conftest import Backend
from tests.web.downloads_support import (
    CONTENT_TYPES,
    EDGE,
    OBJ,
    RANGE_KEYS,
    N,
    Shared,
    assert_framed,
    assert_json_error,
    http_date,
    module_loop,
    parse_byteranges,
    raw,
)


def stored_last_modified(backend: Backend, key: str) -> datetime:
    """The modification time the backend itself reports, not through the proxy."""
    if backend.name == "local":
        st = (backend.config.storage.local.root / key).stat()
        return datetime.fromtimestamp(st.st_mtime, UTC)
    view: Any = backend.view
    modified: datetime = view.client.head_object(Bucket=view.bucket, Key=key)["LastModified"]
    return modified


# -- single ranges: (object size, Range header, status, (start, stop) of the body or None) ------------

Expected = tuple[int, int] | None

RANGE_CASES: list[tuple[int, str | None, int, Expected]] = [
    # An empty object: nothing to range over, every valid Range is unsatisfiable.
    (0, None, 200, (0, 0)),
    (0, "bytes=0-", 416, None),
    (0, "bytes=0-0", 416, None),
    (0, "bytes=-1", 416, None),
    (0, "bytes=-0", 416, None),
    (0, "bytes=junk", 200, (0, 0)),
    # One byte: 0 is both the first byte and size - 1, 1 is size.
    (1, None, 200, (0, 1)),
    (1, "bytes=0-", 206, (0, 1)),
    (1, "bytes=0-0", 206, (0, 1)),
    (1, "bytes=0-1", 206, (0, 1)),  # Safari's probe: the end past the object is clipped
    (1, "bytes=-1", 206, (0, 1)),
    (1, "bytes=-5", 206, (0, 1)),  # suffix longer than the object: all of it
    (1, "bytes=1-", 416, None),
    (1, "bytes=1-1", 416, None),
    (1, "bytes=-0", 416, None),
    (1, "bytes=0-0,-1", 200, (0, 1)),  # two parts adding up to more than the object
    # A thousand bytes.
    (N, None, 200, (0, N)),
    (N, "bytes=0-", 206, (0, N)),  # Chromium's first request for media
    (N, "bytes=0-1", 206, (0, 2)),  # Safari's probe: exactly two bytes
    (N, "bytes=0-0", 206, (0, 1)),
    (N, "bytes=1-1", 206, (1, 2)),
    (N, "bytes=100-199", 206, (100, 200)),
    (N, "bytes=0-998", 206, (0, N - 1)),
    (N, "bytes=0-999", 206, (0, N)),
    (N, "bytes=0-1000", 206, (0, N)),  # end == size: clipped
    (N, "bytes=998-1000", 206, (998, N)),
    (N, "bytes=500-99999999999999999999999", 206, (500, N)),
    (N, "bytes=999-", 206, (N - 1, N)),
    (N, "bytes=999-999", 206, (N - 1, N)),
    (N, "bytes=-1", 206, (N - 1, N)),
    (N, "bytes=-999", 206, (1, N)),
    (N, "bytes=-1000", 206, (0, N)),
    (N, "bytes=-1001", 206, (0, N)),
    (N, "bytes=0-1,1000-", 206, (0, 2)),  # the unsatisfiable range is dropped: one part
    (N, "BYTES=0-1", 206, (0, 2)),  # range units are case-insensitive
    (N, "bytes=1000-", 416, None),
    (N, "bytes=1000-1000", 416, None),
    (N, "bytes=1001-2000", 416, None),
    (N, "bytes=-0", 416, None),
    (N, "bytes=1000-,5000-6000,-0", 416, None),
    # Not a valid byte range set, or another unit: ignored, the whole object.
    (N, "bytes=5-4", 200, (0, N)),
    (N, "items=0-1", 200, (0, N)),
    (N, "bytes 0-1", 200, (0, N)),
    (N, "bytes=", 200, (0, N)),
    (N, "bytes=a-b", 200, (0, N)),
    (N, "bytes=1-2-3", 200, (0, N)),
    (N, "bytes=--1", 200, (0, N)),
    (N, "bytes=0x10-0x20", 200, (0, N)),
    (N, "bytes=0-1,x", 200, (0, N)),
    (N, "bytes=1000-,junk", 200, (0, N)),
    # Around the size up to which a range is read whole and sent with the head.
    (EDGE, None, 200, (0, EDGE)),
    (EDGE, "bytes=0-", 206, (0, EDGE)),
    (EDGE, f"bytes=0-{EDGE - 2}", 206, (0, EDGE - 1)),
    (EDGE, "bytes=1-", 206, (1, EDGE)),
    (EDGE, "bytes=-1", 206, (EDGE - 1, EDGE)),
]


def _range_id(case: tuple[int, str | None, int, Expected]) -> str:
    size, header, status, _ = case
    return f"{size}B-{header or 'no-range'}-{status}"


@module_loop
@pytest.mark.parametrize(
    ("size", "header", "status", "expected"), RANGE_CASES, ids=[_range_id(c) for c in RANGE_CASES]
)
async def test_single_range(
    shared: Shared, size: int, header: str | None, status: int, expected: Expected
) -> None:
    key = RANGE_KEYS[size]
    data = shared.data[key]
    r = await raw(shared.client, "GET", f"/files/{key}", {"Range": header} if header else None)
    assert r.status == status, (r.status, r.headers, r.body[:200])
    if expected is None:
        assert_json_error(r, 416, "range_not_satisfiable")
        assert r.headers["Content-Range"] == f"bytes */{size}"
        return
    start, stop = expected
    assert_framed(r)
    assert r.body == data[start:stop]
    assert r.headers["Content-Type"] == "video/mp4"
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["ETag"] == shared.stored[key]["etag"]
    if status == 206:
        assert r.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}"
    else:
        assert "Content-Range" not in r.headers


# -- several ranges ------------------------------------------------------------------------------------

SIXTEEN = ",".join(f"{i * 10}-{i * 10}" for i in range(16))
SEVENTEEN = ",".join(f"{i * 10}-{i * 10}" for i in range(17))

MULTI_CASES: list[tuple[str, list[tuple[int, int]]]] = [
    ("bytes=0-1,-2", [(0, 2), (998, N)]),
    ("bytes=500-509,0-9", [(500, 510), (0, 10)]),  # in the order asked, not sorted
    ("bytes=0-9,5-14", [(0, 10), (5, 15)]),  # overlapping but not past the size: kept
    ("bytes=0-9,0-9", [(0, 10), (0, 10)]),
    ("bytes=0-0,999-999", [(0, 1), (999, N)]),
    ("bytes=990-,-5,0-0", [(990, N), (995, N), (0, 1)]),
    ("bytes=10-19, 30-39,\t50-59", [(10, 20), (30, 40), (50, 60)]),
    ("bytes=0-1,,4-5", [(0, 2), (4, 6)]),
    ("bytes=0-1,1000-,5-6,-0", [(0, 2), (5, 7)]),  # the unsatisfiable ones are dropped
    ("bytes=900-2000,0-1", [(900, N), (0, 2)]),
    ("bytes=" + SIXTEEN, [(i * 10, i * 10 + 1) for i in range(16)]),  # server.max_ranges exactly
]


@module_loop
@pytest.mark.parametrize(("header", "expected"), MULTI_CASES, ids=[c[0][:40] for c in MULTI_CASES])
async def test_multiple_ranges(shared: Shared, header: str, expected: list[tuple[int, int]]) -> None:
    data = shared.data[OBJ]
    r = await raw(shared.client, "GET", f"/files/{OBJ}", {"Range": header})
    assert r.status == 206, (r.status, r.headers)
    assert_framed(r)
    assert "Content-Range" not in r.headers
    assert r.headers["ETag"] == shared.stored[OBJ]["etag"]
    assert r.headers["Accept-Ranges"] == "bytes"
    parts = parse_byteranges(r)
    assert [part for _, part in parts] == [data[start:stop] for start, stop in expected]
    for (headers, _), (start, stop) in zip(parts, expected, strict=True):
        assert headers["Content-Type"] == "video/mp4"
        assert headers["Content-Range"] == f"bytes {start}-{stop - 1}/{N}"


@module_loop
@pytest.mark.parametrize(
    ("header", "settings"),
    [
        ("bytes=" + SEVENTEEN, "default"),  # more ranges than server.max_ranges (16)
        ("bytes=0-0,2-2,4-4", "custom"),  # more than server.max_ranges = 2
        ("bytes=0-999,0-0", "default"),  # overlapping: 1001 bytes of a 1000-byte object
        ("bytes=-1000,-1", "default"),
        ("bytes=0-599,400-999", "default"),
        ("bytes=0-,0-", "default"),
    ],
)
async def test_abusive_range_sets_get_the_whole_object(shared: Shared, header: str, settings: str) -> None:
    client = shared.custom if settings == "custom" else shared.client
    r = await raw(client, "GET", f"/files/{OBJ}", {"Range": header})
    assert r.status == 200, (r.status, r.headers)
    assert_framed(r)
    assert r.body == shared.data[OBJ]
    assert "Content-Range" not in r.headers
    assert r.headers["Content-Type"] == "video/mp4"


@module_loop
async def test_max_ranges_setting_allows_up_to_its_value(shared: Shared) -> None:
    data = shared.data[OBJ]
    r = await raw(shared.custom, "GET", f"/files/{OBJ}", {"Range": "bytes=0-0,2-2"})
    assert r.status == 206
    assert_framed(r)
    assert [part for _, part in parse_byteranges(r)] == [data[0:1], data[2:3]]


# -- the headers of GET and HEAD -----------------------------------------------------------------------

HEADER_NAMES = ("Accept-Ranges", "Content-Length", "Content-Type", "ETag", "Last-Modified", "Cache-Control")


@module_loop
async def test_get_and_head_headers(shared: Shared) -> None:
    get = await raw(shared.client, "GET", f"/files/{OBJ}")
    assert get.status == 200
    assert_framed(get)
    assert get.body == shared.data[OBJ]
    assert get.headers["Accept-Ranges"] == "bytes"
    assert get.headers["Content-Length"] == str(N)
    assert get.headers["Content-Type"] == "video/mp4"
    etag = get.headers["ETag"]
    assert etag == shared.stored[OBJ]["etag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2  # strong: no W/
    modified = stored_last_modified(shared.backend, OBJ).replace(microsecond=0)
    assert get.headers["Last-Modified"] == http_date(modified)
    assert get.headers["Cache-Control"] == "no-cache"

    head = await raw(shared.client, "HEAD", f"/files/{OBJ}")
    assert head.status == 200
    assert head.body == b""
    assert {n: head.headers.get(n) for n in HEADER_NAMES} == {n: get.headers.get(n) for n in HEADER_NAMES}


@module_loop
@pytest.mark.parametrize("header", ["bytes=0-1", "bytes=5000-", "bytes=0-1,5-6", "bytes=-0"])
async def test_head_answers_a_range_as_get_would(shared: Shared, header: str) -> None:
    # RFC 9110 §9.3.2: HEAD gets the header fields GET would, so a client can ask what a range is.
    get = await raw(shared.client, "GET", f"/files/{OBJ}", {"Range": header})
    head = await raw(shared.client, "HEAD", f"/files/{OBJ}", {"Range": header})
    assert get.status in (206, 416)
    assert head.status == get.status, head.headers
    assert head.body == b""
    assert head.headers.get("Content-Range") == get.headers.get("Content-Range")
    assert head.headers["Content-Length"] == get.headers["Content-Length"]
    assert head.headers["Content-Type"].split(";")[0] == get.headers["Content-Type"].split(";")[0]


@module_loop
async def test_cache_control_setting(shared: Shared) -> None:
    for method, headers in (("GET", {}), ("HEAD", {}), ("GET", {"Range": "bytes=0-0"})):
        r = await raw(shared.custom, method, f"/files/{OBJ}", headers)
        assert r.status in (200, 206)
        assert r.headers["Cache-Control"] == "public, max-age=60"
    r = await raw(shared.custom, "GET", f"/files/{OBJ}", {"If-None-Match": shared.stored[OBJ]["etag"]})
    assert r.status == 304
    assert r.headers["Cache-Control"] == "public, max-age=60"


@module_loop
@pytest.mark.parametrize(("key", "expected"), [(key, expected) for key, _, expected in CONTENT_TYPES])
async def test_content_type_of_uploads(shared: Shared, key: str, expected: str) -> None:
    data = shared.data[key]
    for method, headers in (("GET", {}), ("HEAD", {}), ("GET", {"Range": "bytes=2-3"})):
        r = await raw(shared.client, method, f"/files/{key}", headers)
        assert r.status == (206 if headers and data else 416 if headers else 200)
        if r.status == 416:
            continue
        assert r.headers["Content-Type"] == expected
        assert r.headers["Content-Length"] == str(len(data[2:4] if headers else data))
        assert r.headers["ETag"] == shared.stored[key]["etag"]
        assert r.headers["Accept-Ranges"] == "bytes"
        if method == "GET":
            assert r.body == (data[2:4] if headers else data)


@pytest.mark.parametrize(
    ("key", "expected"),
    [("raw.png", "image/png"), ("dir/raw.json", "application/json"), ("raw", "application/octet-stream")],
)
async def test_content_type_guessed_without_stored_type(
    tmp_path: Path, proxy_client: Any, key: str, expected: str
) -> None:
    # A file put in the local root by something else has no metadata.
    root = tmp_path / "data"
    (root / key).parent.mkdir(parents=True, exist_ok=True)
    (root / key).write_bytes(b"\x89PNG....")
    client = await proxy_client(
        Config(ServerConfig(), StorageConfig(backend="local", local=LocalConfig(root)))
    )
    for method in ("GET", "HEAD"):
        r = await raw(client, method, f"/files/{key}")
        assert r.status == 200
        assert r.headers["Content-Type"] == expected
        assert r.headers["Content-Length"] == "8"
    assert (await raw(client, "GET", f"/files/{key}")).body == b"\x89PNG...."


@module_loop
@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("GET", {}),
        ("GET", {"Range": "bytes=0-1"}),
        ("GET", {"Range": "bytes=5000-"}),
        ("GET", {"If-Match": "*"}),
        ("GET", {"If-None-Match": "*"}),
        ("GET", {"If-Unmodified-Since": "Sun, 06 Nov 1994 08:49:37 GMT"}),
        ("HEAD", {}),
        ("HEAD", {"If-None-Match": "*"}),
    ],
)
async def test_missing_key_is_404(shared: Shared, method: str, headers: dict[str, str]) -> None:
    for key in ("absent.mp4", "r/absent", "r"):  # "r" is a directory on the local backend
        r = await raw(shared.client, method, f"/files/{key}", headers)
        if method == "GET":
            assert_json_error(r, 404, "not_found")
            assert "Content-Range" not in r.headers
        else:
            assert r.status == 404
            assert r.body == b""
