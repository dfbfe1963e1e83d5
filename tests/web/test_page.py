"""The web page's files as HTTP answers (proxy/web/page.py): the headers that make
the page safe and cacheable, what is served and what is not, ``server.web_ui``,
and that the page needs no credentials while what it asks for does. The page in a
browser is test_page_browser.py's."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest

from proxy.page.files import STATIC
from proxy.rules.grants import Action
from proxy.web.page import CSP
from tests.conftest import Backend
from tests.web.auth_support import auth_config, tampered, token_for

PAGES = ["/", "/watch", "/static/app.js", "/static/style.css", "/static/vendor/tus.min.js"]


@pytest.mark.parametrize("path", PAGES)
async def test_files_are_served_with_the_security_and_cache_headers(
    http_backend: Backend, proxy_client: Any, path: str
) -> None:
    client = await proxy_client(http_backend.config, http_backend.app_backend)
    answer = await client.get(path)
    assert answer.status == 200
    name = {"/": "index.html", "/watch": "player.html"}.get(path, path.removeprefix("/static/"))
    assert await answer.read() == (STATIC / name).read_bytes()
    headers = answer.headers
    assert headers["Content-Security-Policy"] == CSP
    assert "default-src 'none'" in CSP and "'unsafe-inline'" not in CSP and "frame-ancestors 'none'" in CSP
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-cache"
    expected_type = {".js": "text/javascript", ".css": "text/css"}.get(name[name.rfind(".") :], "text/html")
    assert headers["Content-Type"].startswith(expected_type)

    again = await client.get(path, headers={"If-None-Match": headers["ETag"]})
    assert again.status == 304 and await again.read() == b""
    assert again.headers["ETag"] == headers["ETag"]
    other = await client.get(path, headers={"If-None-Match": '"something-else"'})
    assert other.status == 200


NOT_SERVED = ["/static/", "/static/no.js", "/static/../config.toml", "/static/%2e%2e/app.py", "/static/a.py"]


@pytest.mark.parametrize("path", NOT_SERVED)
async def test_nothing_else_is_served(http_backend: Backend, proxy_client: Any, path: str) -> None:
    client = await proxy_client(http_backend.config, http_backend.app_backend)
    answer = await client.get(path)
    assert answer.status == 404
    body = await answer.json()
    assert body["error"] == "not_found" and "request_id" in body


async def test_web_ui_false_serves_no_page(http_backend: Backend, proxy_client: Any) -> None:
    config = http_backend.config
    client = await proxy_client(
        replace(config, server=replace(config.server, web_ui=False)), http_backend.app_backend
    )
    for path in PAGES:
        answer = await client.get(path)
        assert answer.status == 404, path
    assert (await client.get("/files")).status == 200  # the API is still there


async def test_page_needs_no_credentials_but_the_api_does(http_backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(auth_config(http_backend.config), http_backend.app_backend)
    for path in PAGES:
        assert (await client.get(path)).status == 200, path
    refused = await client.get("/files")
    assert refused.status == 401 and (await refused.json())["error"] == "unauthorized"


async def test_page_under_a_signed_path(http_backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(auth_config(http_backend.config), http_backend.app_backend)
    signature = token_for(Action.WRITE, "videos/", prefix=True)
    for path in PAGES:
        assert (await client.get(f"/s/{signature}{path}")).status == 200, path
    forged = await client.get(f"/s/{tampered(signature)}/")
    assert forged.status == 403 and (await forged.json())["error"] == "bad_signature"


@pytest.mark.parametrize("name", ["index.html", "player.html"])
def test_html_has_nothing_inline(name: str) -> None:
    """What the CSP would block: inline scripts, style elements or attributes, handlers."""
    html = (STATIC / name).read_text()
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all(" src=" in tag for tag in scripts), scripts
    assert "<style" not in html and " style=" not in html
    assert re.search(r"\son[a-z]+=", html) is None
    # Every control has a label: an <input> by a <label for=...> of its id.
    labelled = set(re.findall(r'<label for="([^"]+)"', html))
    inputs = re.findall(r'<input id="([^"]+)"', html)
    assert set(inputs) <= labelled, (inputs, labelled)
