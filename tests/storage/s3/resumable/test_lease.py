"""One writer at a time across processes (proxy/storage/s3/resumable/lease.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.storage import layout
from proxy.storage.resumable import UploadBody, UploadLocked, UploadState
from proxy.storage.s3.objects import S3Storage
from proxy.storage.s3.resumable.store import S3ResumableStore
from tests.conftest import S3Endpoint, S3View, new_upload_state
from tests.s3_interposer import S3Interposer
from tests.storage.s3.resumable.support import (
    PART,
    MakeStore,
    agen,
    append,
    chunks,
    finish,
    payload,
    state_key,
    store_factory,
)


async def try_lock(store: S3ResumableStore, upload_id: str, hold: asyncio.Event) -> bool:
    try:
        async with store.lock(upload_id):
            await hold.wait()
            return True
    except UploadLocked:
        return False


@pytest.mark.parametrize("server", ["moto", pytest.param("rgw", marks=pytest.mark.real_s3)])
async def test_racing_locks_one_wins(
    request: pytest.FixtureRequest, opened: list[S3Storage], server: str
) -> None:
    endpoint: S3Endpoint = request.getfixturevalue("moto_endpoint" if server == "moto" else "real_s3")
    bucket: str = request.getfixturevalue("moto_bucket" if server == "moto" else "real_bucket")
    make = store_factory(opened, bucket)
    stores = [await make(endpoint) for _ in range(4)]
    state = await stores[0].create(new_upload_state(10))
    for _ in range(3):
        hold = asyncio.Event()
        tasks = [asyncio.create_task(try_lock(s, state.id, hold)) for s in stores]
        # The winner holds on until every other one has given up.
        async with asyncio.timeout(20):
            while sum(t.done() for t in tasks) < len(stores) - 1:
                await asyncio.sleep(0.05)
        hold.set()
        assert sorted(await asyncio.gather(*tasks)) == [False, False, False, True]


async def test_a_lease_that_ran_out_is_taken_over(
    moto_endpoint: S3Endpoint, make_store: MakeStore, view: S3View
) -> None:
    store = await make_store(moto_endpoint)
    state = await store.create(new_upload_state(10))
    # What a process that died holding the lock leaves behind.
    record = json.loads(view.get(state_key(state.id)))
    record["backend"]["lease"] = {"holder": "dead", "seconds": 1, "write": "x"}
    view.client.put_object(Bucket=view.bucket, Key=state_key(state.id), Body=json.dumps(record).encode())
    with pytest.raises(UploadLocked):
        async with store.lock(state.id):
            pass
    await asyncio.sleep(3.1)  # lease + S3's one-second resolution + margin
    async with store.lock(state.id) as held:
        assert held.backend["lease"]["holder"] != "dead"


async def test_a_lost_lease_fails_the_append_without_saving(
    interposer: Any, moto_endpoint: S3Endpoint, make_store: MakeStore, view: S3View
) -> None:
    layer, endpoint = interposer
    stalled = await make_store(endpoint, lease=1.0)
    other = await make_store(moto_endpoint, lease=30.0)
    data = payload(2 * PART)
    state = await stalled.create(new_upload_state(len(data)))
    state = await append(stalled, state.id, data[:100])
    sent_part = asyncio.Event()
    resume = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks(data[100 : PART + 50]):
            yield chunk
        sent_part.set()
        await resume.wait()
        yield data[PART + 50 : PART + 60]

    async def patch() -> UploadState:
        async with stalled.lock(state.id) as held:
            appended: UploadState = await stalled.append(held, UploadBody(body(), state=held))
            return appended

    task = asyncio.create_task(patch())
    await sent_part.wait()
    # The stalled process can no longer reach the state: its renewals fail.
    layer.fault = lambda s: 503 if s.method == "PUT" and s.path.endswith("/state.json") else None
    async with asyncio.timeout(10):
        while True:
            try:
                async with other.lock(state.id) as taken_over:
                    break
            except UploadLocked:
                await asyncio.sleep(0.25)
    resume.set()
    with pytest.raises(UploadLocked):
        await task
    current = await other.get(state.id)
    assert current.offset == taken_over.offset == 100
    assert "lease" not in current.backend  # released by the new holder, not overwritten
    assert [k for k in view.internal_keys() if "/tail-" in k] == [
        f"{layout.UPLOADS}{state.id}/tail-{current.backend['tail']}"
    ]
    layer.fault = None
    await append(other, state.id, data[100:])
    await finish(other, state.id)
    assert view.get(state.key) == data


def state_calls(layer: S3Interposer, method: str, upload_id: str) -> int:
    """How many ``method`` requests went to the upload's state object."""
    return sum(s.method == method and s.path.endswith(f"/{state_key(upload_id)}") for s in layer.seen)


