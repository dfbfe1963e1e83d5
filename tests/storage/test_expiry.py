"""The sweep for expired uploads (proxy/storage/expiry.py): it survives what a store
throws at it, one upload's failure or a whole sweep's, and keeps sweeping."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace

import pytest

from proxy.storage.expiry import sweep, sweep_forever
from proxy.storage.resumable import ResumableStore, UploadState
from tests.conftest import new_upload_state, wait_until
from tests.storage.memory import MemoryResumableStore, MemoryStorage


async def expired_upload(store: ResumableStore) -> str:
    state = await store.create(replace(new_upload_state(10), expires=time.time() - 1))
    return state.id


class Flaky(MemoryResumableStore):
    """Fails the first ``failures`` listings with ``error``, then works."""

    def __init__(self, storage: MemoryStorage, error: BaseException, failures: int) -> None:
        super().__init__(storage)
        self.error = error
        self.failures = failures

    async def upload_ids(self) -> list[str]:
        if self.failures:
            self.failures -= 1
            raise self.error
        return await super().upload_ids()


@pytest.mark.parametrize(
    "error", [OSError(24, "Too many open files"), KeyError("part_size"), RuntimeError("a bug")]
)
async def test_a_failing_sweep_is_logged_and_the_next_one_runs(
    error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    store = Flaky(MemoryStorage(), error, failures=2)
    upload_id = await expired_upload(store)
    sweeper = asyncio.create_task(sweep_forever(store, 0.01))
    try:
        await wait_until(lambda: store.failures == 0 and "sweep for expired uploads failed" in caplog.text)
        # Still alive after two failures: the upload is swept by a later round.
        async with asyncio.timeout(5):
            while upload_id in await store.upload_ids():
                await asyncio.sleep(0.01)
        assert not sweeper.done()
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper


class BrokenState(MemoryResumableStore):
    """One upload whose state cannot be read (as a file with bad JSON would be)."""

    def __init__(self, storage: MemoryStorage) -> None:
        super().__init__(storage)
        self.broken: str | None = None

    async def get(self, upload_id: str) -> UploadState:
        if upload_id == self.broken:
            raise KeyError("backend")
        return await super().get(upload_id)


async def test_one_unreadable_upload_does_not_stop_the_others() -> None:
    store = BrokenState(MemoryStorage())
    store.broken = await expired_upload(store)
    others = [await expired_upload(store) for _ in range(3)]
    assert await sweep(store) == 3
    assert await store.upload_ids() == [store.broken]
    assert not set(others) & set(await store.upload_ids())
