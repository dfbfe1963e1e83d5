"""Requests as /metrics counts them (proxy/web/metrics.py): by method, route pattern
and status; their durations; the bytes received and sent, exactly as they crossed
the connection (sendfile, relay and aiohttp's writer alike); uploads and downloads
in flight; tus uploads created, finished, terminated, expired; and who may read it."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config import Config, LocalConfig, ServerConfig, StorageConfig
from proxy.metrics import definitions
from proxy.storage.expiry import sweep
from proxy.storage.local import build
from tests.conftest import Backend
from tests.metrics.support import Scrape, delta, scrape, serving
from tests.web.auth_support import auth_config, bearer

REQUESTS = "stream_proxy_http_requests_total"
KEY_ROUTE = "/files/{key}"


def local_config(tmp_path: Path, **server: Any) -> Config:
    storage = StorageConfig(backend="local", local=LocalConfig(root=tmp_path / "data"))
    return Config(replace(ServerConfig(), **server), storage)


async def test_requests_by_method_route_and_status(tmp_path: Path) -> None:
    async with serving(local_config(tmp_path)) as server:
        url = str(server.make_url("")).rstrip("/")
        before = await scrape(url)
        async with aiohttp.ClientSession(url) as session:
            for method, path, headers, status in [
                ("PUT", "/files/v/a.mp4", {}, 201),
                ("GET", "/files/v/a.mp4", {}, 200),
                ("GET", "/files/v/a.mp4", {"Range": "bytes=0-9"}, 206),
                ("HEAD", "/files/v/a.mp4", {}, 200),
                ("GET", "/files/v/missing.mp4", {}, 404),
                ("GET", "/no/such/route", {}, 404),
                ("PROPFIND", "/files/v/a.mp4", {}, 405),  # a method the server does not know
                ("GET", "/files", {}, 200),
            ]:
                data = b"x" * 1000 if method == "PUT" else None
                async with session.request(method, path, headers=headers, data=data) as answer:
                    assert answer.status == status, path
                    await answer.read()
        after = await scrape(url)
    counted = {
        ("PUT", KEY_ROUTE, "201"): 1,
        ("GET", KEY_ROUTE, "200"): 1,
        ("GET", KEY_ROUTE, "206"): 1,
        ("HEAD", KEY_ROUTE, "200"): 1,
        ("GET", KEY_ROUTE, "404"): 1,
        ("GET", "none", "404"): 1,  # the pattern, never the path a client made up
        ("other", "none", "405"): 1,  # no route takes that method
        ("GET", "/files", "200"): 1,
    }
    for (method, route, code), count in counted.items():
        assert delta(before, after, REQUESTS, method=method, route=route, status=code) == count
    # The first scrape was counted too, once answered.
    assert delta(before, after, REQUESTS, method="GET", route="/metrics", status="200") == 1
    duration = "stream_proxy_http_request_duration_seconds_count"
    assert delta(before, after, duration, method="GET", route=KEY_ROUTE) == 3
    assert not any("no/such" in str(labels) or "PROPFIND" in str(labels) for _, labels in after.samples)


async def _raw_exchange(port: int, request: bytes) -> bytes:
    """Everything the server sent for ``request`` until it closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        received = bytearray()
        async with asyncio.timeout(30):
            while chunk := await reader.read(1 << 20):
                received += chunk
        return bytes(received)
    finally:
        writer.close()


async def test_refusals_before_the_body_count_under_their_route(tmp_path: Path) -> None:
    async with serving(local_config(tmp_path)) as server:
        url = str(server.make_url("")).rstrip("/")
        assert server.port is not None
        before = await scrape(url)
        # Answered by the route's Expect handler, before any middleware runs.
        # (The body is sent all the same, as a client that does not wait would.)
        put = b"PUT /files/v/c.mp4 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: nope\r\n\r\nhello"
        assert (await _raw_exchange(server.port, put)).startswith(b"HTTP/1.1 417")
        head = b"POST /uploads/ HTTP/1.1\r\nHost: x\r\nUpload-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        assert (await _raw_exchange(server.port, head)).startswith(b"HTTP/1.1 412")  # no Tus-Resumable
        after = await scrape(url)
    assert delta(before, after, REQUESTS, method="PUT", route=KEY_ROUTE, status="417") == 1
    assert delta(before, after, REQUESTS, method="POST", route="/uploads/", status="412") == 1


