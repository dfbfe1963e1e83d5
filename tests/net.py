"""Plain TCP helpers: connected socket pairs, and a tap that relays a server's
connections and records what flows on each."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@contextlib.asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[socket.socket, socket.socket]]:
    """Two ends of a loopback TCP connection, both non-blocking."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        accepting = asyncio.ensure_future(loop.sock_accept(server))
        await loop.sock_connect(client, server.getsockname())
        accepted, _ = await accepting
    accepted.setblocking(False)
    try:
        yield client, accepted
    finally:
        client.close()
        accepted.close()


async def receive(sock: socket.socket, count: int, *, slowly: bool = False) -> bytes:
    """Up to ``count`` bytes from ``sock``, fewer if it reaches EOF."""
    loop = asyncio.get_running_loop()
    received = bytearray()
    while len(received) < count:
        data = await loop.sock_recv(sock, min(64 * 1024, count - len(received)))
        if not data:
            break
        received += data
        if slowly:
            await asyncio.sleep(0.001)
    return bytes(received)


@dataclass
class TapConnection:
    open: bool = True
    sent: bytes = b""  # what the proxy sent S3 (requests only: nothing big is uploaded here)
    bytes_down: int = 0  # what S3 sent the proxy


class TcpTap:
    """A TCP relay in front of S3: the connections the proxy opens and what flows on each.

    ``before_sending``, when set, is awaited with each piece the proxy sends before it
    goes on to S3 (to change the object just before a request reaches the server)."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        assert parts.hostname and parts.port
        self.host, self.port = parts.hostname, parts.port
        self.connections: list[TapConnection] = []
        self.url = ""
        self.before_sending: Callable[[bytes], Awaitable[None]] | None = None
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[Any]] = set()
        self._clients: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.drop_connections()

    async def drop_connections(self) -> None:
        """Close every open connection, as a server does with idle keep-alive ones."""
        for writer in self._clients:
            writer.close()
        await asyncio.gather(*self._relays, return_exceptions=True)

    async def _relay(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        task.add_done_callback(self._relays.discard)
        conn = TapConnection()
        self.connections.append(conn)
        self._clients.append(down_w)
        up_r, up_w = await asyncio.open_connection(self.host, self.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(64 * 1024):
                    if upstream:
                        conn.sent += data
                        if self.before_sending is not None:
                            await self.before_sending(data)
                    else:
                        conn.bytes_down += len(data)
                    dst.write(data)
                    await dst.drain()

        tasks = [
            asyncio.create_task(pipe(down_r, up_w, True)),
            asyncio.create_task(pipe(up_r, down_w, False)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for writer in (up_w, down_w):
                writer.close()
            conn.open = False
