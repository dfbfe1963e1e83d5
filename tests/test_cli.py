"""The command line: configuration errors and a real server process."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.conftest import ROOT, Backend, backend_settings, free_port, start_server, wait_for_port


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_bad_config_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[storage.s3]\npart_size = "1MiB"\n')
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "storage.s3.part_size" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_environment_override_names_the_setting() -> None:
    result = run_cli("serve", "--config", "config.toml", env={"STREAM_PROXY_SERVER_PORT": "eighty"})
    assert result.returncode == 2 and "server.port" in result.stderr


def test_missing_config_file() -> None:
    result = run_cli("serve", "--config", "/nonexistent.toml")
    assert result.returncode == 2 and "/nonexistent.toml" in result.stderr


def assert_one_line_start_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    # The log may say what was started; the error itself is one line, and no traceback.
    errors = [line for line in result.stderr.splitlines() if line.startswith("stream-proxy: ")]
    assert len(errors) == 1, result.stderr
    assert all(word in errors[0] for word in words), errors[0]
    assert "Traceback" not in result.stderr


def test_a_port_in_use_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"STREAM_PROXY_STORAGE_LOCAL_ROOT": str(tmp_path / "data")}
        result = run_cli("serve", "--config", "config.toml", "--port", str(port), env=env)
    assert_one_line_start_error(result, f"127.0.0.1:{port}", "in use", "server.port")


def test_a_host_that_does_not_resolve_is_one_line(tmp_path: Path) -> None:
    env = {"STREAM_PROXY_STORAGE_LOCAL_ROOT": str(tmp_path / "data")}
    result = run_cli("serve", "--config", "config.toml", "--host", "no-such-host.invalid", env=env)
    assert_one_line_start_error(result, "no-such-host.invalid", "server.host")


def test_a_storage_root_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    env = {"STREAM_PROXY_STORAGE_LOCAL_ROOT": str(blocker / "data")}
    result = run_cli("serve", "--config", "config.toml", "--port", str(free_port()), env=env)
    assert_one_line_start_error(result, "storage", "storage.local.root")


async def test_shutdown_mid_upload_leaves_nothing(backend: Backend) -> None:
    port = free_port()
    proc = await start_server(port, server_shutdown_timeout="1", **backend_settings(backend))
    await wait_for_port(port)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"PUT /files/unfinished.mp4 HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n"
        + os.urandom(20 * 1024 * 1024)
    )
    await writer.drain()
    await asyncio.sleep(1)
    proc.send_signal(signal.SIGTERM)
    output = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    writer.transport.abort()
    assert proc.returncode == 0, output
    assert backend.view.leftovers() == []
    assert backend.view.keys() == []


async def test_serve_uploads_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = await start_server(port, storage_local_root=str(tmp_path / "data"))
    try:
        data = os.urandom(3 * 1024 * 1024)
        async with aiohttp.ClientSession() as session, asyncio.timeout(30):
            while True:
                try:
                    async with session.put(f"http://127.0.0.1:{port}/files/x/y.bin", data=data) as r:
                        assert r.status == 201
                        assert (await r.json())["sha256"] == hashlib.sha256(data).hexdigest()
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.1)
        assert (tmp_path / "data" / "x" / "y.bin").read_bytes() == data
    finally:
        proc.send_signal(signal.SIGTERM)
        output = (await asyncio.wait_for(proc.communicate(), 40))[0].decode()
    assert proc.returncode == 0, output
    assert "Traceback" not in output


async def test_serve_bounds_connections_as_configured(tmp_path: Path) -> None:
    port = free_port()
    proc = await start_server(
        port,
        storage_local_root=str(tmp_path / "data"),
        server_max_connections="1",
        server_keepalive_timeout="1",
    )
    try:
        await wait_for_port(port)  # its probe connection is closed at once
        await asyncio.sleep(0.3)
        first_reader, first = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.3)
        # The second connection is refused: 503 at once.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(10):
            refused = await reader.read()
        writer.close()
        assert refused.startswith(b"HTTP/1.1 503 ") and b'"too_many_connections"' in refused
        # The first, silent, is closed after server.keepalive_timeout.
        async with asyncio.timeout(10):
            assert await first_reader.read() == b""
        first.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        output = (await asyncio.wait_for(proc.communicate(), 40))[0].decode()
    assert proc.returncode == 0, output
    assert "Traceback" not in output
