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


def test_a_public_address_without_auth_is_refused(tmp_path: Path) -> None:
    env = {"STREAM_PROXY_STORAGE_LOCAL_ROOT": str(tmp_path / "data")}
    for host in ("0.0.0.0", "::", "192.0.2.1"):
        result = run_cli(
            "serve", "--config", "config.toml", "--host", host, "--port", str(free_port()), env=env
        )
        assert_one_line_start_error(result, host, "[auth]", "token new", "auth.open")
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_token_and_signing_key_commands_refuse_bad_input() -> None:
    assert_one_line_start_error(run_cli("token", "new", "a b", "--grant", "read:"), "token name")
    assert_one_line_start_error(run_cli("token", "new", "a", "--grant", "admin:"), "--grant", "admin")
    assert_one_line_start_error(run_cli("signing-key", "new", "k/1"), "signing key id")
    assert run_cli("token", "new", "a").returncode == 2  # --grant is required


async def _serve_on_all_addresses(config: Path, port: int, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *[
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--config",
            str(config),
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def test_serves_on_all_addresses_with_the_tokens_and_keys_the_commands_print(tmp_path: Path) -> None:
    made = run_cli("token", "new", "uploader", "--grant", "read,list:", "--grant", "write:videos/")
    assert made.returncode == 0, made.stderr
    secret, toml = made.stdout.split("\n", 1)
    assert secret not in toml and hashlib.sha256(secret.encode()).hexdigest() in toml
    key = run_cli("signing-key", "new", "k1")
    assert key.returncode == 0, key.stderr
    config = tmp_path / "c.toml"
    config.write_text(f'[storage.local]\nroot = "{tmp_path / "data"}"\n[auth]\n{toml}\n{key.stdout}')
    port = free_port()
    proc = await _serve_on_all_addresses(config, port)
    try:
        await wait_for_port(port)
        base = f"http://127.0.0.1:{port}"
        signed = run_cli(
            "sign", "--config", str(config), "--key-id", "k1", "--action", "read",
            "--key", "videos/a b.mp4", "--expires", "60", "--base", base,
        )  # fmt: skip
        assert signed.returncode == 0, signed.stderr
        url = signed.stdout.strip()
        assert url.startswith(f"{base}/s/") and url.endswith("/files/videos/a%20b.mp4")
        async with aiohttp.ClientSession() as session:
            async with session.put(f"{base}/files/videos/a b.mp4", data=b"abc") as r:
                assert r.status == 401
            auth = {"Authorization": f"Bearer {secret}"}
            async with session.put(f"{base}/files/videos/a b.mp4", data=b"abc", headers=auth) as r:
                assert r.status == 201
            async with session.put(f"{base}/files/other.mp4", data=b"abc", headers=auth) as r:
                assert r.status == 403
            async with session.get(url) as r:
                assert r.status == 200 and await r.read() == b"abc"
    finally:
        proc.send_signal(signal.SIGTERM)
        output = (await asyncio.wait_for(proc.communicate(), 40))[0].decode()
    assert proc.returncode == 0, output
    assert "Traceback" not in output and secret not in output
    # The access log names the token, not its secret, and leaves the signature out.
    assert "token uploader" in output and "key k1" in output and url.split("/")[4] not in output


async def test_auth_open_serves_on_all_addresses_on_purpose(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[storage.local]\nroot = "{tmp_path / "data"}"\n[auth]\nopen = true\n')
    port = free_port()
    proc = await _serve_on_all_addresses(config, port)
    try:
        await wait_for_port(port)
        async with (
            aiohttp.ClientSession() as session,
            session.put(f"http://127.0.0.1:{port}/files/x", data=b"1") as r,
        ):
            assert r.status == 201
    finally:
        proc.send_signal(signal.SIGTERM)
        output = (await asyncio.wait_for(proc.communicate(), 40))[0].decode()
    assert proc.returncode == 0, output


def test_sign_refuses_what_it_cannot_sign(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[auth.signing_keys.k1]\nsecret = "0123456789abcdef0123456789abcdef"\n')
    sign = ["sign", "--config", str(config), "--expires", "60"]
    cases = [
        (["--key-id", "k2", "--action", "read", "--key", "a"], ["--key-id", "k2"]),
        (["--key-id", "k1", "--action", "read", "--key", "../a"], ["segment"]),
        (["--key-id", "k1", "--action", "read", "--key", "a", "--max-size", "1"], ["--action write"]),
        (["--key-id", "k1", "--action", "write", "--key", "a", "--content-type", "no"], ["media type"]),
    ]
    for args, words in cases:
        assert_one_line_start_error(run_cli(*sign, *args), *words)
    made = run_cli(
        *sign, "--key-id", "k1", "--action", "write", "--prefix", "up/", "--max-size", "1MiB", "--query"
    )
    assert made.returncode == 0 and made.stdout.startswith("http://127.0.0.1:8080/files/up/?sig=")
