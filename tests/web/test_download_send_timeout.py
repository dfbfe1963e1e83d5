"""server.send_timeout on local downloads (sendfile): a client that stops reading is
cut off and the file's descriptor released, while others are served. (S3 downloads:
test_download_disconnects.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tests.conftest import Backend, MiB, backend_for, wait_until

SEND_TIMEOUT = 2.0
SIZE = 64 * MiB


def descriptors_of(path: Path) -> int:
    """How many of this process's descriptors (the server runs in it) are open on ``path``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
    return count


async def test_a_client_that_stops_reading_is_cut_off(tmp_path: Path, proxy_client: Any) -> None:
    backend: Backend = backend_for("local", tmp_path, None, None)
    config = replace(backend.config, server=replace(backend.config.server, send_timeout=SEND_TIMEOUT))
    client = await proxy_client(config)
    root = config.storage.local.root
    big = root / "big.bin"
    big.write_bytes(os.urandom(MiB) * (SIZE // MiB))
    small = os.urandom(1000)
    (root / "small.bin").write_bytes(small)
    loop = asyncio.get_running_loop()

    sock = socket.socket()
    # A small window, and nothing read: the server's sendfile soon cannot go on.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (client.host, client.port))
        await loop.sock_sendall(sock, b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_until(lambda: descriptors_of(big.resolve()) == 1)
        started = time.monotonic()

        # Others are served meanwhile.
        response = await client.get("/files/small.bin")
        assert response.status == 200 and await response.read() == small

        await wait_until(lambda: descriptors_of(big.resolve()) == 0, SEND_TIMEOUT + 15)
        assert time.monotonic() - started >= SEND_TIMEOUT - 0.5
        # The connection was cut: the client gets far less than the object, then the end.
        received = 0
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(10):
                while chunk := await loop.sock_recv(sock, 1 << 20):
                    received += len(chunk)
        assert received < SIZE // 2
    finally:
        sock.close()

    response = await client.get("/files/small.bin")
    assert response.status == 200 and await response.read() == small


async def test_a_slow_reader_that_keeps_reading_gets_everything(tmp_path: Path, proxy_client: Any) -> None:
    backend: Backend = backend_for("local", tmp_path, None, None)
    config = replace(backend.config, server=replace(backend.config.server, send_timeout=1.0))
    client = await proxy_client(config)
    data = os.urandom(4 * MiB)
    (config.storage.local.root / "mid.bin").write_bytes(data)
    reader, writer = await asyncio.open_connection(client.host, client.port, limit=1 << 20)
    writer.write(b"GET /files/mid.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    received = bytearray()
    started = time.monotonic()
    async with asyncio.timeout(30):
        while chunk := await reader.read(256 * 1024):
            received += chunk
            await asyncio.sleep(0.05)  # slower than the server sends, never a second idle
    writer.close()
    assert time.monotonic() - started > 0.5
    assert received.endswith(data)


async def test_a_file_cut_short_in_place_ends_the_answer_early(tmp_path: Path, proxy_client: Any) -> None:
    backend: Backend = backend_for("local", tmp_path, None, None)
    client = await proxy_client(backend.config)  # send_timeout: the default minute
    big = backend.config.storage.local.root / "shrinking.bin"
    big.write_bytes(os.urandom(SIZE))
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"GET /files/shrinking.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_until(lambda: descriptors_of(big.resolve()) == 1)
    await asyncio.sleep(0.2)  # the socket's buffers fill; nothing is read yet
    os.truncate(big, MiB)  # no writer of the proxy does this; a hand on the disk might
    received = 0
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(20):  # closed, not left hanging till send_timeout
            while chunk := await reader.read(1 << 20):
                received += len(chunk)
    writer.close()
    assert received < SIZE
    await wait_until(lambda: descriptors_of(big.resolve()) == 0)
