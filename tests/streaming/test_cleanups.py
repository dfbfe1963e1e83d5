"""Cleanups outlive the cancellation of the request that started them."""

from __future__ import annotations

import asyncio

import pytest

from proxy.streaming.cleanups import Cleanups


async def test_cleanup_finishes_after_caller_is_cancelled_and_drain_waits() -> None:
    cleanups = Cleanups()
    done = asyncio.Event()

    async def work() -> None:
        await asyncio.sleep(0.2)
        done.set()

    caller = asyncio.create_task(cleanups.run(work()))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert not done.is_set()
    await asyncio.wait_for(cleanups.drain(), 2)
    assert done.is_set()


async def test_drain_swallows_failures_of_cleanups() -> None:
    cleanups = Cleanups()

    async def failing() -> None:
        raise RuntimeError("abort failed")

    with pytest.raises(RuntimeError):
        await cleanups.run(failing())
    await cleanups.drain()
