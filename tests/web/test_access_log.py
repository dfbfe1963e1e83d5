"""The access log (proxy/web/access_log.py): every request's line names its caller
and request id, and never a secret: no token, no signature that could be replayed."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request

from proxy.app import create_app
from proxy.config import LogConfig
from proxy.logs import ACCESS_LOGGER, configure, json_lines, reset
from proxy.metrics.definitions import REGISTRY
from proxy.rules.grants import Action
from proxy.web.access_log import AccessLogger, json_line, redacted
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


@pytest.fixture
def log_to() -> Iterator[Callable[[LogConfig], io.StringIO]]:
    """configure() the process's logging into a buffer; what it replaced comes back after."""
    root, access = logging.getLogger(), logging.getLogger(ACCESS_LOGGER)
    saved = (root.handlers[:], root.level, access.handlers[:], access.level, access.propagate)

    def configured(config: LogConfig) -> io.StringIO:
        buffer = io.StringIO()
        configure(config, stream=buffer)
        return buffer

    yield configured
    root.handlers[:], root.level = saved[0], saved[1]
    access.handlers[:], access.level, access.propagate = saved[2], saved[3], saved[4]
    reset()


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


async def test_json_lines_carry_every_field(
    http_backend: Backend, log_to: Callable[[LogConfig], io.StringIO]
) -> None:
    buffer = log_to(LogConfig(format="json"))
    app = create_app(auth_config(http_backend.config), http_backend.app_backend)
    signature = token_for(Action.READ, "public/a")
    async with _served(app) as url, aiohttp.ClientSession(url) as session:
        async with session.put("/files/public/a", headers=bearer("full"), data=b"x" * 1234) as r:
            assert r.status == 201
            put_id = r.headers["X-Request-ID"]
        async with session.get(f"/s/{signature}/files/public/a?x=1") as r:
            assert r.status == 200 and await r.read() == b"x" * 1234
        async with session.get("/livez") as r:
            assert r.status == 200
        logging.getLogger("proxy.somewhere").warning("a message with %s", "an argument")
    put, get, app_line = _lines(buffer)
    assert set(put) == {"time", "request_id", "client", "method", "path", "status", "bytes_in", "bytes_out",
                        "duration", "identity"}  # fmt: skip
    assert put["time"].endswith("Z") and datetime.fromisoformat(put["time"]).utcoffset() == timedelta(0)
    assert abs(datetime.fromisoformat(put["time"]).timestamp() - time.time()) < 60
    assert (put["request_id"], put["client"], put["method"], put["path"]) == (
        put_id, "127.0.0.1", "PUT", "/files/public/a"
    )  # fmt: skip
    assert (put["status"], put["bytes_in"], put["identity"]) == (201, 1234, "token full")
    assert put["bytes_out"] > 0 and 0 <= put["duration"] < 30
    assert (get["path"], get["identity"], get["bytes_in"]) == ("/s/-/files/public/a?x=1", "key k1", 0)
    assert get["bytes_out"] > 1234 and signature not in buffer.getvalue()
    # The probe's line is debug; an application's line is JSON of its own.
    assert app_line == {
        "time": app_line["time"],
        "level": "warning",
        "logger": "proxy.somewhere",
        "message": "a message with an argument",
    }


async def test_probes_are_logged_at_debug(
    http_backend: Backend, log_to: Callable[[LogConfig], io.StringIO]
) -> None:
    buffer = log_to(LogConfig(format="json", level="debug"))
    app = create_app(http_backend.config, http_backend.app_backend)
    async with _served(app) as url, aiohttp.ClientSession(url) as session, session.get("/readyz") as r:
        assert r.status == 200
    assert [line["path"] for line in _lines(buffer) if "path" in line] == ["/readyz"]


async def test_access_lines_off_requests_still_counted(
    http_backend: Backend, log_to: Callable[[LogConfig], io.StringIO]
) -> None:
    buffer = log_to(LogConfig(format="json", access=False))
    labels = {"method": "GET", "route": "/files/{key}", "status": "404"}

    def count() -> float:
        return REGISTRY.get_sample_value("stream_proxy_http_requests_total", labels) or 0.0

    before = count()
    app = create_app(http_backend.config, http_backend.app_backend)
    async with _served(app) as url, aiohttp.ClientSession(url) as session, session.get("/files/none") as r:
        assert r.status == 404
    assert buffer.getvalue() == "" and count() - before == 1


def test_auto_format_is_text_at_a_terminal_json_elsewhere(log_to: Callable[[LogConfig], io.StringIO]) -> None:
    primary, secondary = os.openpty()
    with os.fdopen(secondary, "w") as terminal, os.fdopen(primary, "rb", buffering=0) as screen:
        configure(LogConfig(format="auto"), stream=terminal)
        assert not json_lines()
        logging.getLogger("proxy.x").warning("to a human")
        terminal.flush()
        assert b"WARNING proxy.x: to a human" in screen.read(4096)
    log_to(LogConfig(format="auto"))  # a buffer: no terminal
    assert json_lines()


@contextlib.asynccontextmanager
async def _served(app: web.Application) -> AsyncIterator[str]:
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server(access_log_class=AccessLogger)
    try:
        yield str(test_server.make_url(""))
    finally:
        await test_server.close()


def test_a_line_stays_json_whatever_the_path() -> None:
    # A path is the client's: quotes, backslashes and controls must not break the line.
    odd = make_mocked_request("GET", '/files/a"b\\c\x01?sig=abc')
    line = json.loads(json_line(odd, 200, 0, 1, 0.5, 'token "x"'))
    assert (line["path"], line["identity"], line["client"]) == ('/files/a"b\\c\x01?sig=-', 'token "x"', None)