async def test_an_append_that_leaves_the_upload_incomplete_releases_with_its_save(
    interposer: Any, make_store: MakeStore, view: S3View
) -> None:
    """The lease is written by the lock and taken off by the append's save: two writes
    of the state per PATCH, not three; the saved state holds no lease, so another
    process takes the upload at once; the PATCH that completes it keeps the lease to
    publish, and releases after."""
    layer, endpoint = interposer
    store, other = await make_store(endpoint), await make_store(endpoint)
    data = payload(PART + 100)
    state = await store.create(new_upload_state(len(data)))
    await append(store, state.id, data[:PART])  # its multipart upload's id is saved too
    assert "lease" not in json.loads(view.get(state_key(state.id)))["backend"]
    before = state_calls(layer, "PUT", state.id)
    await append(other, state.id, data[PART : PART + 50])
    assert state_calls(layer, "PUT", state.id) - before == 2
    async with store.lock(state.id) as held:
        done = await store.append(held, UploadBody(agen(chunks(data[PART + 50 :])), state=held))
        assert done.complete and "lease" in json.loads(view.get(state_key(state.id)))["backend"]
        await store.finish(done)
    assert view.get(state.key) == data
    assert "lease" not in (await store.get(state.id)).backend


async def test_a_second_append_under_one_lock_takes_the_lease_again_or_fails(
    interposer: Any, make_store: MakeStore, view: S3View
) -> None:
    """Once an append's save has released the lease, another process may take the
    upload: a further append under the first lock writes the lease again over the
    version it saved, and fails (nothing stored) if the other process came first."""
    layer, endpoint = interposer
    store, other = await make_store(endpoint), await make_store(endpoint)
    data = payload(3 * PART)
    state = await store.create(new_upload_state(len(data)))
    async with store.lock(state.id) as held:
        first = await store.append(held, UploadBody(agen(chunks(data[:PART])), state=held))
        second = await store.append(first, UploadBody(agen(chunks(data[PART : 2 * PART])), state=first))
        assert second.offset == 2 * PART
        async with other.lock(state.id) as taken:
            assert taken.offset == 2 * PART
            with pytest.raises(UploadLocked):
                await store.append(second, UploadBody(agen(chunks(data[2 * PART :])), state=second))
            parts_before = layer.operations().count("UploadPart")
            last = await other.append(taken, UploadBody(agen(chunks(data[2 * PART :])), state=taken))
            assert layer.operations().count("UploadPart") > parts_before
            await other.finish(last)
    assert view.get(state.key) == data


async def test_the_next_lock_of_this_process_writes_over_the_state_it_saved_without_reading_it(
    interposer: Any, make_store: MakeStore, view: S3View
) -> None:
    """A client's PATCHes one after the other to one process: each lock writes its lease
    over the state the PATCH before saved, with no read of it; once another process has
    written it, the condition fails and the lock reads it as usual."""
    layer, endpoint = interposer
    store, other = await make_store(endpoint), await make_store(endpoint)
    data = payload(4 * PART)
    state = await store.create(new_upload_state(len(data)))
    await append(store, state.id, data[:PART])
    reads = state_calls(layer, "GET", state.id)
    await append(store, state.id, data[PART : 2 * PART])
    assert state_calls(layer, "GET", state.id) == reads  # written over what it saved
    await append(other, state.id, data[2 * PART : 3 * PART])  # another process, meanwhile
    reads = state_calls(layer, "GET", state.id)
    done = await append(store, state.id, data[3 * PART :])
    assert state_calls(layer, "GET", state.id) > reads  # its condition failed: read, then locked
    assert done.offset == len(data)
    await finish(store, state.id)
    assert view.get(state.key) == data
