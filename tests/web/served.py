"""The proxy as ``stream-proxy serve`` runs it (ProxyRunner on a socket site, with the
config's connection limits) on a random 127.0.0.1 port, and raw HTTP/1.1 over plain
sockets: what the tests of timeouts and limits need to see exactly when the server
answers and when it closes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from proxy.app import create_app
from proxy.config import Config
from proxy.storage.backend import Backend as StorageBackend
from proxy.web.server import ProxyRunner
from proxy.web.settings import ConnectionSettings


@contextlib.asynccontextmanager
async def served(config: Config, app_backend: StorageBackend | None = None) -> AsyncIterator[int]:
    """The port of a server for ``config``, stopped on exit."""
    runner = ProxyRunner(
        create_app(config, app_backend), connections=ConnectionSettings.of(config), shutdown_timeout=1.0
    )
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        await web.SockSite(runner, sock).start()
        yield int(sock.getsockname()[1])
    finally:
        await runner.cleanup()
        sock.close()


@dataclass
class Answer:
    status: int  # 0: the connection ended before an answer
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


async def read_answer(reader: asyncio.StreamReader, *, head_only: bool = False) -> Answer:
    """The next answer on the connection (its body by Content-Length)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return Answer(0)
    status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    answer = Answer(int(status_line.split()[1]), headers)
    if not head_only and answer.status not in (204, 304):
        answer.body = await reader.readexactly(int(headers.get("Content-Length", "0")))
    return answer


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """What the server sent until it closed the connection, or None if it did not
    close it within ``seconds``."""
    data = bytearray()
    try:
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(65536):
                data += chunk
    except TimeoutError:
        return None
    except ConnectionError:
        pass  # reset: closed too
    return bytes(data)


def assert_json_error(answer: Answer, status: int, error: str) -> None:
    """An answer as every error of this server is: JSON with a request id, the
    common headers, and the connection closed after it."""
    assert answer.status == status, answer
    assert answer.headers["Content-Type"].startswith("application/json"), answer
    body = answer.json()
    assert body["error"] == error, body
    assert body["message"] and body["request_id"] == answer.headers["X-Request-ID"], answer
    assert answer.headers["Server"] == "stream-proxy"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers.get("Connection", "").lower() == "close", answer


async def request_on(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, path: str, body: bytes = b""
) -> Answer:
    """One keep-alive request on an open connection, and its answer."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if body or method in ("PUT", "POST"):
        head += f"Content-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"\r\n" + body)
    await writer.drain()
    async with asyncio.timeout(10):
        return await read_answer(reader, head_only=method == "HEAD")
