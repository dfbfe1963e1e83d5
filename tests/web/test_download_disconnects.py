"""Clients that go away in the middle of a download, or stay connected and stop
reading: the server lets go of the file or the S3 connection and keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner

from proxy.app import create_app
from proxy.config import Config, ServerConfig, StorageConfig
from proxy.storage.s3.relay import USER_AGENT
from tests.conftest import Backend, MiB, S3Endpoint, S3View, s3_config, wait_until
from tests.net import TcpTap
from tests.web.downloads_support import (
    TIMEOUT,
    object_bytes,
    raw,
    self_signed_context,
    start_client,
    upload,
)

# -- clients that go away in the middle of a download ---------------------------------------------------


class RunAppServer(TestServer):
    """Handlers are not cancelled when their client goes away, as under web.run_app()
    (the CLI); aiohttp's TestServer cancels them."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


BIG = 64 * MiB
ABORTS = 30
WORKERS = 4


async def read_some_then_abort(
    client: TestClient[Any, Any], path: str, *, busy_threads: int = 0, want: int = 300_000
) -> None:
    """Start a download, read some of it and reset the connection. With ``busy_threads``,
    the event loop's worker threads are all busy for a moment when the client goes away,
    as when many uploads are being written."""
    loop = asyncio.get_running_loop()
    blockers: list[asyncio.Future[None]] = []
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        async with asyncio.timeout(TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            assert f"Content-Length: {BIG}\r\n".encode() in head, head
            got = 0
            while got < want:
                chunk = await reader.read(64 * 1024)
                assert chunk, "the server closed the connection early"
                got += len(chunk)
        blockers = [loop.run_in_executor(None, time.sleep, 0.2) for _ in range(busy_threads)]
    finally:
        writer.transport.abort()  # RST, like a closed browser tab
        await asyncio.gather(*blockers)


def open_fds_on(path: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                found.append(fd)
    return found


CANCELLATION = pytest.mark.parametrize(
    "cancellation", [True, False], ids=["handler-cancellation", "run-app-default"]
)


@CANCELLATION
async def test_client_disconnect_mid_download(backend: Backend, cancellation: bool) -> None:
    await check_client_disconnect_mid_download(backend, cancellation)


@pytest.mark.real_s3
@CANCELLATION
async def test_client_disconnect_mid_download_real_s3(real_backend: Backend, cancellation: bool) -> None:
    await check_client_disconnect_mid_download(real_backend, cancellation)


async def check_client_disconnect_mid_download(backend: Backend, cancellation: bool) -> None:
    data = object_bytes(BIG)
    config = backend.config
    tap: TcpTap | None = None
    if backend.name == "local":
        path = config.storage.local.root / "big.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        # Two pooled connections to S3 only: one leaked per abort and the third request hangs.
        assert config.storage.s3.endpoint_url
        tap = TcpTap(config.storage.s3.endpoint_url)
        await tap.start()
        s3 = replace(config.storage.s3, endpoint_url=tap.url, max_pool_connections=2)
        config = replace(config, storage=replace(config.storage, s3=s3))
        view: Any = backend.view
        await asyncio.to_thread(view.client.put_object, Bucket=view.bucket, Key="big.bin", Body=data)
    # A pool of known size, to make all of its threads busy at times.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=WORKERS))
    client = await start_client(config, TestServer if cancellation else RunAppServer)
    try:
        await upload(client, "small.txt", b"small", "text/plain")
        for i in range(ABORTS):
            # Local reads use worker threads: sometimes have them all busy as the client leaves.
            busy = WORKERS if tap is None and i % 3 == 0 else 0
            await read_some_then_abort(client, "/files/big.bin", busy_threads=busy)
        if tap is None:
            # The server noticed each time: it is not sending the file any more, and closed it.
            await wait_until(lambda: open_fds_on(path) == [], 5)
        else:
            # Each GetObject's connection was closed: the proxy neither kept it nor read
            # the rest of the 64 MiB body.
            downloads = [c for c in tap.connections if re.search(rb"GET /[^ ]*/big\.bin HTTP/1\.1", c.sent)]
            assert len(downloads) == ABORTS
            assert all(USER_AGENT.encode() in c.sent for c in downloads)  # spliced, not through botocore
            await wait_until(lambda: not any(c.open for c in downloads), TIMEOUT)
            assert max(c.bytes_down for c in downloads) < BIG // 2
        # Still serving, with a free connection to S3.
        async with asyncio.timeout(TIMEOUT):
            r = await raw(client, "GET", "/files/big.bin", {"Range": "bytes=-10"})
            assert r.status == 206 and r.body == data[-10:]
            r = await raw(client, "GET", "/files/small.txt")
            assert r.status == 200 and r.body == b"small"
    finally:
        await client.close()
        if tap is not None:
            await tap.close()


# -- a client that stops reading -------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["relayed", "through-botocore"])
async def test_a_client_that_takes_no_bytes_is_cut_off_after_the_send_timeout(
    tmp_path: Path, moto_endpoint: S3Endpoint, moto_bucket: str, tls: bool
) -> None:
    # A paused video player stops reading but stays connected: the S3 connection (and
    # the relay's thread) must not be held for it forever.
    tap = TcpTap(moto_endpoint.url)
    await tap.start()
    s3 = s3_config(replace(moto_endpoint, url=tap.url), moto_bucket)
    config = Config(ServerConfig(send_timeout=0.5), StorageConfig(backend="s3", s3=s3))
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server(ssl=self_signed_context(tmp_path) if tls else None)
    client_tls: ssl.SSLContext | None = None
    if tls:
        client_tls = ssl.create_default_context()
        client_tls.check_hostname = False
        client_tls.verify_mode = ssl.CERT_NONE
    view = S3View(moto_endpoint, moto_bucket)
    data = object_bytes(BIG)
    await asyncio.to_thread(view.client.put_object, Bucket=moto_bucket, Key="big.bin", Body=data)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_tls)
        try:
            writer.write(b"GET /files/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            async with asyncio.timeout(TIMEOUT):
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
                await reader.readexactly(MiB)
                # Reading stops here. The server gives up on the client and on S3.
                await wait_until(
                    lambda: bool(gets_of(tap)) and not any(c.open for c in gets_of(tap)), TIMEOUT
                )
                received = MiB
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    while chunk := await reader.read(MiB):
                        received += len(chunk)
            assert received < BIG  # the connection ended before the body did
        finally:
            writer.transport.abort()
        relayed = [USER_AGENT.encode() in c.sent for c in gets_of(tap)]
        assert relayed == [not tls]
        # Still serving, the relay's slot and thread free again.
        url = f"{'https' if tls else 'http'}://127.0.0.1:{server.port}/files/big.bin"
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session,
            asyncio.timeout(TIMEOUT),
            session.get(url, headers={"Range": "bytes=-10"}) as response,
        ):
            assert response.status == 206 and await response.read() == data[-10:]
    finally:
        await server.close()
        await tap.close()


def gets_of(tap: TcpTap) -> list[Any]:
    return [c for c in tap.connections if re.search(rb"GET /[^ ]*/big\.bin HTTP/1\.1", c.sent)]
