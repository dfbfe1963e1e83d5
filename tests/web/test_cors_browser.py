"""CORS in a real browser (proxy/web/cors.py): a page on another origin calls the
proxy with fetch() in Debian's Chromium, driven by Playwright as in test_browser.py.

The page and its script are served by a small aiohttp app on other ports of
127.0.0.1: one port is in ``auth.cors_origins``, one is not. From the configured
origin a preflighted PUT (bearer token, a custom header) stores its bytes,
a ranged GET reads the exposed Content-Range and ETag, and a tus creation and PATCH
read Location and Upload-Offset. From the other origin each of them is refused by
the browser (fetch rejects) after the proxy refused the preflight, and nothing is
stored. The proxy's side of each exchange is recorded as it answers, so the test
also sees that the preflights happened and what they asked for.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from tests.conftest import Backend, MiB, backend_for, require
from tests.web.auth_support import SECRETS, TUS, auth_config, b64, bearer
from tests.web.test_browser import CHROMIUM, CHROMIUM_ARGS

try:
    from playwright.async_api import async_playwright
except ImportError:  # reported by the test through require(): a failure under CI
    async_playwright = None  # type: ignore[assignment]

CALL_TIMEOUT = 30  # seconds for one fetch() from the page
FILENAME = "browser.bin"
METADATA = f"filename {b64(FILENAME)}"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>stream-proxy CORS</title>
<script src="/app.js"></script></head><body></body></html>
"""

# What page.evaluate() calls. Each call resolves to what the page could read of the
# answer, or to {rejected: true} when fetch() rejects (as it does on a CORS refusal).
SCRIPT = """
function bytesOf(text) {
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}
function base64Of(buffer) {
  let text = "";
  for (const b of new Uint8Array(buffer)) text += String.fromCharCode(b);
  return btoa(text);
}
async function attempt(run) {
  try {
    return {rejected: false, ...(await run())};
  } catch (e) {
    return {rejected: true, error: String(e)};
  }
}
function putObject([url, token, data]) {
  return attempt(async () => {
    const r = await fetch(url, {method: "PUT", body: bytesOf(data), headers: {
      "Authorization": `Bearer ${token}`, "Content-Type": "video/mp4",
      "X-Requested-With": "stream-proxy-test"}});
    return {status: r.status};
  });
}
function getRange([url, token, range]) {
  return attempt(async () => {
    const r = await fetch(url, {headers: {"Authorization": `Bearer ${token}`, "Range": range}});
    const body = await r.arrayBuffer();
    return {status: r.status, contentRange: r.headers.get("Content-Range"),
            etag: r.headers.get("ETag"), body: base64Of(body)};
  });
}
function tusCreate([url, token, length, metadata]) {
  return attempt(async () => {
    const r = await fetch(url, {method: "POST", headers: {
      "Authorization": `Bearer ${token}`, "Tus-Resumable": "1.0.0",
      "Upload-Length": String(length), "Upload-Metadata": metadata}});
    const location = r.headers.get("Location");
    return {status: r.status, location: location && new URL(location, url).href};
  });
}
function tusPatch([url, token, offset, data]) {
  return attempt(async () => {
    const r = await fetch(url, {method: "PATCH", body: bytesOf(data), headers: {
      "Authorization": `Bearer ${token}`, "Tus-Resumable": "1.0.0",
      "Upload-Offset": String(offset), "Content-Type": "application/offset+octet-stream"}});
    return {status: r.status, offset: r.headers.get("Upload-Offset")};
  });
}
"""


@dataclass(frozen=True)
class Seen:
    """One answer of the proxy, as recorded when it was sent."""

    method: str
    path: str
    origin: str | None
    preflight_method: str | None  # Access-Control-Request-Method
    preflight_headers: str | None  # Access-Control-Request-Headers
    status: int


