"""The forwarded middleware (proxy/web/forwarded.py), against one server with no nginx:
from a trusted peer, X-Forwarded-For/Proto/Host and X-Request-ID are the client's view
(in the access log, for the same-origin check, in the request id); from any other
peer they are ignored. URLs handed out stay relative, so they lead wherever the
client came in."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from proxy.config import Config, ConfigError, load_config
from proxy.web.access_log import AccessLogger
from tests.conftest import Backend
from tests.web.auth_support import TUS, auth_config, bearer

Serve = Callable[[tuple[str, ...]], AsyncIterator[TestServer]]
NGINX_SAYS = {
    "X-Forwarded-For": "198.51.100.7, 203.0.113.5",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "media.example",
    "X-Request-ID": "0123456789abcdef0123456789abcdef",
}
TRUSTED, UNTRUSTED = ("127.0.0.1",), ("10.0.0.0/8", "::1")


@pytest.fixture
async def servers(http_backend: Backend) -> AsyncIterator[dict[str, TestServer]]:
    """The proxy for a peer (the test, on 127.0.0.1) that it trusts, and for one it does not."""
    started = {}
    for name, trusted in (("trusted", TRUSTED), ("untrusted", UNTRUSTED)):
        server = replace(http_backend.config.server, trusted_proxies=trusted)
        config = auth_config(replace(http_backend.config, server=server))
        test_server = TestServer(create_app(config, http_backend.app_backend), host="127.0.0.1")
        await test_server.start_server(access_log_class=AccessLogger)
        started[name] = test_server
    yield started
    for test_server in started.values():
        await test_server.close()


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]


async def test_a_trusted_peer_names_the_client_and_the_request_id(
    servers: dict[str, TestServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    async with aiohttp.ClientSession() as session:
        for name in ("trusted", "untrusted"):
            url = servers[name].make_url("/files/public/a.mp4")
            async with session.put(url, data=b"x", headers={**NGINX_SAYS, **bearer("full")}) as r:
                assert r.status == 201, await r.text()
                ids = {name: r.headers["X-Request-ID"]}
            # An error's body names the same id.
            async with session.get(url.with_path("/files/public/none"), headers=NGINX_SAYS) as r:
                assert r.status == 404
                assert (await r.json())["request_id"] == r.headers["X-Request-ID"]
                error_id = r.headers["X-Request-ID"]
            if name == "trusted":
                assert ids[name] == error_id == NGINX_SAYS["X-Request-ID"]
            else:
                assert NGINX_SAYS["X-Request-ID"] not in (ids[name], error_id)
    trusted_put, trusted_get, untrusted_put, untrusted_get = access_lines(caplog)
    # The client is the address nginx appended, not what the client wrote before it;
    # the caller noted while the handler ran is on the line too.
    assert trusted_put.startswith('203.0.113.5 "PUT /files/public/a.mp4 '), trusted_put
    assert " token full [0123456789abcdef0123456789abcdef]" in trusted_put, trusted_put
    assert trusted_get.startswith("203.0.113.5 ") and " 404 " in trusted_get
    assert untrusted_put.startswith('127.0.0.1 "PUT /files/public/a.mp4 '), untrusted_put
    assert " token full [" in untrusted_put and "0123456789abcdef0123456789abcdef" not in untrusted_put
    assert untrusted_get.startswith("127.0.0.1 ")


def page_of(origin: str, forwarded_host: str = "media.example") -> dict[str, str]:
    """A browser's write from a page of ``origin``, through nginx on https://media.example."""
    return {"Origin": origin, "X-Forwarded-Proto": "https", "X-Forwarded-Host": forwarded_host}


@pytest.mark.parametrize(
    ("headers", "trusted_status", "untrusted_status"),
    [
        (page_of("https://media.example"), 201, 403),  # the site's own page
        (page_of("https://evil.example"), 403, 403),  # another site's page, whoever forwards it
        (page_of("http://media.example"), 403, 403),  # the scheme counts
        # A hostile host is ignored: the server's own host stays.
        (page_of("https://media.example", "media.example/x"), 403, 403),
    ],
)
async def test_the_same_origin_check_sees_the_clients_origin(
    servers: dict[str, TestServer], headers: dict[str, str], trusted_status: int, untrusted_status: int
) -> None:
    async with aiohttp.ClientSession() as session:
        for name, status in (("trusted", trusted_status), ("untrusted", untrusted_status)):
            url = servers[name].make_url("/files/public/page-write.txt")
            async with session.put(url, data=b"x", headers={**headers, **bearer("full")}) as r:
                assert r.status == status, (name, await r.text())
                if status == 403:
                    assert (await r.json())["error"] == "cross_origin_refused"


async def test_tus_urls_stay_relative_whatever_is_forwarded(servers: dict[str, TestServer]) -> None:
    """A tus client resolves them against the URL it used, which behind nginx is
    nginx's: right through any proxy, and no header can send the client elsewhere."""
    async with aiohttp.ClientSession() as session:
        for name in ("trusted", "untrusted"):
            headers = {**TUS, **NGINX_SAYS, **bearer("full"), "Upload-Length": "3"}
            url = servers[name].make_url("/uploads/")
            async with session.post(url, headers=headers) as r:
                assert r.status == 201, await r.text()
                location = r.headers["Location"]
            assert location.startswith("/uploads/"), location
            patch = {**headers, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
            async with session.patch(url.with_path(location), data=b"abc", headers=patch) as r:
                assert r.status == 204, await r.text()
                assert r.headers["Object-Location"].startswith("/files/"), r.headers


async def test_hostile_forwarded_headers_from_a_trusted_peer_are_ignored(
    servers: dict[str, TestServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    hostile = [
        {"X-Forwarded-For": "203.0.113.5, " * 600 + "garbage"},
        {"X-Forwarded-For": "x" * 7000, "X-Forwarded-Proto": "gopher", "X-Forwarded-Host": "a/b@c"},
        {"X-Forwarded-For": "::1%eth0", "X-Request-ID": "id with spaces"},
        {"X-Request-ID": "x" * 65, "X-Forwarded-Host": "[::1"},
    ]
    async with aiohttp.ClientSession() as session:
        for headers in hostile:
            async with session.get(servers["trusted"].make_url("/files/public/none"), headers=headers) as r:
                assert r.status == 404, await r.text()
                assert r.headers["X-Request-ID"] != headers.get("X-Request-ID")
    for line in access_lines(caplog):
        assert line.startswith('127.0.0.1 "GET /files/public/none '), line


def test_trusted_proxies_setting() -> None:
    config = load_config(None, {"STREAM_PROXY_SERVER_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8,::1"})
    assert config.server.trusted_proxies == ("127.0.0.1", "10.0.0.0/8", "::1")
    assert Config().server.trusted_proxies == ()
    with pytest.raises(ConfigError, match=r"server\.trusted_proxies: 'nginx' is not an IP address"):
        load_config(None, {"STREAM_PROXY_SERVER_TRUSTED_PROXIES": "127.0.0.1,nginx"})
