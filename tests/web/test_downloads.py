"""GET and HEAD /files/{key} and GET /files against both backends, checked on the wire.

Responses are read with raw HTTP/1.1 requests (``Connection: close``, read to EOF), so
the exact bytes the server sent are compared: a body one byte longer or shorter than
its Content-Length fails. The S3 tests put a recording layer between the proxy and moto
to see which requests, with which Range and If-Match, reach S3.

The table-driven tests only read, so they share one proxy per backend (module scope,
on a module-scoped event loop): starting an S3 client and a bucket per row would cost
most of the runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import os
import re
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from multidict import CIMultiDict

from proxy.app import create_app
from proxy.config import Config, LocalConfig, ServerConfig, StorageConfig
from proxy.storage import backend as storage_backend
from proxy.storage.local.objects import LocalStorage
from proxy.storage.local.resumable import LocalResumableStore
from proxy.storage.s3.relay import USER_AGENT
from tests.conftest import Backend, MiB, S3Endpoint, S3View, backend_for, make_bucket, s3_config, wait_until
from tests.net import TcpTap
from tests.s3_interposer import S3Interposer

N = 1000  # the "about a thousand bytes" object of the range tables
TIMEOUT = 10.0  # seconds; a hang fails the test instead of blocking the run
module_loop = pytest.mark.asyncio(loop_scope="module")


def object_bytes(size: int) -> bytes:
    return os.urandom(size)


# -- raw HTTP -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw(
    client: TestClient[Any, Any], method: str, path: str, headers: dict[str, str] | None = None
) -> Raw:
    """One request on its own connection; the response is everything until EOF."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        async with asyncio.timeout(TIMEOUT):
            data = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head: {data[:300]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed: CIMultiDict[str] = CIMultiDict()
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed.add(name.strip(), value.strip())
    return Raw(int(status_line.split()[1]), parsed, body)


def assert_framed(r: Raw) -> None:
    """The body on the wire is exactly Content-Length bytes, not chunked."""
    assert "Transfer-Encoding" not in r.headers
    assert int(r.headers["Content-Length"]) == len(r.body), (r.headers, len(r.body))


def assert_json_error(r: Raw, status: int, error: str) -> None:
    assert r.status == status, (r.status, r.body[:300])
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["error"] == error
    assert isinstance(body["message"], str) and body["message"]


def http_date(when: datetime) -> str:
    return email.utils.format_datetime(when.astimezone(UTC), usegmt=True)


def parse_date(value: str) -> datetime:
    return email.utils.parsedate_to_datetime(value)


async def upload(
    client: TestClient[Any, Any], key: str, data: bytes, content_type: str = "video/mp4"
) -> dict[str, Any]:
    response = await client.put(f"/files/{key}", data=data, headers={"Content-Type": content_type})
    body: dict[str, Any] = await response.json()
    assert response.status == 201, body
    return body


def stored_last_modified(backend: Backend, key: str) -> datetime:
    """The modification time the backend itself reports, not through the proxy."""
    if backend.name == "local":
        st = (backend.config.storage.local.root / key).stat()
        return datetime.fromtimestamp(st.st_mtime, UTC)
    view: Any = backend.view
    modified: datetime = view.client.head_object(Bucket=view.bucket, Key=key)["LastModified"]
    return modified


def parse_byteranges(r: Raw) -> list[tuple[CIMultiDict[str], bytes]]:
    """The parts of a multipart/byteranges body, strictly: no preamble, no epilogue."""
    media_type, _, params = r.headers["Content-Type"].partition(";")
    assert media_type.strip().lower() == "multipart/byteranges"
    name, _, boundary = params.strip().partition("=")
    assert name.lower() == "boundary" and boundary
    delimiter = b"\r\n--" + boundary.strip('"').encode("ascii")
    body = r.body
    if body.startswith(delimiter[2:]):  # RFC 2046: the first delimiter's CRLF is optional
        body = b"\r\n" + body
    pieces = body.split(delimiter)
    assert pieces[0] == b"", f"preamble before the first part: {pieces[0][:100]!r}"
    assert pieces[-1] in (b"--", b"--\r\n"), f"bad closing delimiter: {pieces[-1][:100]!r}"
    parts = []
    for piece in pieces[1:-1]:
        assert piece.startswith(b"\r\n"), piece[:100]
        head, sep, data = piece[2:].partition(b"\r\n\r\n")
        assert sep, piece[:200]
        headers: CIMultiDict[str] = CIMultiDict()
        for line in head.decode("ascii").split("\r\n"):
            name, colon, value = line.partition(":")
            assert colon, line
            headers.add(name.strip(), value.strip())
        parts.append((headers, data))
    return parts


# -- one proxy per backend for the read-only tests ----------------------------------------------------

RANGE_KEYS = {size: f"r/{size}.mp4" for size in (0, 1, N)}
OBJ = RANGE_KEYS[N]
# key, Content-Type sent with the PUT, Content-Type GET must answer
CONTENT_TYPES = [
    ("ct/a/clip.mp4", "video/webm", "video/webm"),  # what was stored wins over the extension
    ("ct/b/clip.mp4", "application/octet-stream", "video/mp4"),  # nothing useful sent: guessed
    ("ct/notes.txt", "text/plain; charset=utf-8", "text/plain; charset=utf-8"),
    ("ct/no-extension", "application/octet-stream", "application/octet-stream"),
    ("ct/empty.txt", "text/plain", "text/plain"),
]
LISTED = {
    "list/a.txt": "text/plain",
    "list/b/c.mp4": "video/mp4",
    "list/b/d.png": "image/png",
    "list/bz.json": "application/json",
    "list/c.bin": "application/octet-stream",
}
ALL_KEYS = sorted([*RANGE_KEYS.values(), *(key for key, _, _ in CONTENT_TYPES), *LISTED])
CUSTOM: dict[str, Any] = {"max_ranges": 2, "cache_control": "public, max-age=60"}


@dataclass
class Shared:
    backend: Backend
    client: TestClient[Any, Any]  # default server settings
    custom: TestClient[Any, Any]  # the settings in CUSTOM
    data: dict[str, bytes] = field(default_factory=dict)
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)


