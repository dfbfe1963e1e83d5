"""S3 job store details, through the recording, fault-injecting layer in front of
moto (tests/s3_interposer.py): writes whose answers are lost, and what a claim and
its renewals cost in S3 calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from aiohttp.test_utils import TestServer

from proxy.jobs.s3 import S3JobStore
from proxy.storage import layout
from proxy.storage.s3.objects import S3Storage
from tests.conftest import S3Endpoint, s3_config
from tests.s3_interposer import S3Interposer, Seen

LEASE = 1.5
Layer = tuple[S3Interposer, S3JobStore]


@pytest.fixture
async def layer(moto_endpoint: S3Endpoint, moto_bucket: str) -> AsyncIterator[Layer]:
    interposer = S3Interposer(moto_endpoint.url)
    server = TestServer(interposer.app(), host="127.0.0.1")
    await server.start_server()
    endpoint = replace(moto_endpoint, url=str(server.make_url("")).rstrip("/"))
    storage = S3Storage(s3_config(endpoint, moto_bucket, max_attempts=3))
    await storage.start()
    store = S3JobStore(storage, LEASE)
    yield interposer, store
    await store.close()
    await storage.close()
    await server.close()


def job_calls(interposer: S3Interposer) -> list[str]:
    """The store's calls as "<method> queue|record" (a LIST of the queue is "GET queue")."""
    calls = []
    for seen in interposer.seen:
        prefix = seen.query.get("prefix", "")
        if layout.JOBS in seen.path or prefix.startswith(layout.JOBS):
            queue = layout.JOB_QUEUE in seen.path or prefix == layout.JOB_QUEUE
            calls.append(f"{seen.method} {'queue' if queue else 'record'}")
    return calls


def lose_first_record_put(interposer: S3Interposer) -> list[Seen]:
    lost: list[Seen] = []

    def rule(seen: Seen) -> int | None:
        if not lost and seen.method == "PUT" and layout.JOB_RECORDS in seen.path:
            lost.append(seen)
            return 500  # the write was made; botocore retries it and the retry meets 412
        return None

    interposer.lost_answer = rule
    return lost


async def test_a_claim_whose_answer_was_lost_is_still_ours(layer: Layer) -> None:
    interposer, store = layer
    await store.enqueue("a.mp4", '"e"')
    lost = lose_first_record_put(interposer)
    claim = await store.claim()
    assert lost and claim is not None and not claim.lost()
    assert (await store.get("a.mp4")).attempt == claim.job.attempt
    await claim.report(50)  # its ETag is the stored one
    await claim.done({})


async def test_a_renewal_whose_answer_was_lost_keeps_the_claim(
    layer: Layer,
) -> None:
    interposer, store = layer
    await store.enqueue("b.mp4", '"e"')
    claim = await store.claim()
    assert claim is not None
    lost = lose_first_record_put(interposer)
    await asyncio.sleep(LEASE / 3 + 0.5)  # one renewal
    assert lost and not claim.lost()
    await claim.done({"ok": 1})
    assert (await store.get("b.mp4")).state == "done"


async def test_what_a_claim_and_its_renewals_cost(layer: Layer) -> None:
    interposer, store = layer
    assert await store.claim() is None
    assert job_calls(interposer) == ["GET queue"]  # one LIST when there is no work
    await store.enqueue("c.mp4", '"e"')
    assert job_calls(interposer)[1:] == ["PUT queue", "GET record", "PUT record", "HEAD queue"]
    interposer.seen.clear()
    claim = await store.claim()
    assert claim is not None
    assert job_calls(interposer) == ["GET queue", "GET record", "PUT record"]
    interposer.seen.clear()
    await asyncio.sleep(LEASE * 2 / 3 + 0.3)  # two renewals
    assert job_calls(interposer) == ["PUT record", "PUT record"]
    interposer.seen.clear()
    await claim.done({})
    assert job_calls(interposer) == ["PUT record", "DELETE queue", "GET record"]
