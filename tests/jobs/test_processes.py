"""Real OS processes (tests/jobs/racer.py) sharing one local root or RGW bucket:
each job is claimed exactly once, and a SIGKILLed holder's job is taken over (at
once locally, after the lease on S3)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from proxy.jobs.base import JobStore
from proxy.jobs.local import LocalJobStore
from proxy.jobs.s3 import S3JobStore
from proxy.storage.s3.objects import S3Storage
from tests.conftest import S3Endpoint, s3_config

ROOT_DIR = Path(__file__).resolve().parents[2]
LEASE = 2.0
KEYS = [f"videos/clip-{n}.mp4" for n in range(5)]


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.jobs.racer", *args, cwd=ROOT_DIR, stdout=asyncio.subprocess.PIPE
    )


async def race(store: JobStore, where: list[str], tmp_path: Path) -> None:
    for key in KEYS:
        await store.enqueue(key, '"e"')
    go = tmp_path / "go"
    racers = [await spawn("race", *where, str(LEASE), str(go)) for _ in range(2)]
    await asyncio.sleep(1.0)  # both started (importing takes a moment)
    go.touch()
    outputs = await asyncio.wait_for(asyncio.gather(*(r.communicate() for r in racers)), 120)
    assert [r.returncode for r in racers] == [0, 0]
    claimed = [line for out, _ in outputs for line in out.decode().split()]
    assert sorted(claimed) == KEYS  # each exactly once, between the two of them
    for key in KEYS:
        job = await store.get(key)
        assert (job.state, job.attempts) == ("done", 1)


async def kill_holder(store: JobStore, where: list[str]) -> str:
    await store.enqueue("held.mp4", '"e"')
    holder = await spawn("hold", *where, str(LEASE))
    assert holder.stdout is not None
    line = await asyncio.wait_for(holder.stdout.readline(), 60)
    key, attempt = line.decode().split()
    assert key == "held.mp4"
    assert await store.claim() is None  # held by a live process
    os.kill(holder.pid, signal.SIGKILL)
    await holder.wait()
    return attempt


async def s3_store(endpoint: S3Endpoint, bucket: str) -> tuple[S3Storage, S3JobStore]:
    storage = S3Storage(s3_config(endpoint, bucket))
    await storage.start()
    return storage, S3JobStore(storage, LEASE)


async def test_two_processes_claim_each_local_job_once(tmp_path: Path) -> None:
    root = tmp_path / "data"
    store = LocalJobStore(root, LEASE)
    await store.start()
    await race(store, ["local", str(root)], tmp_path)


async def test_a_killed_local_holder_s_job_is_claimable_at_once(tmp_path: Path) -> None:
    root = tmp_path / "data"
    store = LocalJobStore(root, LEASE)
    await store.start()
    attempt = await kill_holder(store, ["local", str(root)])
    claim = await store.claim()
    assert claim is not None and claim.previous_attempt == attempt
    await claim.done({})


@pytest.mark.real_s3
async def test_two_processes_claim_each_rgw_job_once(
    tmp_path: Path, real_s3: S3Endpoint, real_bucket: str
) -> None:
    storage, store = await s3_store(real_s3, real_bucket)
    try:
        await race(store, ["s3", real_s3.url, real_bucket], tmp_path)
    finally:
        await storage.close()


@pytest.mark.real_s3
async def test_a_killed_s3_holder_s_job_is_claimable_after_its_lease(
    real_s3: S3Endpoint, real_bucket: str
) -> None:
    storage, store = await s3_store(real_s3, real_bucket)
    try:
        attempt = await kill_holder(store, ["s3", real_s3.url, real_bucket])
        loop = asyncio.get_running_loop()
        killed = loop.time()
        claim = None
        while claim is None and loop.time() - killed < LEASE + 15:
            claim = await store.claim()
            await asyncio.sleep(0.2)
        assert claim is not None and claim.previous_attempt == attempt
        # Not before the lease could have run out (a renewal at most lease/3 before the kill).
        assert loop.time() - killed >= LEASE * 2 / 3 - 0.5
        await claim.done({})
        await store.close()
    finally:
        await storage.close()
