"""/livez and /readyz (proxy/web/health.py): live while the process answers; ready
while not draining and the storage is reachable, looked at once a second however
many probes come; 503 with a short reason that names no endpoint, bucket or path;
no credentials needed when access control is on."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from moto.server import ThreadedMotoServer

from proxy.config import Config, LocalConfig, ServerConfig, StorageConfig
from proxy.metrics.definitions import REGISTRY
from proxy.storage.readiness import CACHE_SECONDS
from proxy.web.settings import LIFECYCLE
from tests.conftest import S3Endpoint, free_port, make_bucket, s3_config
from tests.metrics.support import serving
from tests.web.auth_support import auth_config


def local_config(root: Path) -> Config:
    return Config(ServerConfig(), StorageConfig(backend="local", local=LocalConfig(root=root)))


@contextlib.asynccontextmanager
async def probing(config: Config) -> AsyncIterator[tuple[TestServer, aiohttp.ClientSession]]:
    async with serving(config) as server, aiohttp.ClientSession(str(server.make_url(""))) as session:
        yield server, session


async def probe(session: aiohttp.ClientSession, path: str) -> tuple[int, dict[str, Any], str]:
    async with session.get(path) as answer:
        text = await answer.text()
        assert answer.headers["Content-Type"].startswith("application/json")
        assert answer.headers["Cache-Control"] == "no-store"
        return answer.status, await answer.json(), text


async def test_live_and_ready(tmp_path: Path) -> None:
    async with probing(local_config(tmp_path / "data")) as (_server, session):
        assert (await probe(session, "/livez"))[:2] == (200, {"status": "ok"})
        assert (await probe(session, "/readyz"))[:2] == (200, {"status": "ok"})


async def test_not_ready_when_the_local_root_is_gone(tmp_path: Path) -> None:
    root = tmp_path / "data"
    async with probing(local_config(root)) as (_server, session):
        assert (await probe(session, "/readyz"))[0] == 200
        shutil.rmtree(root)
        await asyncio.sleep(CACHE_SECONDS + 0.1)
        status, body, text = await probe(session, "/readyz")
        assert (status, body) == (503, {"status": "storage_unreachable"})
        assert str(tmp_path) not in text and "data" not in text
        assert (await probe(session, "/livez"))[0] == 200  # alive all the same
        root.mkdir()
        await asyncio.sleep(CACHE_SECONDS + 0.1)
        assert (await probe(session, "/readyz"))[0] == 200


async def test_not_ready_while_draining(tmp_path: Path) -> None:
    async with probing(local_config(tmp_path / "data")) as (server, session):
        assert (await probe(session, "/readyz"))[0] == 200
        server.app[LIFECYCLE].draining = True  # as SIGTERM sets it; at once, whatever was cached
        assert (await probe(session, "/readyz"))[:2] == (503, {"status": "draining"})
        assert (await probe(session, "/livez"))[0] == 200


async def test_probes_need_no_credentials(tmp_path: Path) -> None:
    async with probing(auth_config(local_config(tmp_path / "data"))) as (_server, session):
        assert (await probe(session, "/livez"))[0] == 200
        assert (await probe(session, "/readyz"))[0] == 200
        async with session.get("/metrics") as answer:
            assert answer.status == 401  # unlike the metrics


@pytest.fixture
def own_moto() -> Iterator[tuple[ThreadedMotoServer, S3Endpoint]]:
    """A moto server of this test's own, which it may stop."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield server, S3Endpoint(f"http://127.0.0.1:{port}", "testaccesskey", "testsecretkey")
    finally:
        server.stop()


def head_buckets() -> float:
    return REGISTRY.get_sample_value("stream_proxy_s3_requests_total", {"operation": "HeadBucket"}) or 0.0


async def test_s3_probes_share_one_head_bucket_a_second(
    own_moto: tuple[ThreadedMotoServer, S3Endpoint],
) -> None:
    moto, endpoint = own_moto
    buckets = make_bucket(endpoint)
    bucket = next(buckets)
    s3 = s3_config(endpoint, bucket, max_attempts=1, connect_timeout=1)
    config = Config(ServerConfig(), StorageConfig(backend="s3", s3=s3))
    async with probing(config) as (_server, session):
        before = head_buckets()
        answers = await asyncio.gather(*(probe(session, "/readyz") for _ in range(20)))
        assert {status for status, _, _ in answers} == {200}
        assert head_buckets() - before == 1  # twenty probes at once: one look
        assert (await probe(session, "/readyz"))[0] == 200
        assert head_buckets() - before == 1  # within the second: the same look
        await asyncio.sleep(CACHE_SECONDS + 0.1)
        assert (await probe(session, "/readyz"))[0] == 200
        assert head_buckets() - before == 2
        moto.stop()
        await asyncio.sleep(CACHE_SECONDS + 0.1)
        answers = await asyncio.gather(*(probe(session, "/readyz") for _ in range(5)))
        for status, body, text in answers:
            assert (status, body) == (503, {"status": "storage_unreachable"})
            assert bucket not in text and "127.0.0.1" not in text
        assert head_buckets() - before == 3
        assert (await probe(session, "/livez"))[0] == 200
        moto.start()  # for the fixture's stop, and the bucket's removal
    for _ in buckets:
        pass