async def start_client(config: Config, server_class: type[TestServer] = TestServer) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(server_class(create_app(config), host="127.0.0.1"))
    await client.start_server()
    return client


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["local", "s3"])
async def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Shared]:
    tmp = tmp_path_factory.mktemp("downloads")
    bucket: Iterator[str] | None = None
    if request.param == "local":
        backend = backend_for("local", tmp, None, None)
    else:
        endpoint: S3Endpoint = request.getfixturevalue("moto_endpoint")
        bucket = make_bucket(endpoint)
        backend = backend_for("s3", tmp, endpoint, next(bucket))
    custom_config = replace(backend.config, server=replace(backend.config.server, **CUSTOM))
    setup = Shared(backend, await start_client(backend.config), await start_client(custom_config))
    try:
        uploads = [(key, object_bytes(size), "video/mp4") for size, key in RANGE_KEYS.items()]
        uploads += [(key, b"" if "empty" in key else b"0123456789", sent) for key, sent, _ in CONTENT_TYPES]
        uploads += [(key, object_bytes(7 * i + 1), ctype) for i, (key, ctype) in enumerate(LISTED.items())]
        for key, data, content_type in uploads:
            setup.data[key] = data
            setup.stored[key] = await upload(setup.client, key, data, content_type)
        yield setup
    finally:
        await setup.client.close()
        await setup.custom.close()
        if bucket is not None:
            next(bucket, None)  # empties and deletes the bucket


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
async def test_head_ignores_range(shared: Shared, header: str) -> None:
    plain = await raw(shared.client, "HEAD", f"/files/{OBJ}")
    r = await raw(shared.client, "HEAD", f"/files/{OBJ}", {"Range": header})
    assert r.status == 200, r.headers
    assert r.body == b""
    assert r.headers["Content-Length"] == str(N)
    assert "Content-Range" not in r.headers
    assert {n: r.headers.get(n) for n in HEADER_NAMES} == {n: plain.headers.get(n) for n in HEADER_NAMES}


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


# -- preconditions (RFC 9110 §13.2.2) ------------------------------------------------------------------

# {etag} is the object's ETag, {lm} its Last-Modified, {earlier} and {later} a second
# before and after. Range 10-19 gives bytes 10 to 19 when honoured.
PRECONDITION_CASES: list[tuple[dict[str, str], int]] = [
    ({"If-Match": "{etag}"}, 200),
    ({"If-Match": "*"}, 200),
    ({"If-Match": '"other", {etag}'}, 200),
    ({"If-Match": '"other"'}, 412),
    ({"If-Match": "W/{etag}"}, 412),  # strong comparison
    ({"If-Unmodified-Since": "{lm}"}, 200),
    ({"If-Unmodified-Since": "{later}"}, 200),
    ({"If-Unmodified-Since": "{earlier}"}, 412),
    ({"If-Unmodified-Since": "not a date"}, 200),
    ({"If-Match": "{etag}", "If-Unmodified-Since": "{earlier}"}, 200),  # ignored with If-Match
    ({"If-None-Match": "{etag}"}, 304),
    ({"If-None-Match": "W/{etag}"}, 304),  # weak comparison
    ({"If-None-Match": '"a", {etag}'}, 304),
    ({"If-None-Match": "*"}, 304),
    ({"If-None-Match": '"other"'}, 200),
    ({"If-Modified-Since": "{lm}"}, 304),
    ({"If-Modified-Since": "{earlier}"}, 200),
    ({"If-Modified-Since": "not a date"}, 200),
    ({"If-None-Match": '"other"', "If-Modified-Since": "{lm}"}, 200),  # ignored with If-None-Match
    ({"If-Match": '"other"', "If-None-Match": "{etag}"}, 412),  # the 412 conditions come first
    ({"If-Unmodified-Since": "{earlier}", "If-Modified-Since": "{lm}"}, 412),
    ({"If-Match": "{etag}", "If-None-Match": "{etag}"}, 304),
    ({"If-None-Match": "{etag}", "Range": "bytes=10-19"}, 304),  # preconditions before Range
    ({"If-Modified-Since": "{lm}", "Range": "bytes=10-19"}, 304),
    ({"If-Match": '"other"', "Range": "bytes=10-19"}, 412),
    ({"If-Match": '"other"', "Range": "bytes=5000-"}, 412),
    ({"If-Match": "{etag}", "Range": "bytes=10-19"}, 206),
    ({"If-None-Match": '"other"', "Range": "bytes=10-19"}, 206),
    ({"If-Range": "{etag}", "Range": "bytes=10-19"}, 206),
    ({"If-Range": "{lm}", "Range": "bytes=10-19"}, 206),
    ({"If-Range": '"other"', "Range": "bytes=10-19"}, 200),
    ({"If-Range": "W/{etag}", "Range": "bytes=10-19"}, 200),  # weak tags never match
    ({"If-Range": "{earlier}", "Range": "bytes=10-19"}, 200),
    ({"If-Range": "{later}", "Range": "bytes=10-19"}, 200),
    ({"If-Range": "garbage", "Range": "bytes=10-19"}, 200),
    ({"If-Range": '"other"', "Range": "bytes=5000-"}, 200),  # the whole object, not 416
    ({"If-Range": "{etag}", "Range": "bytes=5000-"}, 416),
    ({"If-Range": "{etag}"}, 200),  # without Range, If-Range means nothing
]


