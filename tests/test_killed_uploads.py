"""A server SIGKILLed mid-upload, then restarted: nothing of the killed upload is
left (no temporary file, no multipart upload, no record of it), and the upload another
live server is receiving on the same root or bucket all along is never touched.

Real processes (``stream-proxy serve``), on the local backend, moto and Ceph RGW."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.storage import layout
from tests.conftest import (
    Backend,
    LocalView,
    MiB,
    S3View,
    backend_for,
    backend_settings,
    free_port,
    start_server,
    wait_for_port,
    wait_until,
)

DECLARED, SENT = 100 * MiB, 20 * MiB
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture(params=["local", "moto", pytest.param("rgw", marks=pytest.mark.real_s3)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return backend_for("local", tmp_path, None, None)
    moto = request.param == "moto"
    endpoint = request.getfixturevalue("moto_endpoint" if moto else "real_s3")
    return backend_for(
        "s3", tmp_path, endpoint, request.getfixturevalue("moto_bucket" if moto else "real_bucket")
    )


class Servers:
    """``stream-proxy serve`` processes on one storage, stopped at the end."""

    def __init__(self, backend: Backend) -> None:
        self._settings = {**backend_settings(backend), "server_shutdown_timeout": "1"}
        self.running: list[asyncio.subprocess.Process] = []

    async def start(self) -> tuple[asyncio.subprocess.Process, int]:
        port = free_port()
        proc = await start_server(port, **self._settings)
        self.running.append(proc)
        await wait_for_port(port)
        return proc, port

    async def stop_all(self) -> list[str]:
        """SIGTERM every server still running; their output."""
        outputs = []
        for proc in self.running:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            outputs.append((await asyncio.wait_for(proc.communicate(), 60))[0].decode())
        return outputs


@pytest.fixture
async def servers(backend: Backend) -> AsyncIterator[Servers]:
    servers = Servers(backend)
    try:
        yield servers
    finally:
        for proc in servers.running:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def start_put(port: int, key: str, declared: int, first: bytes) -> Connection:
    """A PUT that announces ``declared`` bytes and has sent ``first`` so far."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"PUT /files/{key} HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode() + first)
    await writer.drain()
    return reader, writer


async def finish_put(connection: Connection, rest: bytes) -> tuple[int, dict[str, object]]:
    reader, writer = connection
    writer.write(rest)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 60)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def in_progress(backend: Backend) -> list[str]:
    """Uploads under way: temporary files (by path) or multipart uploads (by key)."""
    view = backend.view
    if isinstance(view, LocalView):
        return sorted(str(p) for p in (view.root / layout.TMP).rglob("*.part"))
    assert isinstance(view, S3View)
    uploads = view.client.list_multipart_uploads(Bucket=view.bucket).get("Uploads", [])
    return sorted(u["Key"] for u in uploads)


def own_files(backend: Backend) -> list[str]:
    """The servers' own files besides uploads: process directories, or writer records."""
    view = backend.view
    if isinstance(view, LocalView):
        return sorted(p.name for p in (view.root / layout.TMP).iterdir())
    assert isinstance(view, S3View)
    return [k for k in view.all_keys() if k.startswith(layout.WRITERS)]


async def appears(backend: Backend, known: list[str]) -> str:
    """Wait for one more upload under way than ``known``; returns it."""
    found: list[str] = []

    def more() -> bool:
        found[:] = [item for item in in_progress(backend) if item not in known]
        return bool(found)

    await wait_until(more, 60)
    return found[0]


async def test_sigkill_mid_upload_then_restart_leaves_nothing(backend: Backend, servers: Servers) -> None:
    killed, killed_port = await servers.start()
    # The killed server's upload: 20 MiB of a declared 100 MiB.
    cut = await start_put(killed_port, "killed/clip.mp4", DECLARED, os.urandom(SENT))
    its_upload = await appears(backend, [])
    # Its process directory; or its heartbeat and the record of its upload.
    await wait_until(lambda: len(own_files(backend)) == (1 if backend.name == "local" else 2), 30)
    its_files = own_files(backend)

    # Another server, alive all along: 20 MiB of 40 MiB, the rest after the restart's sweep.
    _, live_port = await servers.start()
    data = os.urandom(2 * SENT)
    live = await start_put(live_port, "kept/live.bin", len(data), data[:SENT])
    live_upload = await appears(backend, [its_upload])

    killed.kill()
    await killed.wait()
    cut[1].close()
    # Nothing else removes it: the killed process could not clean up after itself.
    await asyncio.sleep(1)
    assert in_progress(backend) == sorted([its_upload, live_upload])

    restarted, _ = await servers.start()

    def only_the_live_upload_is_left() -> bool:
        return in_progress(backend) == [live_upload] and not set(its_files) & set(own_files(backend))

    await wait_until(only_the_live_upload_is_left, 30)
    if backend.name != "local":  # the live server's record of its upload stays
        assert any(f"/{layout.WRITER_UPLOAD}" in key for key in own_files(backend))

    status, answer = await finish_put(live, data[SENT:])
    assert status == 201, answer
    assert answer["sha256"] == hashlib.sha256(data).hexdigest()
    assert backend.view.get("kept/live.bin") == data

    outputs = await servers.stop_all()
    assert restarted.returncode == 0, outputs
    assert backend.view.keys() == ["kept/live.bin"]
    assert backend.view.leftovers() == []
    assert own_files(backend) == [], outputs  # clean stops leave no directory or record
