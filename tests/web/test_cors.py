"""CORS (proxy/web/cors.py): preflights as tus-js-client, Uppy and players send
them, headers on every answer to a configured origin, and writes allowed for it.

The browser itself (a page on another origin in Chromium) is left for a later test;
these check the headers a browser decides by.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import Backend
from tests.web.auth_support import TUS, answer, auth_config, bearer

APP = "https://app.example"
OTHER = "https://evil.example"
# What tus-js-client asks for before a creation, and before a PATCH by override.
TUS_JS_HEADERS = (
    "authorization,content-type,tus-resumable,upload-length,upload-metadata,upload-offset,"
    "x-http-method-override,upload-checksum,upload-defer-length,if-match,range"
)


async def preflight(client: Any, path: str, origin: str, method: str = "POST", headers: str = "") -> Any:
    sent = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        sent["Access-Control-Request-Headers"] = headers
    return await client.options(path, headers=sent)


async def test_preflight_for_a_configured_origin(http_backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(
        auth_config(http_backend.config, cors_origins=(APP,)), http_backend.app_backend
    )
    for path, method in (("/uploads/", "POST"), ("/uploads/" + "0" * 32, "PATCH"), ("/files/a.mp4", "PUT")):
        response = await preflight(client, path, APP, method, TUS_JS_HEADERS + ",x-evil")
        assert response.status == 204, path
        assert response.headers["Access-Control-Allow-Origin"] == APP
        assert method in response.headers["Access-Control-Allow-Methods"].split(", ")
        allowed = response.headers["Access-Control-Allow-Headers"].split(", ")
        assert allowed == TUS_JS_HEADERS.split(",")  # x-evil is not named
        assert int(response.headers["Access-Control-Max-Age"]) > 0
        assert "Origin" in response.headers.getall("Vary")
        assert "Access-Control-Allow-Credentials" not in response.headers
    # The default port and case make no other origin.
    assert (await preflight(client, "/files/a", "HTTPS://APP.EXAMPLE:443", "GET")).status == 204


async def test_preflight_from_another_origin_is_refused(http_backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(
        auth_config(http_backend.config, cors_origins=(APP,)), http_backend.app_backend
    )
    response = await preflight(client, "/uploads/", OTHER, "POST", "authorization")
    assert await answer(response) == "403 cross_origin_refused"
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_no_cors_without_configured_origins(http_backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(auth_config(http_backend.config), http_backend.app_backend)
    response = await preflight(client, "/uploads/", APP, "POST", "authorization")
    # tus's own OPTIONS answers, but says nothing a browser would take as consent.
    assert response.status == 204 and "Access-Control-Allow-Origin" not in response.headers
    assert (await preflight(client, "/files/a", APP, "PUT")).status == 405
    get = await client.get("/files/public/x", headers={"Origin": APP})
    assert "Access-Control-Allow-Origin" not in get.headers and "Vary" not in get.headers


async def test_answers_to_a_configured_origin(http_backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(
        auth_config(http_backend.config, cors_origins=(APP,)), http_backend.app_backend
    )
    page = {"Origin": APP, "Sec-Fetch-Site": "cross-site"}
    # A page of the origin may write (it joins server.allowed_origins) and read the answer.
    created = await client.post(
        "/uploads/", headers={**page, **TUS, **bearer("full"), "Upload-Length": "3", "Upload-Metadata": ""}
    )
    assert created.status == 201
    assert created.headers["Access-Control-Allow-Origin"] == APP
    exposed = created.headers["Access-Control-Expose-Headers"].split(", ")
    for name in ("Location", "Upload-Offset", "Upload-Length", "Upload-Expires", "Tus-Resumable", "ETag"):
        assert name in exposed
    for name in ("Content-Range", "Content-Length", "Accept-Ranges"):
        assert name in exposed
    put = await client.put("/files/videos/a.mp4", data=b"abc", headers={**page, **bearer("full")})
    assert put.status == 201 and put.headers["Access-Control-Allow-Origin"] == APP
    ranged = await client.get("/files/videos/a.mp4", headers={**page, **bearer("full"), "Range": "bytes=1-"})
    assert ranged.status == 206 and ranged.headers["Access-Control-Allow-Origin"] == APP
    # Errors too, so that the page can read why.
    refused = await client.get("/files/videos/a.mp4", headers=page)
    assert await answer(refused) == "401 unauthorized"
    assert refused.headers["Access-Control-Allow-Origin"] == APP and "Origin" in refused.headers.getall(
        "Vary"
    )
    # Another origin gets no CORS headers, and may not write.
    other = {"Origin": OTHER, **bearer("full")}
    denied = await client.put("/files/videos/b.mp4", data=b"x", headers=other)
    assert await answer(denied) == "403 cross_origin_refused"
    assert "Access-Control-Allow-Origin" not in denied.headers
    read = await client.get("/files/videos/a.mp4", headers=other)
    assert read.status == 200 and "Access-Control-Allow-Origin" not in read.headers
    assert http_backend.view.keys() == ["videos/a.mp4"]