def _precondition_id(case: tuple[dict[str, str], int]) -> str:
    headers, status = case
    return ";".join(f"{k}={v}" for k, v in headers.items()) + f"->{status}"


@module_loop
@pytest.mark.parametrize(
    ("template", "status"), PRECONDITION_CASES, ids=[_precondition_id(c) for c in PRECONDITION_CASES]
)
async def test_preconditions(shared: Shared, template: dict[str, str], status: int) -> None:
    data = shared.data[OBJ]
    plain = await raw(shared.client, "HEAD", f"/files/{OBJ}")
    etag, lm = plain.headers["ETag"], plain.headers["Last-Modified"]
    second = timedelta(seconds=1)
    values = {
        "etag": etag,
        "lm": lm,
        "earlier": http_date(parse_date(lm) - second),
        "later": http_date(parse_date(lm) + second),
    }
    headers = {name: value.format(**values) for name, value in template.items()}

    get = await raw(shared.client, "GET", f"/files/{OBJ}", headers)
    assert get.status == status, (headers, get.status, get.body[:200])
    head = await raw(shared.client, "HEAD", f"/files/{OBJ}", headers)
    assert head.body == b""
    if status == 412:
        assert_json_error(get, 412, "precondition_failed")
        assert head.status == 412
    elif status == 304:
        for r in (get, head):
            assert r.status == 304
            assert r.body == b""
            assert r.headers["ETag"] == etag
            assert r.headers["Last-Modified"] == lm
            assert r.headers["Cache-Control"] == "no-cache"
    elif status == 416:
        assert_json_error(get, 416, "range_not_satisfiable")
        assert get.headers["Content-Range"] == f"bytes */{N}"
        assert head.status == 200  # HEAD ignores Range
    else:
        assert_framed(get)
        assert get.headers["ETag"] == etag
        if status == 206:
            assert get.body == data[10:20]
            assert get.headers["Content-Range"] == f"bytes 10-19/{N}"
        else:
            assert get.body == data
            assert "Content-Range" not in get.headers
        assert head.status == 200
        assert head.headers["Content-Length"] == str(N)


# -- listing -------------------------------------------------------------------------------------------


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


# -- S3: which requests reach S3 ------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Call:
    method: str
    path: str
    range: str | None
    if_match: str | None
    user_agent: str

    @property
    def relayed(self) -> bool:
        return self.user_agent == USER_AGENT

    @property
    def operation(self) -> str:
        if self.path.count("/") < 2:
            return f"{self.method} bucket"
        return {"GET": "GetObject", "HEAD": "HeadObject"}.get(self.method, f"{self.method} object")


