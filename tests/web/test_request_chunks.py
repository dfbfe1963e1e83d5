"""request_chunks (proxy/web/requests.py) behind the proxy's own server (ProxyRunner,
proxy/web/server.py, with its read_bufsize and socket read size): the exact body, in
large chunks (what aiohttp has buffered, up to BODY_CHUNK, or what one socket read
brought) taken without raising aiohttp's buffer limits, so that what one connection
holds stays bounded however fast its client sends and however long the handler
takes to read."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.app import create_app
from proxy.web.requests import BODY_CHUNK, request_chunks
from proxy.web.server import READ_BUFSIZE, RECV_SIZE, ProxyRunner
from tests.conftest import Backend, MiB

SIZE = 3 * MiB + 12_345


def payload(size: int = SIZE) -> bytes:
    return hashlib.shake_256(b"body").digest(size)


async def probe(request: web.Request) -> web.Response:
    """What request_chunks gave: the chunks' sizes and hash, and aiohttp's buffer
    limits (low, high) once the body is read."""
    digest, sizes = hashlib.sha256(), []
    async for chunk in request_chunks(request):
        digest.update(chunk)
        sizes.append(len(chunk))
    limits = list(request.content.get_read_buffer_limits())
    return web.json_response({"sha256": digest.hexdigest(), "sizes": sizes, "limits": limits})


async def hold(request: web.Request) -> web.Response:
    """Reads nothing for a while, then says how much of the body aiohttp took off the
    connection meanwhile, and reads the rest."""
    await asyncio.sleep(0.5)
    taken = request.content.total_bytes
    size = 0
    async for chunk in request_chunks(request):
        size += len(chunk)
    return web.json_response({"taken": taken, "size": size})


@pytest.fixture
async def probe_url(http_backend: Backend) -> AsyncIterator[str]:
    app = create_app(http_backend.config, http_backend.app_backend)
    app.router.add_put("/probe", probe)
    app.router.add_put("/hold", hold)
    runner = ProxyRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.socket()
    # A large receive buffer (connections inherit it), as a fast network fills: one
    # socket read can then bring all it asks for.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)
    sock.bind(("127.0.0.1", 0))
    try:
        await web.SockSite(runner, sock).start()
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/probe"
    finally:
        await runner.cleanup()
        sock.close()


async def slowly(data: bytes, piece: int, pause: float) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]
        await asyncio.sleep(pause)


async def put(url: str, data: Any, **headers: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.put(url, data=data, headers=headers) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


Sender = Callable[[str], Awaitable[dict[str, Any]]]
SENDERS: dict[str, Sender] = {
    "content-length, at once": lambda url: put(url, payload()),
    "chunked, at once": lambda url: put(url, slowly(payload(), MiB, 0)),
    "trickled": lambda url: put(url, slowly(payload(), 100_000, 0.002), **{"Content-Length": str(SIZE)}),
}


@pytest.mark.parametrize("how", SENDERS)
async def test_the_exact_body_in_bounded_chunks_without_raising_the_limits(probe_url: str, how: str) -> None:
    answer = await SENDERS[how](probe_url)
    assert answer["sha256"] == hashlib.sha256(payload()).hexdigest()
    assert sum(answer["sizes"]) == SIZE
    assert 0 < max(answer["sizes"]) <= max(BODY_CHUNK, 2 * READ_BUFSIZE + RECV_SIZE)
    # A read(n) over the low-water mark raises the limits to (n, 2n): none happened.
    assert answer["limits"] == [READ_BUFSIZE, 2 * READ_BUFSIZE]


async def test_a_body_sent_at_once_comes_in_large_chunks(probe_url: str) -> None:
    """A fast upload is not cut into small chunks (each costs the pipeline a turn):
    most are a whole socket read or BODY_CHUNK, not a few KiB."""
    answer = await put(probe_url, payload())
    assert statistics.median(answer["sizes"]) >= min(BODY_CHUNK, RECV_SIZE)


async def test_a_connection_not_read_holds_little_of_its_body(probe_url: str) -> None:
    """While the handler does not read (an upload waiting for S3), aiohttp stops
    taking bytes off the connection past twice READ_BUFSIZE plus one socket read of
    RECV_SIZE (asyncio's default read, 256 KiB, would take that much at once)."""
    answer = await put(probe_url.replace("/probe", "/hold"), payload())
    assert answer["size"] == SIZE
    assert 0 < answer["taken"] <= 2 * READ_BUFSIZE + RECV_SIZE
