"""S3 calls as /metrics counts them (proxy/metrics/s3.py), on moto: by the operation
botocore names, with their durations and failures; how downloads read (relay or
botocore); and the memory budget of uploads with its configured limit."""

from __future__ import annotations

import aiohttp
import pytest

from proxy.config import Config, ServerConfig, StorageConfig, VideoConfig
from proxy.metrics.definitions import REGISTRY
from proxy.metrics.s3 import MeasuredClient
from proxy.storage.base import UpstreamError
from proxy.storage.s3.objects import S3Storage
from proxy.web.settings import STORAGE
from tests.conftest import MiB, S3Endpoint, S3View, s3_config, wait_until
from tests.metrics.support import delta, scrape, serving

S3_CALLS = "stream_proxy_s3_requests_total"
S3_ERRORS = "stream_proxy_s3_errors_total"


def moto_config(endpoint: S3Endpoint, bucket: str, **s3: object) -> Config:
    storage = StorageConfig(backend="s3", s3=s3_config(endpoint, bucket, **s3))
    # No video jobs: their job loop's and upload hooks' calls are not what is counted here.
    return Config(ServerConfig(), storage, video=VideoConfig(enabled=False))


async def test_calls_counted_by_operation(moto_endpoint: S3Endpoint, moto_bucket: str) -> None:
    view = S3View(moto_endpoint, moto_bucket)
    async with serving(moto_config(moto_endpoint, moto_bucket)) as server:
        url = str(server.make_url("")).rstrip("/")
        # The process's own calls at start (its heartbeat, the sweeps) come first; the
        # next are 30 s and 5 min away.
        await wait_until(lambda: any(key.endswith("/alive") for key in view.all_keys()))
        before = await scrape(url)
        async with aiohttp.ClientSession(url) as session:
            async with session.put("/files/a.bin", data=b"x" * 1000) as answer:
                assert answer.status == 201
            async with session.get("/files/a.bin") as answer:
                assert answer.status == 200 and await answer.read() == b"x" * 1000
            async with session.get("/files/gone.bin") as answer:
                assert answer.status == 404
            async with session.delete("/files/a.bin") as answer:
                assert answer.status == 204
        after = await scrape(url)
    # PUT: one PutObject. GET: HeadObject (then the relay's own GetObject). A missing
    # object: a HeadObject that failed with 404. DELETE: HeadObject, DeleteObject.
    assert delta(before, after, S3_CALLS, operation="PutObject") == 1
    assert delta(before, after, S3_CALLS, operation="HeadObject") == 3
    assert delta(before, after, S3_CALLS, operation="DeleteObject") == 1
    assert delta(before, after, S3_ERRORS, operation="HeadObject", kind="not_found") == 1
    assert delta(before, after, S3_ERRORS, operation="PutObject", kind="not_found") == 0
    durations = "stream_proxy_s3_request_duration_seconds_count"
    assert delta(before, after, durations, operation="HeadObject") == 3
    assert delta(before, after, "stream_proxy_s3_reads_total", path="relay") == 1
    assert delta(before, after, "stream_proxy_s3_reads_total", path="botocore") == 0


async def test_unreachable_calls_count_as_errors(moto_endpoint: S3Endpoint) -> None:
    nowhere = S3Endpoint("http://127.0.0.1:9", moto_endpoint.access_key, moto_endpoint.secret_key)
    storage = S3Storage(s3_config(nowhere, "bucket", max_attempts=1, connect_timeout=1))
    await storage.start()
    try:
        assert isinstance(storage.client, MeasuredClient)
        labels = {"operation": "HeadBucket", "kind": "unreachable"}
        before = REGISTRY.get_sample_value(S3_ERRORS, labels) or 0
        with pytest.raises(UpstreamError):
            await storage.check()
        assert (REGISTRY.get_sample_value(S3_ERRORS, labels) or 0) - before == 1
    finally:
        await storage.close()


async def test_memory_budget_gauges(moto_endpoint: S3Endpoint, moto_bucket: str) -> None:
    config = moto_config(moto_endpoint, moto_bucket, memory_budget=48 * MiB)
    async with serving(config) as server:
        url = str(server.make_url("")).rstrip("/")
        async with (
            aiohttp.ClientSession(url) as session,
            session.put("/files/big.bin", data=b"y" * (13 * MiB)) as answer,
        ):
            assert answer.status == 201  # a multipart upload: parts held in the budget
        found = await scrape(url)
    assert found.value("stream_proxy_memory_budget_limit_bytes") == 48 * MiB
    # Present, and all given back once the upload is done.
    assert ("stream_proxy_memory_budget_used_bytes", frozenset({("kind", "buffered")})) in found.samples
    assert found.value("stream_proxy_memory_budget_used_bytes", kind="buffered") == 0
    assert found.value("stream_proxy_memory_budget_used_bytes", kind="charged") == 0


async def test_budget_in_use_is_read_at_scrape_time(moto_endpoint: S3Endpoint, moto_bucket: str) -> None:
    config = moto_config(moto_endpoint, moto_bucket)
    async with serving(config) as server:
        storage = server.app[STORAGE]
        assert isinstance(storage, S3Storage)
        url = str(server.make_url("")).rstrip("/")
        assert storage.budget.try_acquire(12345)
        storage.budget.charge(100)
        try:
            found = await scrape(url)
        finally:
            storage.budget.release(12345)
            storage.budget.refund(100)
    assert found.value("stream_proxy_memory_budget_used_bytes", kind="buffered") == 12345
    assert found.value("stream_proxy_memory_budget_used_bytes", kind="charged") == 100
    assert found.value("stream_proxy_memory_budget_limit_bytes") == config.storage.s3.memory_budget