class RecordingInterposer(S3Interposer):
    """Also records the Range and If-Match headers S3 receives, and can answer GetObject
    with 412 PreconditionFailed as S3 does when the object changed after the HeadObject."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.calls: list[S3Call] = []
        # GetObject with If-Match fails once this many have succeeded; None: never.
        self.object_changes_after: int | None = None
        # Relayed GetObjects with these Range headers ("" for none) get 503 SlowDown.
        self.refuse_relayed: set[str] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if_match = request.headers.get("If-Match")
        call = S3Call(
            request.method,
            request.path,
            request.headers.get("Range"),
            if_match,
            request.headers["User-Agent"],
        )
        self.calls.append(call)
        if call.relayed and (call.range or "") in self.refuse_relayed:
            xml = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            return web.Response(status=503, text=xml, content_type="application/xml")
        if request.method == "GET" and if_match is not None and self.object_changes_after is not None:
            if self.object_changes_after > 0:
                self.object_changes_after -= 1
                return await super().handle(request)
            xml = (
                "<Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions "
                "you specified did not hold</Message><Condition>If-Match</Condition></Error>"
            )
            return web.Response(status=412, text=xml, content_type="application/xml")
        return await super().handle(request)


@dataclass
class S3Recorded:
    layer: RecordingInterposer
    client: TestClient[Any, Any]
    data: bytes
    etag: str

    def calls(self) -> list[S3Call]:
        return [c for c in self.layer.calls if c.path.endswith("/rec.mp4")]

    def get_objects(self) -> list[S3Call]:
        calls = self.calls()
        assert {c.operation for c in calls} <= {"HeadObject", "GetObject"}, calls
        return [c for c in calls if c.operation == "GetObject"]

    def head_objects(self) -> int:
        return [c.operation for c in self.calls()].count("HeadObject")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def s3_recorded_module(moto_endpoint: S3Endpoint) -> AsyncIterator[S3Recorded]:
    layer = RecordingInterposer(moto_endpoint.url)
    server = TestServer(layer.app(), host="127.0.0.1")
    await server.start_server()
    bucket = make_bucket(moto_endpoint)
    endpoint = replace(moto_endpoint, url=str(server.make_url("")).rstrip("/"))
    storage = StorageConfig(backend="s3", s3=s3_config(endpoint, next(bucket)))
    client = await start_client(Config(ServerConfig(), storage))
    try:
        data = object_bytes(N)
        stored = await upload(client, "rec.mp4", data)
        yield S3Recorded(layer, client, data, stored["etag"])
    finally:
        await client.close()
        await server.close()
        next(bucket, None)


@pytest.fixture
def s3_recorded(s3_recorded_module: S3Recorded) -> Iterator[S3Recorded]:
    s3_recorded_module.layer.calls.clear()
    yield s3_recorded_module
    s3_recorded_module.layer.object_changes_after = None
    s3_recorded_module.layer.refuse_relayed = set()


@module_loop
async def test_s3_full_get_is_one_get_object_without_range(s3_recorded: S3Recorded) -> None:
    r = await raw(s3_recorded.client, "GET", "/files/rec.mp4")
    assert r.status == 200 and r.body == s3_recorded.data
    [get] = s3_recorded.get_objects()
    assert get.range is None, get
    assert s3_recorded.head_objects() <= 1


@module_loop
@pytest.mark.parametrize(
    ("header", "sent"),
    [
        ("bytes=0-", "bytes=0-999"),
        ("bytes=0-1", "bytes=0-1"),
        ("bytes=10-19", "bytes=10-19"),
        ("bytes=990-5000", "bytes=990-999"),
        ("bytes=-10", "bytes=990-999"),
        ("bytes=-5000", "bytes=0-999"),
        ("bytes=999-", "bytes=999-999"),
        ("bytes=0-1,1000-", "bytes=0-1"),
    ],
)
async def test_s3_single_range_is_one_ranged_get_object(
    s3_recorded: S3Recorded, header: str, sent: str
) -> None:
    r = await raw(s3_recorded.client, "GET", "/files/rec.mp4", {"Range": header})
    assert r.status == 206
    start, end = (int(x) for x in sent.removeprefix("bytes=").split("-"))
    assert r.body == s3_recorded.data[start : end + 1]
    [get] = s3_recorded.get_objects()
    assert get.range == sent
    assert get.if_match == s3_recorded.etag
    assert s3_recorded.head_objects() <= 1


@module_loop
async def test_s3_multiple_ranges_are_one_get_object_each(s3_recorded: S3Recorded) -> None:
    r = await raw(s3_recorded.client, "GET", "/files/rec.mp4", {"Range": "bytes=500-509,0-9,-5,0-9"})
    assert r.status == 206
    data = s3_recorded.data
    assert [part for _, part in parse_byteranges(r)] == [data[500:510], data[0:10], data[995:], data[0:10]]
    gets = s3_recorded.get_objects()
    assert [c.range for c in gets] == ["bytes=500-509", "bytes=0-9", "bytes=995-999", "bytes=0-9"]
    assert [c.if_match for c in gets] == [s3_recorded.etag] * 4
    assert s3_recorded.head_objects() <= 1


@module_loop
@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("HEAD", {}, 200),
        ("HEAD", {"Range": "bytes=0-1"}, 200),
        ("HEAD", {"Range": "bytes=0-1,4-5"}, 200),
        ("GET", {"If-None-Match": "{etag}"}, 304),
        ("GET", {"If-Match": '"other"'}, 412),
        ("GET", {"Range": "bytes=1000-"}, 416),
    ],
)
async def test_s3_head_and_refusals_only_head_the_object(
    s3_recorded: S3Recorded, method: str, headers: dict[str, str], status: int
) -> None:
    sent = {k: v.format(etag=s3_recorded.etag) for k, v in headers.items()}
    r = await raw(s3_recorded.client, method, "/files/rec.mp4", sent)
    assert r.status == status
    assert s3_recorded.get_objects() == []
    operations = [c.operation for c in s3_recorded.calls()]
    # HEAD always asks S3; a GET may answer from validators it saw a moment ago.
    assert operations == ["HeadObject"] if method == "HEAD" else operations in ([], ["HeadObject"])


# -- the object changes between the decision and the read ----------------------------------------------

BROKEN_READS = [{}, {"Range": "bytes=10-19"}, {"Range": "bytes=0-1,5-6"}]


def expected_body(headers: dict[str, str], data: bytes) -> list[bytes]:
    """The body (or multipart parts) a GET with one of BROKEN_READS should give."""
    return {"": [data], "bytes=10-19": [data[10:20]], "bytes=0-1,5-6": [data[0:2], data[5:7]]}[
        headers.get("Range", "")
    ]


def body_of(r: Raw) -> list[bytes]:
    if r.status == 206 and "Content-Range" not in r.headers:
        return [part for _, part in parse_byteranges(r)]
    return [r.body]


async def assert_never_served_as_complete(
    client: TestClient[Any, Any], path: str, headers: dict[str, str], data: bytes, arm: Callable[[], None]
) -> None:
    """The read fails after the response head may have gone out. Then the client must
    see the body end short of its Content-Length (a broken download), never a complete
    looking response with other bytes in it."""
    arm()
    r = await raw(client, "GET", path, headers)
    if r.status in (200, 206) and len(r.body) == int(r.headers["Content-Length"]):
        assert body_of(r) == expected_body(headers, data), r.body[:300]  # complete: must be right
    elif r.status in (200, 206):
        assert len(r.body) < int(r.headers["Content-Length"]), r.body[:300]
        if "multipart" in r.headers["Content-Type"]:
            # Only what precedes the failed read got out.
            assert b"HTTP/1.1" not in r.body and b"error" not in r.body, r.body[:300]
        else:
            assert expected_body(headers, data)[0].startswith(r.body), r.body[:300]
    else:
        assert r.status in (404, 412, 502), r.status
    # A keep-alive client reads exactly Content-Length bytes and then trusts them.
    arm()
    with contextlib.suppress(aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
        async with asyncio.timeout(TIMEOUT):
            response = await client.get(path, headers=headers)
            body = await response.read()
            if response.status in (200, 206):
                complete = Raw(response.status, response.headers.copy(), body)
                assert body_of(complete) == expected_body(headers, data), body[:300]


@module_loop
@pytest.mark.parametrize("headers", BROKEN_READS, ids=["whole", "range", "multipart"])
async def test_s3_object_changed_after_head_is_not_served_as_complete(
    s3_recorded: S3Recorded, headers: dict[str, str]
) -> None:
    # The GetObject's If-Match fails: the object changed after the HeadObject. With
    # several ranges, it changes after the first part was read.
    first_ok = 1 if "," in headers.get("Range", "") else 0

    def arm() -> None:
        s3_recorded.layer.object_changes_after = first_ok

    await assert_never_served_as_complete(
        s3_recorded.client, "/files/rec.mp4", headers, s3_recorded.data, arm
    )
    s3_recorded.layer.object_changes_after = None
    r = await raw(s3_recorded.client, "GET", "/files/rec.mp4", {"Range": "bytes=0-1"})
    assert r.status == 206 and r.body == s3_recorded.data[:2]


# -- S3 bodies relayed with splice, and the reads that cannot be ------------------------------------------


@module_loop
async def test_s3_reads_are_relayed(s3_recorded: S3Recorded) -> None:
    data = s3_recorded.data
    r = await raw(s3_recorded.client, "GET", "/files/rec.mp4")
    assert r.status == 200 and r.body == data
    r = await raw(s3_recorded.client, "GET", "/files/rec.mp4", {"Range": "bytes=500-509,0-9,-5"})
    assert [part for _, part in parse_byteranges(r)] == [data[500:510], data[0:10], data[995:]]
    assert [c.relayed for c in s3_recorded.get_objects()] == [True] * 4


@module_loop
@pytest.mark.parametrize(
    ("header", "refused"),
    [
        ({}, {""}),
        ({"Range": "bytes=10-19"}, {"bytes=10-19"}),
        ({"Range": "bytes=0-9,100-199,-5"}, {"bytes=0-9"}),
        ({"Range": "bytes=0-9,100-199,-5"}, {"bytes=100-199"}),
        ({"Range": "bytes=0-9,100-199,-5"}, {"bytes=0-9", "bytes=995-999"}),
    ],
    ids=["whole", "range", "first-part", "middle-part", "first-and-last-parts"],
)
async def test_s3_reads_the_relay_cannot_make_go_through_botocore(
    s3_recorded: S3Recorded, header: dict[str, str], refused: set[str]
) -> None:
    # An answer the relay does not expect is read again through botocore; relayed and
    # botocore parts of one multipart body follow each other in order.
    s3_recorded.layer.refuse_relayed = refused
    r = await raw(s3_recorded.client, "GET", "/files/rec.mp4", header)
    assert_framed(r)
    assert body_of(r) == expected_body_of(header, s3_recorded.data)
    gets = s3_recorded.get_objects()
    for sent_range in refused:
        refused_at = [(c.range or "", c.relayed) for c in gets].index((sent_range, True))
        retry = gets[refused_at + 1]
        assert (retry.range or "", retry.relayed, retry.if_match) == (sent_range, False, s3_recorded.etag)
    assert sum(c.relayed for c in gets) == len(gets) - len(refused)


def expected_body_of(headers: dict[str, str], data: bytes) -> list[bytes]:
    header = headers.get("Range")
    if header is None:
        return [data]
    pieces = []
    for spec in header.removeprefix("bytes=").split(","):
        first, _, last = spec.partition("-")
        if not first:
            pieces.append(data[-int(last) :])
        else:
            pieces.append(data[int(first) : int(last) + 1] if last else data[int(first) :])
    return pieces


@module_loop
async def test_s3_relayed_responses_keep_the_client_connection_alive(s3_recorded: S3Recorded) -> None:
    data = s3_recorded.data
    tap = TcpTap(str(s3_recorded.client.make_url("")))  # counts the client's connections
    await tap.start()
    try:
        async with aiohttp.ClientSession(tap.url, connector=aiohttp.TCPConnector(limit=1)) as session:
            ranges = [(i * 37 % N, min(N - 1, i * 37 % N + i)) for i in range(40)]
            async with asyncio.timeout(TIMEOUT):
                for start, end in ranges:
                    headers = {"Range": f"bytes={start}-{end}"}
                    async with session.get("/files/rec.mp4", headers=headers) as response:
                        assert response.status == 206
                        assert await response.read() == data[start : end + 1]
                async with session.get("/files/rec.mp4") as response:
                    assert await response.read() == data
    finally:
        await tap.close()
    assert len(tap.connections) == 1
    assert all(c.relayed for c in s3_recorded.get_objects())


@pytest.mark.parametrize("server", ["moto", pytest.param("real", marks=pytest.mark.real_s3)])
async def test_s3_ranges_of_one_answer_take_turns_on_one_allowed_connection(
    request: pytest.FixtureRequest, tmp_path: Path, server: str
) -> None:
    if server == "real":
        backend: Backend = request.getfixturevalue("real_backend")
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        backend = backend_for("s3", tmp_path, endpoint, request.getfixturevalue("moto_bucket"))
    s3 = replace(backend.config.storage.s3, max_pool_connections=1)
    client = await start_client(replace(backend.config, storage=replace(backend.config.storage, s3=s3)))
    try:
        data = object_bytes(N)
        await upload(client, "one.mp4", data)
        r = await raw(client, "GET", "/files/one.mp4", {"Range": "bytes=0-9,100-199,-5"})
        assert [part for _, part in parse_byteranges(r)] == [data[0:10], data[100:200], data[995:]]
    finally:
        await client.close()


def self_signed_context(tmp_path: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


async def test_s3_bodies_to_tls_clients_go_through_the_transport(
    tmp_path: Path, moto_endpoint: S3Endpoint, moto_bucket: str
) -> None:
    # Bytes written to the socket under a TLS transport would skip the encryption.
    layer = RecordingInterposer(moto_endpoint.url)
    s3_server = TestServer(layer.app(), host="127.0.0.1")
    await s3_server.start_server()
    endpoint = replace(moto_endpoint, url=str(s3_server.make_url("")).rstrip("/"))
    config = Config(ServerConfig(), StorageConfig(backend="s3", s3=s3_config(endpoint, moto_bucket)))
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server(ssl=self_signed_context(tmp_path))
    try:
        data = object_bytes(300_000)
        url = f"https://127.0.0.1:{server.port}/files/tls.bin"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session:
            async with session.put(url, data=data) as response:
                assert response.status == 201
            async with session.get(url, headers={"Range": "bytes=5-200004"}) as response:
                assert response.status == 206 and await response.read() == data[5:200005]
        gets = [c for c in layer.calls if c.method == "GET" and c.path.endswith("/tls.bin")]
        assert gets and not any(c.relayed for c in gets)
    finally:
        await server.close()
        await s3_server.close()


@pytest.mark.real_s3
async def test_real_s3_object_replaced_between_ranges_is_never_spliced(real_backend: Backend) -> None:
    # RGW itself refuses the second range's If-Match: the object changed in between.
    view: Any = real_backend.view
    s3 = real_backend.config.storage.s3
    assert s3.endpoint_url
    tap = TcpTap(s3.endpoint_url)
    await tap.start()
    config = replace(
        real_backend.config,
        storage=replace(real_backend.config.storage, s3=replace(s3, endpoint_url=tap.url)),
    )
    client = await start_client(config)
    old, new = object_bytes(2 * MiB), object_bytes(2 * MiB)
    second = f"bytes={MiB}-{MiB + 9}".encode()

    async def replace_before_second_range(request: bytes) -> None:
        if request.startswith(b"GET ") and b"Range: " + second + b"\r\n" in request:
            tap.before_sending = None
            await asyncio.to_thread(view.client.put_object, Bucket=view.bucket, Key="v.mp4", Body=new)

    try:
        await upload(client, "v.mp4", old)
        tap.before_sending = replace_before_second_range
        r = await raw(client, "GET", "/files/v.mp4", {"Range": f"bytes=0-9,{MiB}-{MiB + 9},-10"})
        assert r.status == 206
        assert len(r.body) < int(r.headers["Content-Length"])  # cut short, visibly
        assert old[:10] in r.body
        for piece in (new[:10], new[MiB : MiB + 10], new[-10:], old[MiB : MiB + 10], old[-10:]):
            assert piece not in r.body
        r = await raw(client, "GET", "/files/v.mp4", {"Range": f"bytes=0-9,{MiB}-{MiB + 9},-10"})
        assert [part for _, part in parse_byteranges(r)] == [new[:10], new[MiB : MiB + 10], new[-10:]]
    finally:
        await client.close()
        await tap.close()


class ReplacedBeforeRead(LocalStorage):
    """Another upload replaces the object (same bytes, new file) between the handler's
    stat() and its read, once armed."""

    armed = False

    async def open_file(self, key: str, *, etag: str) -> BinaryIO:
        if self.armed:
            path = self.paths.object(key)
            copy = path.with_name(path.name + ".replacement")
            shutil.copyfile(path, copy)
            os.replace(copy, path)
        return await super().open_file(key, etag=etag)


@pytest.mark.parametrize("headers", BROKEN_READS, ids=["whole", "range", "multipart"])
async def test_local_object_replaced_before_read_is_not_served_as_complete(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    storage = ReplacedBeforeRead(tmp_path / "data")
    config = Config(ServerConfig(), StorageConfig(backend="local", local=LocalConfig(tmp_path / "data")))
    backend = storage_backend.Backend(storage, LocalResumableStore(storage))
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(config, backend), host="127.0.0.1"))
    await client.start_server()
    try:
        data = object_bytes(N)
        await upload(client, "v.mp4", data)

        def arm() -> None:
            storage.armed = True

        await assert_never_served_as_complete(client, "/files/v.mp4", headers, data, arm)
        storage.armed = False
        r = await raw(client, "GET", "/files/v.mp4", {"Range": "bytes=0-1"})
        assert r.status == 206 and r.body == data[:2]
    finally:
        await client.close()


# -- objects changed by another writer (another proxy instance, another S3 client, ...) ---------------


def write_externally(backend: Backend, key: str, data: bytes | None) -> None:
    """Replace (or with None, delete) the object without going through this proxy."""
    if backend.name == "local":
        path = backend.config.storage.local.root / key
        if data is None:
            path.unlink()
            return
        fresh = path.with_name(path.name + ".external")
        fresh.write_bytes(data)
        os.replace(fresh, path)
        return
    view: Any = backend.view
    if data is None:
        view.client.delete_object(Bucket=view.bucket, Key=key)
    else:
        view.client.put_object(Bucket=view.bucket, Key=key, Body=data, ContentType="video/mp4")


@pytest.mark.parametrize(
    ("old_size", "new_size", "headers"),
    [
        (0, N, {}),  # an empty object: nothing is read, so nothing checks the validators
        (0, None, {}),  # deleted
        (N, 3 * N, {"Range": "bytes=2000-2009"}),  # past the old end: unsatisfiable before
        (N, 3 * N, {}),
        (N, None, {"Range": "bytes=0-1"}),
    ],
    ids=["empty-then-filled", "empty-then-deleted", "range-past-old-end", "whole", "deleted"],
)
async def test_objects_changed_by_another_writer_are_seen(
    backend: Backend, proxy_client: Any, old_size: int, new_size: int | None, headers: dict[str, str]
) -> None:
    client = await proxy_client(backend.config)
    old = object_bytes(old_size)
    await upload(client, "shared.mp4", old)
    before = await raw(client, "GET", "/files/shared.mp4", headers)
    assert before.status in (200, 206, 416)
    write_externally(backend, "shared.mp4", None if new_size is None else object_bytes(new_size))
    new = None if new_size is None else (await asyncio.to_thread(backend.view.get, "shared.mp4"))
    r = await raw(client, "GET", "/files/shared.mp4", headers)
    if new is None:
        assert_json_error(r, 404, "not_found")
        return
    assert_framed(r)
    if headers:
        assert r.status == 206, (r.status, r.headers)
        assert r.body == new[2000:2010]
    else:
        assert r.status == 200, (r.status, r.headers)
        assert r.body == new
    assert r.headers["Content-Length"] == str(len(r.body))
    if "ETag" in before.headers:
        assert r.headers["ETag"] != before.headers["ETag"]


# -- clients that go away in the middle of a download ---------------------------------------------------


class RunAppServer(TestServer):
    """Handlers are not cancelled when their client goes away, as under web.run_app()
    (the CLI); aiohttp's TestServer cancels them."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


