"""JobRunner over the memory store: how many jobs at once, failures, lost claims,
stop, storage errors and wake()."""

from __future__ import annotations

import asyncio
import logging

import pytest

from proxy.jobs.base import Claim
from proxy.jobs.memory import MemoryJobs, MemoryJobStore
from proxy.jobs.runner import JobRunner
from proxy.storage.base import UpstreamError
from tests.conftest import wait_until


async def test_runs_every_job_at_most_max_jobs_at_once() -> None:
    store = MemoryJobStore(lease=2.0)
    for n in range(5):
        await store.enqueue(f"k{n}", '"e"')
    now, most, ran = 0, 0, []
    gate = asyncio.Event()

    async def work(claim: Claim) -> None:
        nonlocal now, most
        now += 1
        most = max(most, now)
        await gate.wait()
        await claim.report(50)
        now -= 1
        await claim.done({"n": claim.job.key})
        ran.append(claim.job.key)

    runner = JobRunner(store, work, max_jobs=2, poll_interval=0.05)
    await runner.start()
    await wait_until(lambda: runner.busy == 2)
    await asyncio.sleep(0.3)
    assert most == 2
    gate.set()
    await wait_until(lambda: len(ran) == 5)
    await runner.stop()
    assert sorted(ran) == [f"k{n}" for n in range(5)]
    assert [(await store.get(f"k{n}")).state for n in range(5)] == ["done"] * 5


async def test_work_that_raises_fails_the_job_with_internal_error(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryJobStore(lease=2.0)
    await store.enqueue("bad", '"e"')

    async def work(claim: Claim) -> None:
        raise RuntimeError("secret detail /tmp/x")

    runner = JobRunner(store, work, poll_interval=0.05)
    with caplog.at_level(logging.ERROR, logger="proxy.jobs.runner"):
        await runner.start()
        await wait_until(lambda: store.jobs.records["bad"].job.state == "failed")
        await runner.stop()
    job = await store.get("bad")
    assert job.reason == "internal error"
    assert "secret detail" in caplog.text and "Traceback" in caplog.text


async def test_a_lost_claim_s_work_is_cancelled_and_the_new_generation_runs() -> None:
    shared = MemoryJobs()
    store, other = MemoryJobStore(shared, lease=0.6), MemoryJobStore(shared, lease=0.6)
    await store.enqueue("v", '"old"')
    started: list[str] = []
    cancelled: list[str] = []

    async def work(claim: Claim) -> None:
        started.append(claim.job.source_etag)
        if claim.job.source_etag == '"old"':
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(claim.job.attempt or "")
                raise
        await claim.done({})

    runner = JobRunner(store, work, poll_interval=0.05)
    await runner.start()
    await wait_until(lambda: started == ['"old"'])
    await other.enqueue("v", '"new"')
    await wait_until(lambda: (shared.records["v"].job.state, started) == ("done", ['"old"', '"new"']))
    await runner.stop()
    assert len(cancelled) == 1


async def test_stop_cancels_work_and_releases_the_claims() -> None:
    shared = MemoryJobs()
    store = MemoryJobStore(shared, lease=30.0)
    await store.enqueue("long", '"e"')
    cancelled = asyncio.Event()

    async def work(claim: Claim) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    runner = JobRunner(store, work, poll_interval=0.05)
    await runner.start()
    await wait_until(lambda: runner.busy == 1)
    attempt = shared.records["long"].job.attempt
    await runner.stop()
    assert cancelled.is_set() and runner.busy == 0
    assert (await store.get("long")).state == "queued"
    taken = await MemoryJobStore(shared).claim()  # at once, not after the 30 s lease
    assert taken is not None and taken.previous_attempt == attempt


class FlakyStore(MemoryJobStore):
    """Its first claims fail as S3 does when it is unreachable; counts every claim."""

    def __init__(self, failures: int) -> None:
        super().__init__(lease=2.0)
        self.failures = failures
        self.calls = 0

    async def claim(self):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls <= self.failures:
            raise UpstreamError("S3 unreachable")
        return await super().claim()


async def test_storage_errors_are_survived_and_idle_polls_are_few(caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore(failures=2)
    await store.enqueue("k", '"e"')

    async def work(claim: Claim) -> None:
        await claim.done({})

    runner = JobRunner(store, work, poll_interval=0.05)
    started = asyncio.get_running_loop().time()
    await runner.start()
    await wait_until(lambda: store.jobs.records["k"].job.state == "done")
    assert asyncio.get_running_loop().time() - started >= 0.1 + 0.2  # it backed off twice
    assert caplog.text.count("could not look for jobs") == 2
    before = store.calls
    await asyncio.sleep(1.0)  # nothing to do: one look per poll_interval, no busy loop
    await runner.stop()
    assert store.calls - before <= 1.0 / 0.05 + 2


async def test_wake_looks_for_work_at_once() -> None:
    store = MemoryJobStore(lease=2.0)
    done = asyncio.Event()

    async def work(claim: Claim) -> None:
        await claim.done({})
        done.set()

    runner = JobRunner(store, work, poll_interval=3600)
    await runner.start()
    await asyncio.sleep(0.1)  # its first look found nothing
    await store.enqueue("k", '"e"')
    runner.wake()
    await asyncio.wait_for(done.wait(), 5)
    await runner.stop()


async def test_work_that_forgets_to_end_its_claim_gives_it_back() -> None:
    store = MemoryJobStore(lease=2.0)
    await store.enqueue("k", '"e"')
    seen: list[int] = []

    async def work(claim: Claim) -> None:
        seen.append(claim.job.attempts)
        if len(seen) > 1:
            await claim.done({})

    runner = JobRunner(store, work, poll_interval=0.05)
    await runner.start()
    await wait_until(lambda: store.jobs.records["k"].job.state == "done")
    await runner.stop()
    assert seen == [1, 2]