async def test_bytes_received_and_sent_are_those_on_the_wire(backend: Backend) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)
    async with serving(backend.config) as server:
        url = str(server.make_url("")).rstrip("/")
        port = server.port
        assert port is not None
        before = await scrape(url)
        put = b"PUT /files/w/b.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        answer_to_put = await _raw_exchange(port, put + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        # The whole object (sendfile on local, splice from S3), one range, and a JSON error.
        gets = [
            b"GET /files/w/b.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /files/w/b.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=5-1000004\r\nConnection: close\r\n\r\n",
            b"GET /files/w/none.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ]
        answers = [await _raw_exchange(port, get) for get in gets]
        after = await scrape(url)
    assert answer_to_put.startswith(b"HTTP/1.1 201")
    assert answers[0].endswith(body) and answers[1].endswith(body[5:1000005])
    assert answers[2].startswith(b"HTTP/1.1 404")
    assert delta(before, after, "stream_proxy_http_received_bytes_total", route=KEY_ROUTE) == len(body)
    sent = len(answer_to_put) + sum(map(len, answers))
    assert delta(before, after, "stream_proxy_http_sent_bytes_total", route=KEY_ROUTE) == sent


async def test_uploads_and_downloads_in_flight(tmp_path: Path) -> None:
    big = os.urandom(32 * 1024 * 1024)
    async with serving(local_config(tmp_path)) as server:
        url = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession(url) as session, session.put("/files/big.bin", data=big) as put:
            assert put.status == 201
        before = await scrape(url)
        # An upload whose body is half sent, and a download its client does not read.
        upload = socket.create_connection(("127.0.0.1", server.port))
        upload.sendall(b"PUT /files/slow.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf")
        download = socket.socket()
        download.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        download.connect(("127.0.0.1", server.port))
        download.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            during = await _scrape_until(url, "stream_proxy_downloads_in_flight", 1)
            assert delta(before, during, "stream_proxy_uploads_in_flight") == 1
        finally:
            upload.close()
            download.close()
        after = await _scrape_until(url, "stream_proxy_downloads_in_flight", 0)
        after = await _scrape_until(url, "stream_proxy_uploads_in_flight", 0)
    assert after.value("stream_proxy_uploads_in_flight") == before.value("stream_proxy_uploads_in_flight")


async def _scrape_until(url: str, name: str, value: float, seconds: float = 15.0) -> Scrape:
    deadline = time.monotonic() + seconds
    while True:
        found = await scrape(url)
        if found.value(name) == value or time.monotonic() > deadline:
            assert found.value(name) == value, name
            return found
        await asyncio.sleep(0.05)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def test_tus_uploads_created_finished_terminated_expired(tmp_path: Path) -> None:
    config = local_config(tmp_path)
    tus = {"Tus-Resumable": "1.0.0"}
    patch = {**tus, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
    created = {**tus, "Upload-Length": "5", "Upload-Metadata": f"filename {_b64('a.txt')}"}
    names = [f"stream_proxy_tus_uploads_{what}_total" for what in ("created", "finished", "terminated")]
    async with serving(config) as server:
        url = str(server.make_url("")).rstrip("/")
        before = await scrape(url)
        async with aiohttp.ClientSession(url) as session:
            locations = []
            for _ in range(3):
                async with session.post("/uploads/", headers=created) as answer:
                    assert answer.status == 201
                    locations.append(answer.headers["Location"])
            async with session.patch(locations[0], headers=patch, data=b"hello") as answer:
                assert answer.status == 204 and "Object-Location" in answer.headers
            async with session.head(locations[0], headers=tus) as answer:
                assert answer.status == 200  # names the object too: no second finish
            async with session.delete(locations[1], headers=tus) as answer:
                assert answer.status == 204
        after = await scrape(url)
    assert [delta(before, after, name) for name in names] == [3, 1, 1]
    expired = "stream_proxy_tus_uploads_expired_total"
    expired_before = definitions.REGISTRY.get_sample_value(expired) or 0
    backend = build(config)
    await backend.start()
    try:
        assert await sweep(backend.uploads, now=time.time() + 10 * 86400) == 2
    finally:
        await backend.close()
    assert (definitions.REGISTRY.get_sample_value(expired) or 0) - expired_before == 2


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        (bearer("writer"), 403),
        (bearer("narrow"), 403),  # lists only under other/
        (bearer("reader"), 200),
        (bearer("full"), 200),
    ],
)
async def test_metrics_needs_list_on_every_key(tmp_path: Path, headers: dict[str, str], status: int) -> None:
    async with (
        serving(auth_config(local_config(tmp_path))) as server,
        aiohttp.ClientSession(str(server.make_url(""))) as session,
        session.get("/metrics", headers=headers) as answer,
    ):
        assert answer.status == status
        if status == 200:
            assert answer.headers["Content-Type"].startswith("text/plain; version=")
            assert b"stream_proxy_http_requests_total" in await answer.read()
        else:
            assert (await answer.json())["error"] in ("unauthorized", "forbidden")
            assert b"stream_proxy" not in await answer.read()


async def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    async with (
        serving(local_config(tmp_path, metrics=False)) as server,
        aiohttp.ClientSession(str(server.make_url(""))) as session,
        session.get("/metrics") as answer,
    ):
        assert answer.status == 404
