"""The access log (proxy/web/access_log.py): every request's line names its caller
and request id, and never a secret: no token, no signature that could be replayed."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from proxy.rules.grants import Action
from proxy.web.access_log import AccessLogger, redacted
from tests.conftest import Backend
from tests.web.auth_support import SECRETS, auth_config, bearer, token_for


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/files/a.mp4", "/files/a.mp4"),
        ("/s/TOKEN.MAC/files/hls/a.ts", "/s/-/files/hls/a.ts"),
        ("/s/TOKEN.MAC", "/s/-"),
        ("/files/a.mp4?sig=TOKEN.MAC", "/files/a.mp4?sig=-"),
        ("/uploads/x?a=1&sig=TOKEN.MAC&b=2", "/uploads/x?a=1&sig=-&b=2"),
        ("/files/s/x?design=1", "/files/s/x?design=1"),
    ],
)
def test_redacted(path: str, logged: str) -> None:
    assert redacted(path) == logged


@pytest.fixture
async def server(http_backend: Backend) -> AsyncIterator[TestServer]:
    app = create_app(auth_config(http_backend.config), http_backend.app_backend)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server(access_log_class=AccessLogger)
    yield test_server
    await test_server.close()


async def test_lines_name_the_caller_and_no_secret(
    server: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    signature = token_for(Action.READ, "public/a")
    requests = [
        ("PUT", "/files/public/a", bearer("full"), "token full", 201),
        ("GET", "/files/public/a", {}, "anonymous", 200),
        ("GET", f"/s/{signature}/files/public/a", {}, "key k1", 200),
        ("GET", f"/files/public/a?sig={signature}", {}, "key k1", 200),
        ("GET", "/files/public/a", {"Authorization": f"Bearer {SECRETS['full']}x"}, "unknown token", 401),
        ("GET", f"/s/{signature[:-1]}/files/public/a", {}, "bad signature", 403),
        (
            "GET",
            f"/s/{token_for(Action.READ, 'public/a', expires_in=-999)}/files/public/a",
            {},
            "key k1 (expired)",
            403,
        ),
    ]
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    async with aiohttp.ClientSession(str(server.make_url(""))) as session:
        for method, path, headers, _, status in requests:
            async with session.request(
                method, path, headers=headers, data=b"x" if method == "PUT" else None
            ) as r:
                assert r.status == status, path
                request_id = r.headers["X-Request-ID"]
                await r.read()
    lines = [record.getMessage() for record in caplog.records if record.name == "aiohttp.access"]
    assert len(lines) == len(requests)
    for line, (method, _, _, caller, status) in zip(lines, requests, strict=True):
        assert f'"{method} ' in line and f" {status} " in line and f" {caller} [" in line, line
        assert signature not in line and "eyJ" not in line
        assert not any(secret in line for secret in SECRETS.values())
    assert lines[-1].endswith(f"[{request_id}]")
