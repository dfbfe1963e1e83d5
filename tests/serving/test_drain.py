"""SIGTERM to a real `stream-proxy serve` (proxy/serving/process.py): /readyz turns
503 at once, new connections are still served for server.drain_delay, answered with
`Connection: close`; then the listener closes; requests in flight finish within
server.shutdown_timeout; an upload still running after it is aborted and leaves
nothing, except that a tus PATCH keeps what it stored and the upload resumes on the
next server; the exit status is 0."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os

import pytest

from tests.conftest import Backend, backend_settings, free_port, start_server, wait_for_port
from tests.serving.support import Connection, MiB, request, trickle_until_cut

DRAIN_DELAY = 3.0
SHUTDOWN_TIMEOUT = 6.0
TUS = {"Tus-Resumable": "1.0.0"}


async def _create_tus_upload(port: int, length: int) -> str:
    name = base64.b64encode(b"resumed.bin").decode()
    created = await request(port, "POST", "/uploads/", b"", **TUS, **{"Upload-Length": str(length)},
                            **{"Upload-Metadata": f"filename {name}"})  # fmt: skip
    assert created.status == 201, created.body
    return created.headers["location"].rsplit("/", 1)[1]


def _patch_head(offset: int, length: int) -> dict[str, str]:
    return {
        **TUS,
        "Content-Type": "application/offset+octet-stream",
        "Upload-Offset": str(offset),
        "Content-Length": str(length),
    }


@pytest.mark.slow
@pytest.mark.alone
async def test_sigterm_drains_finishes_in_flight_and_aborts_the_rest(backend: Backend) -> None:
    port = free_port()
    settings = backend_settings(backend)
    proc = await start_server(
        port, server_drain_delay=str(DRAIN_DELAY), server_shutdown_timeout=str(SHUTDOWN_TIMEOUT), **settings
    )
    output = b""
    try:
        await wait_for_port(port)
        stored = os.urandom(16 * MiB)
        assert (await request(port, "PUT", "/files/stored.bin", stored)).status == 201
        tus_data = os.urandom(20 * MiB)
        tus_id = await _create_tus_upload(port, len(tus_data))

        # In flight at SIGTERM: an upload that ends about 4 s after it (after the
        # listener has closed, within the shutdown timeout), one that never ends, a
        # tus PATCH that never ends, and a download read slowly.
        finishing_data = os.urandom(10 * MiB)
        finishing = await Connection.open(port)
        await finishing.send_head("PUT", "/files/finishing.bin", {"Content-Length": str(len(finishing_data))})
        finishing_sent = asyncio.create_task(finishing.send_body(finishing_data, rate=2 * MiB))
        stalled = await Connection.open(port)
        await stalled.send_head("PUT", "/files/stalled.bin", {"Content-Length": str(64 * MiB)})
        stalled_sent = asyncio.create_task(trickle_until_cut(stalled, os.urandom(64 * MiB), rate=MiB))
        patch = await Connection.open(port)
        await patch.send_head("PATCH", f"/uploads/{tus_id}", _patch_head(0, len(tus_data)))
        await patch.send_body(tus_data[: 7 * MiB])
        patch_sent = asyncio.create_task(trickle_until_cut(patch, tus_data[7 * MiB :], rate=MiB))
        download = await Connection.open(port)
        await download.send_head("GET", "/files/stored.bin")
        downloaded = asyncio.create_task(download.answer(read_rate=3 * MiB))
        await asyncio.sleep(1)

        assert (await request(port, "GET", "/readyz")).status == 200
        proc.send_signal(15)
        await asyncio.sleep(0.5)
        # Draining: not ready, but a new connection is served, and told not to stay.
        assert (await request(port, "GET", "/readyz")).status == 503
        during = await request(port, "PUT", "/files/during-drain.bin", b"drained")
        assert during.status == 201 and during.headers.get("connection") == "close"
        got = await request(port, "GET", "/files/stored.bin")
        assert got.status == 200 and got.body == stored and got.headers.get("connection") == "close"
        await asyncio.sleep(DRAIN_DELAY + 0.5)
        with pytest.raises(ConnectionRefusedError):
            await request(port, "GET", "/files/stored.bin")

        await finishing_sent
        answer = await asyncio.wait_for(finishing.answer(), SHUTDOWN_TIMEOUT)
        assert answer.status == 201
        assert answer.json()["sha256"] == hashlib.sha256(finishing_data).hexdigest()
        assert (await downloaded).body == stored
        await asyncio.wait_for(asyncio.gather(stalled_sent, patch_sent), SHUTDOWN_TIMEOUT * 3)
        assert stalled.sent < 64 * MiB and patch.sent < len(tus_data)
        output = (await asyncio.wait_for(proc.communicate(), 60))[0]
        assert proc.returncode == 0, output.decode()
        assert b"Traceback" not in output
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    # What was finished is stored whole; of the rest only the tus upload is left.
    assert backend.view.keys() == ["during-drain.bin", "finishing.bin", "stored.bin"]
    assert backend.view.get("finishing.bin") == finishing_data
    # (On S3 the tus upload's own multipart upload is listed too.)
    left = backend.view.leftovers()
    assert f"upload {tus_id}" in left
    assert all(x == f"upload {tus_id}" or x.startswith(f".stream-proxy/uploads/{tus_id}/") for x in left)
    await _resume(port, tus_id, tus_data, settings, backend)


async def _resume(port: int, tus_id: str, data: bytes, settings: dict[str, str], backend: Backend) -> None:
    """The next server goes on with the tus upload from what the cut PATCH stored."""
    proc = await start_server(port, **settings)
    try:
        await wait_for_port(port)
        head = await request(port, "HEAD", f"/uploads/{tus_id}", b"", **TUS)
        assert head.status == 200
        offset = int(head.headers["upload-offset"])
        assert 7 * MiB <= offset < len(data)
        rest = data[offset:]
        done = await request(port, "PATCH", f"/uploads/{tus_id}", rest, **_patch_head(offset, len(rest)))
        assert done.status == 204, done.body
        key = done.headers["object-location"].removeprefix("/files/")
        assert backend.view.get(key) == data
    finally:
        proc.send_signal(15)
        output = (await asyncio.wait_for(proc.communicate(), 60))[0]
    assert proc.returncode == 0, output.decode()


async def test_sigint_stops_without_the_drain_delay(tmp_path: object) -> None:
    port = free_port()
    proc = await start_server(port, storage_local_root=f"{tmp_path}/data", server_drain_delay="60")
    try:
        await wait_for_port(port)
        proc.send_signal(2)
        output = (await asyncio.wait_for(proc.communicate(), 20))[0]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, output.decode()
    assert b"draining" not in output and b"Traceback" not in output
