"""Several worker processes (proxy/metrics/processes.py): two real ``stream-proxy
serve`` processes sharing one metrics directory, as ``serve --workers 2`` starts
them; either one's /metrics answers with the sums of both, and a process that ended
stops counting in the gauges once its parent says so, while its counts stay."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import aiohttp

from proxy.metrics import processes
from tests.conftest import free_port, start_server, wait_for_port
from tests.metrics.support import Scrape, scrape

PUTS = ("stream_proxy_http_requests_total", {"method": "PUT", "route": "/files/{key}", "status": "201"})


def test_one_worker_keeps_its_metrics_in_memory() -> None:
    before = os.environ.get(processes.ENVIRONMENT)
    with processes.prepared(1) as directory:
        assert directory is None
        assert os.environ.get(processes.ENVIRONMENT) == before
    processes.process_ended(12345)  # nothing to do, and no failure


def test_several_workers_get_a_private_directory_removed_after() -> None:
    before = os.environ.get(processes.ENVIRONMENT)
    with processes.prepared(3) as directory:
        assert directory is not None and os.path.isdir(directory)
        assert os.environ[processes.ENVIRONMENT] == directory
        assert os.stat(directory).st_mode & 0o077 == 0  # the workers' user's alone
    assert not os.path.exists(directory)
    assert os.environ.get(processes.ENVIRONMENT) == before


async def _scrape_until(url: str, name: str, value: float) -> Scrape:
    async with asyncio.timeout(20):
        while (found := await scrape(url)).value(name) != value:
            await asyncio.sleep(0.1)
    return found


async def test_two_processes_answer_with_the_sums(tmp_path: Path) -> None:
    with processes.prepared(2):
        ports = [free_port(), free_port()]
        servers = [await start_server(port, storage_local_root=str(tmp_path / "data")) for port in ports]
        held: socket.socket | None = None
        try:
            for port in ports:
                await wait_for_port(port)
            urls = [f"http://127.0.0.1:{port}" for port in ports]
            async with aiohttp.ClientSession() as session:
                for i, url in enumerate(urls):
                    for j in range(i + 1):  # one PUT on the first, two on the second
                        async with session.put(f"{url}/files/p{i}-{j}.bin", data=b"z" * 1000) as answer:
                            assert answer.status == 201
            # An upload held open on the second process, seen from the first.
            held = socket.create_connection(("127.0.0.1", ports[1]))
            held.sendall(b"PUT /files/held.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf")
            first = await _scrape_until(urls[0], "stream_proxy_uploads_in_flight", 1)
            second = await scrape(urls[1])
            for found in (first, second):
                assert found.value(PUTS[0], **PUTS[1]) == 3
                assert found.value("stream_proxy_http_received_bytes_total", route="/files/{key}") == 3000
            # The second dies with its upload in flight: its gauge stays until the parent says it ended.
            servers[1].send_signal(signal.SIGKILL)
            await servers[1].wait()
            assert (await scrape(urls[0])).value("stream_proxy_uploads_in_flight") == 1
            processes.process_ended(servers[1].pid)
            after = await scrape(urls[0])
            assert after.value("stream_proxy_uploads_in_flight") == 0
            assert after.value(PUTS[0], **PUTS[1]) == 3  # its counts stay in the sums
        finally:
            if held is not None:
                held.close()
            for server in servers:
                if server.returncode is None:
                    server.terminate()
                    await server.wait()
