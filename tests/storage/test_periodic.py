"""Background upkeep (proxy/storage/periodic.py): it outlives failures and stops when asked."""

from __future__ import annotations

import asyncio

import pytest

from proxy.storage.base import UpstreamError
from proxy.storage.periodic import every, stop
from tests.conftest import wait_until


@pytest.mark.parametrize(
    "error",
    [OSError(24, "Too many open files"), KeyError("x"), RuntimeError("a bug"), UpstreamError("S3 down")],
)
async def test_a_failing_run_is_logged_and_the_next_one_runs(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[int] = []

    async def work() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise error

    task = asyncio.create_task(every(0.01, work, "the upkeep"))
    try:
        await wait_until(lambda: len(runs) >= 4)
        assert "the upkeep failed" in caplog.text
        assert not task.done()
    finally:
        await stop(task)
    assert task.cancelled()


async def test_runs_at_once_or_after_one_interval() -> None:
    runs: list[str] = []

    async def work(name: str) -> None:
        runs.append(name)

    now = asyncio.create_task(every(60, lambda: work("now"), "now"))
    later = asyncio.create_task(every(60, lambda: work("later"), "later", now=False))
    await asyncio.sleep(0.2)
    await stop(now)
    await stop(later)
    await stop(None)  # nothing started: nothing to do
    assert runs == ["now"]


async def test_stop_waits_for_a_run_in_progress_to_end() -> None:
    entered, cleaned = asyncio.Event(), asyncio.Event()

    async def work() -> None:
        entered.set()
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.05)  # cleaning up takes a moment
            cleaned.set()

    task = asyncio.create_task(every(60, work, "slow"))
    await entered.wait()
    await stop(task)
    assert cleaned.is_set()
