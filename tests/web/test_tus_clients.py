"""tus uploads from a real client (tuspy), across restarts and across server processes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import Backend, MiB, backend_settings, free_port, start_server, wait_for_port
from tests.web.test_tus import holding_patch, open_patch, status_of
from tests.web.tus_support import tuspy_upload

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = {**TUS, "Content-Type": "application/offset+octet-stream"}


def key_of(url: str) -> str:
    return f"{url.rsplit('/', 1)[1]}/movie.mp4"


def check_stored(backend: Backend, url: str, data: bytes) -> None:
    digest = hashlib.sha256(data).hexdigest()
    assert hashlib.sha256(backend.view.get(key_of(url))).hexdigest() == digest
    meta = backend.view.metadata(key_of(url))
    assert meta["sha256"] == digest
    assert meta["content_type"] == "video/mp4"


@pytest.mark.parametrize(
    ("size", "chunk"),
    [
        (0, MiB),
        (1, MiB),
        (100_003, 7_777),
        (3 * MiB + 1, MiB),
        (11 * MiB + 17, 5 * MiB + 3),
        (13 * MiB, 8 * MiB),
    ],
)
async def test_tuspy_uploads(backend: Backend, proxy_client: Any, size: int, chunk: int) -> None:
    client = await proxy_client(backend.config)
    data = os.urandom(size)
    endpoint = f"http://{client.host}:{client.port}/uploads/"
    url = await asyncio.to_thread(tuspy_upload, endpoint, data, chunk, upload_checksum=True)
    check_stored(backend, url, data)
    assert backend.view.keys() == [key_of(url)]


@pytest.mark.real_s3
async def test_tuspy_uploads_to_real_s3(real_backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(real_backend.config)
    data = os.urandom(17 * MiB + 9)
    endpoint = f"http://{client.host}:{client.port}/uploads/"
    url = await asyncio.to_thread(tuspy_upload, endpoint, data, 5 * MiB + 3, upload_checksum=True)
    check_stored(real_backend, url, data)


class Server:
    """A real ``stream-proxy serve`` process on a backend."""

    def __init__(self, backend: Backend, **settings: str) -> None:
        self.port = free_port()
        self.settings = {**backend_settings(backend), **settings}
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await start_server(self.port, **self.settings)
        await wait_for_port(self.port)

    async def stop(self, sig: int = signal.SIGTERM) -> str:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        output = (await asyncio.wait_for(self.proc.communicate(), 60))[0].decode()
        self.proc = None
        return output


@pytest.fixture
async def servers(backend: Backend) -> AsyncIterator[list[Server]]:
    started = [Server(backend, tus_lock_lease="2"), Server(backend, tus_lock_lease="2")]
    await asyncio.gather(*(s.start() for s in started))
    yield started
    for server in started:
        if server.proc is not None:
            output = await server.stop()
            assert "Traceback" not in output, output


async def cut_off_patch(server: Server, path: str, data: bytes, offset: int, sent: int) -> None:
    """Start a PATCH of ``data[offset:]`` and drop the connection after ``sent`` bytes."""
    piece = data[offset : offset + sent]
    _, writer = await open_patch("127.0.0.1", server.port, path, offset, len(data) - offset, piece)
    await asyncio.sleep(1.0)  # the server reads it all (or is killed meanwhile)
    writer.transport.abort()


async def head_offset(session: aiohttp.ClientSession, url: str) -> int:
    async with session.head(url, headers=TUS) as response:
        assert response.status == 200
        return int(response.headers["Upload-Offset"])


@pytest.mark.slow
@pytest.mark.alone
@pytest.mark.parametrize("crash", [False, True], ids=["restart", "crash"])
async def test_resume_after_server_restart(backend: Backend, servers: list[Server], crash: bool) -> None:
    server = servers[0]
    data = os.urandom(14 * MiB + 5)
    async with aiohttp.ClientSession() as session:
        headers = {**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": "filename bW92aWUubXA0"}
        async with session.post(f"{server.url}/uploads/", headers=headers) as response:
            assert response.status == 201
            path = response.headers["Location"]
        sent = 6 * MiB + 100
        if crash:
            # The process dies mid-chunk: what it had not saved is lost, never half-saved.
            task = asyncio.create_task(cut_off_patch(server, path, data, 0, sent))
            await asyncio.sleep(0.7)
            await server.stop(signal.SIGKILL)
            await task
        else:
            await cut_off_patch(server, path, data, 0, sent)
            async with asyncio.timeout(20):
                while await head_offset(session, server.url + path) != sent:
                    await asyncio.sleep(0.1)
            await server.stop()
        await server.start()
        offset = await head_offset(session, server.url + path)
    # A chunk cut off by the client is kept; one cut off by a crash was never saved.
    assert offset == (0 if crash else sent)
    # tuspy resumes from the offset HEAD reports; retries ride out a lock left by the crash.
    url = server.url + path
    await asyncio.to_thread(tuspy_upload, url, data, 4 * MiB, url=url, retries=10, retry_delay=1)
    check_stored(backend, url, data)


@pytest.mark.slow
@pytest.mark.alone
async def test_chunks_alternate_between_two_processes(backend: Backend, servers: list[Server]) -> None:
    data = os.urandom(19 * MiB + 3)
    chunk = 5 * MiB + 3
    async with aiohttp.ClientSession() as session:
        headers = {**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": "filename bW92aWUubXA0"}
        async with session.post(f"{servers[0].url}/uploads/", headers=headers) as response:
            path = response.headers["Location"]
        offset, turn = 0, 0
        while offset < len(data):
            server = servers[turn % 2]
            assert await head_offset(session, server.url + path) == offset
            patch_headers = {**OCTET, "Upload-Offset": str(offset)}
            body = data[offset : offset + chunk]
            async with session.patch(server.url + path, data=body, headers=patch_headers) as response:
                assert response.status == 204, await response.text()
                offset = int(response.headers["Upload-Offset"])
            turn += 1
    check_stored(backend, servers[0].url + path, data)
    assert backend.view.keys() == [key_of(path)]


@pytest.mark.slow
@pytest.mark.alone
async def test_concurrent_patches_across_processes(backend: Backend, servers: list[Server]) -> None:
    data = os.urandom(2 * MiB)
    async with aiohttp.ClientSession() as session:
        headers = {**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": "filename bW92aWUubXA0"}
        async with session.post(f"{servers[0].url}/uploads/", headers=headers) as response:
            path = response.headers["Location"]

        async def probe() -> int:
            wrong = {**OCTET, "Upload-Offset": "99"}
            async with session.patch(servers[1].url + path, data=b"z", headers=wrong) as response:
                return response.status

        reader, writer = await holding_patch("127.0.0.1", servers[0].port, path, len(data), data[:MiB], probe)
        whole = {**OCTET, "Upload-Offset": "0"}
        async with session.patch(servers[1].url + path, data=data, headers=whole) as response:
            assert response.status == 423
        writer.write(data[MiB:])
        assert await status_of(reader) == 204
        writer.close()
    check_stored(backend, servers[1].url + path, data)
