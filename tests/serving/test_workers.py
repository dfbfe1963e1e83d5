"""`stream-proxy serve --workers N` (proxy/serving/workers.py): N real processes on one
port, each answering; one killed is replaced while the port keeps answering; SIGTERM
to the parent drains them all. Which process answered is read from /proc (which one
holds the server end of the connection), not from anything in the answer."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config
from tests.conftest import free_port, start_server, wait_for_port, wait_until
from tests.serving.support import Connection, MiB, alive, children, exited, owner_of, request, serving_pids
from tests.test_cli import assert_one_line_start_error, run_cli


async def _workers_serving(port: int, parent: int, count: int) -> list[int]:
    """The parent's children, once ``count`` of them listen on ``port``."""
    await wait_until(lambda: len(serving_pids(port, children(parent))) == count, 30)
    return serving_pids(port, children(parent))


@pytest.mark.slow
@pytest.mark.alone
async def test_two_workers_share_the_port_are_replaced_and_drain_together(tmp_path: Path) -> None:
    port = free_port()
    proc = await start_server(
        port, storage_local_root=str(tmp_path / "data"), server_workers="2", server_drain_delay="1"
    )
    try:
        await wait_for_port(port)
        workers = await _workers_serving(port, proc.pid, 2)
        assert proc.pid not in workers

        # Requests land on both: each connection's server end is held by a worker.
        data = os.urandom(MiB)
        assert (await request(port, "PUT", "/files/shared.bin", data)).status == 201
        connections = [await Connection.open(port) for _ in range(16)]
        for connection in connections:
            await connection.send_head("GET", "/files/shared.bin")
            answer = await connection.answer()
            assert answer.status == 200 and answer.body == data
        owners = {owner_of(port, c.local_port(), workers) for c in connections}
        assert owners == set(workers)
        for connection in connections:
            connection.close()

        # A worker killed outright is replaced; the port answers meanwhile. (Connections
        # that reached the killed one's queue in the instant it died are reset: the
        # price of SO_REUSEPORT, workers.py.)
        os.kill(workers[0], signal.SIGKILL)
        await wait_until(lambda: exited(workers[0]), 10)
        for _ in range(20):
            answer = await request(port, "GET", "/files/shared.bin")
            assert answer.body == data
        replaced = await _workers_serving(port, proc.pid, 2)
        assert workers[0] not in replaced and workers[1] in replaced

        # SIGTERM to the parent: an upload in flight on each worker finishes, then all exit 0.
        uploads: list[tuple[Connection, bytes]] = []
        while {owner_of(port, c.local_port(), replaced) for c, _ in uploads} != set(replaced):
            assert len(uploads) < 16, "no connection reached one of the workers"
            connection = await Connection.open(port)
            body = os.urandom(4 * MiB)
            await connection.send_head(
                "PUT", f"/files/up{len(uploads)}.bin", {"Content-Length": str(len(body))}
            )
            await connection.send_body(body[:MiB])
            uploads.append((connection, body))
        proc.send_signal(signal.SIGTERM)
        for connection, body in uploads:
            await connection.send_body(body[MiB:], rate=MiB)
            answer = await asyncio.wait_for(connection.answer(), 30)
            assert answer.status == 201 and answer.json()["sha256"] == hashlib.sha256(body).hexdigest()
        output = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, output
    assert "Traceback" not in output
    assert output.count("draining") == 2 and "all 2 workers stopped" in output
    assert not any(alive(pid) for pid in replaced)


def test_workers_refuse_what_they_cannot_serve(tmp_path: Path) -> None:
    env = {"STREAM_PROXY_STORAGE_LOCAL_ROOT": str(tmp_path / "data")}
    refused = run_cli("serve", "--config", "config.toml", "--workers", "0", env=env)
    assert_one_line_start_error(refused, "--workers")
    for setting, value in (("workers", "0"), ("drain_delay", "-1")):
        with pytest.raises(ConfigError, match=f"server.{setting}"):
            load_config(None, {f"STREAM_PROXY_SERVER_{setting.upper()}": value})
    # Off loopback without [auth]: refused by the parent, before any worker starts.
    public = run_cli("serve", "--config", "config.toml", "--workers", "2", "--host", "0.0.0.0", env=env)
    assert_one_line_start_error(public, "0.0.0.0", "[auth]")
    assert "worker" not in public.stderr
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = run_cli("serve", "--config", "config.toml", "--workers", "2", "--port", str(port), env=env)
    # Said once, by the parent, not joined by SO_REUSEPORT nor said by each worker.
    assert_one_line_start_error(in_use, f"127.0.0.1:{port}", "in use")
    assert "worker" not in in_use.stderr


async def test_a_worker_that_cannot_start_stops_them_all(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    port = free_port()
    proc = await start_server(port, storage_local_root=str(blocker / "data"), server_workers="2")
    output = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    assert proc.returncode == 2, output
    assert "storage.local.root" in output and "Traceback" not in output