BIG = 64 * MiB
ABORTS = 30
WORKERS = 4


async def read_some_then_abort(
    client: TestClient[Any, Any], path: str, *, busy_threads: int = 0, want: int = 300_000
) -> None:
    """Start a download, read some of it and reset the connection. With ``busy_threads``,
    the event loop's worker threads are all busy for a moment when the client goes away,
    as when many uploads are being written."""
    loop = asyncio.get_running_loop()
    blockers: list[asyncio.Future[None]] = []
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        async with asyncio.timeout(TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            assert f"Content-Length: {BIG}\r\n".encode() in head, head
            got = 0
            while got < want:
                chunk = await reader.read(64 * 1024)
                assert chunk, "the server closed the connection early"
                got += len(chunk)
        blockers = [loop.run_in_executor(None, time.sleep, 0.2) for _ in range(busy_threads)]
    finally:
        writer.transport.abort()  # RST, like a closed browser tab
        await asyncio.gather(*blockers)


def open_fds_on(path: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                found.append(fd)
    return found


CANCELLATION = pytest.mark.parametrize(
    "cancellation", [True, False], ids=["handler-cancellation", "run-app-default"]
)


@CANCELLATION
async def test_client_disconnect_mid_download(backend: Backend, cancellation: bool) -> None:
    await check_client_disconnect_mid_download(backend, cancellation)


@pytest.mark.real_s3
@CANCELLATION
async def test_client_disconnect_mid_download_real_s3(real_backend: Backend, cancellation: bool) -> None:
    await check_client_disconnect_mid_download(real_backend, cancellation)


async def check_client_disconnect_mid_download(backend: Backend, cancellation: bool) -> None:
    data = object_bytes(BIG)
    config = backend.config
    tap: TcpTap | None = None
    if backend.name == "local":
        path = config.storage.local.root / "big.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        # Two pooled connections to S3 only: one leaked per abort and the third request hangs.
        assert config.storage.s3.endpoint_url
        tap = TcpTap(config.storage.s3.endpoint_url)
        await tap.start()
        s3 = replace(config.storage.s3, endpoint_url=tap.url, max_pool_connections=2)
        config = replace(config, storage=replace(config.storage, s3=s3))
        view: Any = backend.view
        await asyncio.to_thread(view.client.put_object, Bucket=view.bucket, Key="big.bin", Body=data)
    # A pool of known size, to make all of its threads busy at times.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=WORKERS))
    client = await start_client(config, TestServer if cancellation else RunAppServer)
    try:
        await upload(client, "small.txt", b"small", "text/plain")
        for i in range(ABORTS):
            # Local reads use worker threads: sometimes have them all busy as the client leaves.
            busy = WORKERS if tap is None and i % 3 == 0 else 0
            await read_some_then_abort(client, "/files/big.bin", busy_threads=busy)
        if tap is None:
            # The server noticed each time: it is not sending the file any more, and closed it.
            await wait_until(lambda: open_fds_on(path) == [], 5)
        else:
            # Each GetObject's connection was closed: the proxy neither kept it nor read
            # the rest of the 64 MiB body.
            downloads = [c for c in tap.connections if re.search(rb"GET /[^ ]*/big\.bin HTTP/1\.1", c.sent)]
            assert len(downloads) == ABORTS
            assert all(USER_AGENT.encode() in c.sent for c in downloads)  # spliced, not through botocore
            await wait_until(lambda: not any(c.open for c in downloads), TIMEOUT)
            assert max(c.bytes_down for c in downloads) < BIG // 2
        # Still serving, with a free connection to S3.
        async with asyncio.timeout(TIMEOUT):
            r = await raw(client, "GET", "/files/big.bin", {"Range": "bytes=-10"})
            assert r.status == 206 and r.body == data[-10:]
            r = await raw(client, "GET", "/files/small.txt")
            assert r.status == 200 and r.body == b"small"
    finally:
        await client.close()
        if tap is not None:
            await tap.close()


# -- many downloads at once ----------------------------------------------------------------------------

CONCURRENT = 24


async def fetch(session: aiohttp.ClientSession, path: str, header: dict[str, str], *, slowly: bool) -> bytes:
    """A download read in 64 KiB pieces; ``slowly`` pauses after each, so that its
    relay waits on the client while the others run."""
    async with session.get(path, headers=header) as response:
        assert response.status == (206 if header else 200)
        body = bytearray()
        async for piece in response.content.iter_chunked(64 * 1024):
            body += piece
            if slowly:
                await asyncio.sleep(0.002)
        if "multipart/byteranges" in response.headers["Content-Type"]:
            return b"".join(
                part for _, part in parse_byteranges(Raw(response.status, response.headers.copy(), body))
            )
        return bytes(body)


async def check_many_downloads_at_once(backend: Backend, proxy_client: Any) -> None:
    config = backend.config
    if config.storage.backend == "s3":
        # Fewer relay connections (and threads) than downloads: some wait for a slot.
        s3 = replace(config.storage.s3, max_pool_connections=4)
        config = replace(config, storage=replace(config.storage, s3=s3))
    client = await proxy_client(config)
    data = object_bytes(8 * MiB + 7)
    await upload(client, "many.bin", data, "application/octet-stream")
    size = len(data)
    headers = [
        {},
        {"Range": "bytes=0-"},
        {"Range": f"bytes={size // 3}-{size // 2}"},
        {"Range": "bytes=-1000000"},
        {"Range": f"bytes=10-19,{size - 5}-,{MiB}-{2 * MiB}"},
        {"Range": "bytes=0-1"},
    ]
    jobs = [(headers[i % len(headers)], i % 2 == 1) for i in range(CONCURRENT)]
    async with aiohttp.ClientSession(str(client.make_url(""))) as session:
        async with asyncio.timeout(60):
            downloads = [asyncio.create_task(fetch(session, "/files/many.bin", h, slowly=s)) for h, s in jobs]
            # The server answers other requests meanwhile.
            async with session.head("/files/many.bin") as response:
                assert response.status == 200 and response.content_length == size
            assert not all(d.done() for d in downloads)
            bodies = await asyncio.gather(*downloads)
    for (header, _), body in zip(jobs, bodies, strict=True):
        assert body == b"".join(expected_body_of(header, data)), header


async def test_many_downloads_at_once(backend: Backend, proxy_client: Any) -> None:
    await check_many_downloads_at_once(backend, proxy_client)


@pytest.mark.real_s3
async def test_many_downloads_at_once_real_s3(real_backend: Backend, proxy_client: Any) -> None:
    await check_many_downloads_at_once(real_backend, proxy_client)


# -- a client that stops reading -------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["relayed", "through-botocore"])
async def test_a_client_that_takes_no_bytes_is_cut_off_after_the_send_timeout(
    tmp_path: Path, moto_endpoint: S3Endpoint, moto_bucket: str, tls: bool
) -> None:
    # A paused video player stops reading but stays connected: the S3 connection (and
    # the relay's thread) must not be held for it forever.
    tap = TcpTap(moto_endpoint.url)
    await tap.start()
    s3 = s3_config(replace(moto_endpoint, url=tap.url), moto_bucket)
    config = Config(ServerConfig(send_timeout=0.5), StorageConfig(backend="s3", s3=s3))
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server(ssl=self_signed_context(tmp_path) if tls else None)
    client_tls: ssl.SSLContext | None = None
    if tls:
        client_tls = ssl.create_default_context()
        client_tls.check_hostname = False
        client_tls.verify_mode = ssl.CERT_NONE
    view = S3View(moto_endpoint, moto_bucket)
    data = object_bytes(BIG)
    await asyncio.to_thread(view.client.put_object, Bucket=moto_bucket, Key="big.bin", Body=data)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_tls)
        try:
            writer.write(b"GET /files/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            async with asyncio.timeout(TIMEOUT):
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
                await reader.readexactly(MiB)
                # Reading stops here. The server gives up on the client and on S3.
                await wait_until(
                    lambda: bool(gets_of(tap)) and not any(c.open for c in gets_of(tap)), TIMEOUT
                )
                received = MiB
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    while chunk := await reader.read(MiB):
                        received += len(chunk)
            assert received < BIG  # the connection ended before the body did
        finally:
            writer.transport.abort()
        relayed = [USER_AGENT.encode() in c.sent for c in gets_of(tap)]
        assert relayed == [not tls]
        # Still serving, the relay's slot and thread free again.
        url = f"{'https' if tls else 'http'}://127.0.0.1:{server.port}/files/big.bin"
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session,
            asyncio.timeout(TIMEOUT),
            session.get(url, headers={"Range": "bytes=-10"}) as response,
        ):
            assert response.status == 206 and await response.read() == data[-10:]
    finally:
        await server.close()
        await tap.close()


def gets_of(tap: TcpTap) -> list[Any]:
    return [c for c in tap.connections if re.search(rb"GET /[^ ]*/big\.bin HTTP/1\.1", c.sent)]