def data_of(size: int, seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def chromium() -> Path:
    require(async_playwright is not None, "the playwright package is not installed")
    require(CHROMIUM.exists(), f"{CHROMIUM} is missing (Debian's chromium package)")
    return CHROMIUM


@pytest_asyncio.fixture
async def pages() -> AsyncIterator[tuple[str, str]]:
    """The page served from two origins: (allowed, refused), each ``http://127.0.0.1:PORT``."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def script(request: web.Request) -> web.Response:
        return web.Response(text=SCRIPT, content_type="text/javascript")

    servers = []
    for _ in range(2):
        app = web.Application()
        app.router.add_get("/", page)
        app.router.add_get("/app.js", script)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
    try:
        allowed, refused = (str(s.make_url("")).rstrip("/") for s in servers)
        yield allowed, refused
    finally:
        for server in servers:
            await server.close()


async def test_pages_of_a_configured_origin_may_call_and_others_may_not(
    tmp_path: Path, aiohttp_client: Any, chromium: Path, pages: tuple[str, str]
) -> None:
    allowed, refused = pages
    backend: Backend = backend_for("local", tmp_path, None, None)
    app = create_app(auth_config(backend.config, cors_origins=(allowed,)))
    seen: list[Seen] = []

    async def record(request: web.Request, response: web.StreamResponse) -> None:
        h = request.headers
        seen.append(
            Seen(
                request.method,
                request.path,
                h.get("Origin"),
                h.get("Access-Control-Request-Method"),
                h.get("Access-Control-Request-Headers"),
                response.status,
            )
        )

    app.on_response_prepare.append(record)
    client = await aiohttp_client(app)
    base = str(client.make_url("")).rstrip("/")
    token = SECRETS["full"]

    # What the page will read: an object stored beforehand, and an upload to feed.
    existing = data_of(MiB, 1)
    put = await client.put("/files/videos/existing.bin", data=existing, headers=bearer("full"))
    assert put.status == 201
    etag = (await client.head("/files/videos/existing.bin", headers=bearer("full"))).headers["ETag"]
    offered = await client.post(
        "/uploads/", headers={**TUS, **bearer("full"), "Upload-Length": "1024", "Upload-Metadata": METADATA}
    )
    assert offered.status == 201
    offered_url = base + offered.headers["Location"]

    assert async_playwright is not None
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context()
            page = await context.new_page()

            async def call(function: str, *args: Any) -> dict[str, Any]:
                async with asyncio.timeout(CALL_TIMEOUT):
                    result: dict[str, Any] = await page.evaluate(f"(args) => {function}(args)", list(args))
                return result

            # -- from the configured origin: everything works and can be read --
            assert (await page.goto(allowed + "/")) is not None
            put_data = data_of(256 * 1024, 2)
            stored = await call("putObject", f"{base}/files/videos/put.bin", token, b64bytes(put_data))
            assert stored == {"rejected": False, "status": 201}, stored
            assert sha256(backend.view.get("videos/put.bin")) == sha256(put_data)

            ranged = await call("getRange", f"{base}/files/videos/existing.bin", token, "bytes=1000-65535")
            assert not ranged["rejected"], ranged
            assert ranged["status"] == 206
            assert ranged["contentRange"] == f"bytes 1000-65535/{MiB}"
            assert ranged["etag"] == etag
            assert base64.b64decode(ranged["body"]) == existing[1000:65536]

            tus_data = data_of(100 * 1024, 3)
            made = await call("tusCreate", f"{base}/uploads/", token, len(tus_data), METADATA)
            assert not made["rejected"] and made["status"] == 201, made
            location = made["location"]
            assert location.startswith(f"{base}/uploads/")
            fed = await call("tusPatch", location, token, 0, b64bytes(tus_data))
            assert fed == {"rejected": False, "status": 204, "offset": str(len(tus_data))}, fed
            tus_key = f"videos/{location.rsplit('/', 1)[1]}/{FILENAME}"
            assert sha256(backend.view.get(tus_key)) == sha256(tus_data)

            # -- from another origin: the browser gets no consent, and stores nothing --
            before = backend.view.keys(), backend.view.leftovers()
            assert (await page.goto(refused + "/")) is not None
            attempts = {
                "PUT": await call("putObject", f"{base}/files/videos/refused.bin", token, b64bytes(put_data)),
                "GET": await call("getRange", f"{base}/files/videos/existing.bin", token, "bytes=0-99"),
                "POST": await call("tusCreate", f"{base}/uploads/", token, 10, METADATA),
                "PATCH": await call("tusPatch", offered_url, token, 0, b64bytes(b"x" * 1024)),
            }
            for method, result in attempts.items():
                assert result["rejected"], (method, result)
            assert (backend.view.keys(), backend.view.leftovers()) == before
        finally:
            await browser.close()

    head = await client.head(offered.headers["Location"], headers={**TUS, **bearer("full")})
    assert head.status == 200 and head.headers["Upload-Offset"] == "0"

    # The proxy's side: each write from the configured origin came after its preflight,
    # which asked for the headers sent; the other origin got only refused preflights.
    from_allowed = [s for s in seen if s.origin == allowed]
    for method in ("PUT", "POST", "PATCH"):
        preflights = [s for s in from_allowed if s.method == "OPTIONS" and s.preflight_method == method]
        assert preflights and all(s.status == 204 for s in preflights), (method, from_allowed)
        assert "authorization" in (preflights[0].preflight_headers or "").split(",")
    put_preflight = next(s for s in from_allowed if s.preflight_method == "PUT")
    assert "x-requested-with" in (put_preflight.preflight_headers or "").split(",")
    assert {(s.method, s.status) for s in from_allowed if s.method != "OPTIONS"} == {
        ("PUT", 201),
        ("GET", 206),
        ("POST", 201),
        ("PATCH", 204),
    }
    from_refused = [s for s in seen if s.origin == refused]
    assert from_refused and all(s.method == "OPTIONS" and s.status == 403 for s in from_refused), from_refused
    assert {s.preflight_method for s in from_refused} == {"PUT", "GET", "POST", "PATCH"}
    assert backend.view.keys() == sorted(["videos/existing.bin", "videos/put.bin", tus_key])


def b64bytes(data: bytes) -> str:
    return base64.b64encode(data).decode()
