"""Resumable uploads kept in S3 (proxy/storage/s3_resumable.py), against moto and Ceph RGW.

Every store gets its own S3Storage, as a separate proxy process would; faults and
stalls are injected at the HTTP level by an S3Interposer in front of moto.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from proxy.sha256_state import ResumableSha256
from proxy.storage.resumable import ChecksumMismatch, UploadBody, UploadLocked, UploadNotFound, UploadState
from proxy.storage.s3 import S3Storage
from proxy.storage.s3_resumable import UPLOADS_PREFIX, S3ResumableStore
from proxy.streams import BodyTooLarge
from proxy.tus_protocol import Checksum
from tests.conftest import MiB, S3Endpoint, S3View, new_upload_state, s3_config
from tests.s3_interposer import S3Interposer

PART = 5 * MiB
ODD_SIZES = [1 * MiB, PART + 3, 7, 1 * MiB, PART + 3, 2 * PART + 1]
MakeStore = Callable[..., Any]


def payload(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 4096  # 128 KiB, not periodic in parts
    return (block * (size // len(block) + 1))[:size]


def chunks(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def agen(it: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in it:
        yield chunk


def state_key(upload_id: str) -> str:
    return f"{UPLOADS_PREFIX}{upload_id}/state.json"


async def append(store: S3ResumableStore, upload_id: str, data: bytes) -> UploadState:
    async with store.lock(upload_id) as state:
        return await store.append(state, UploadBody(agen(chunks(data)), state=state))


async def finish(store: S3ResumableStore, upload_id: str) -> Any:
    async with store.lock(upload_id) as state:
        assert state.complete
        return await store.finish(state)


@pytest.fixture
async def interposer(moto_endpoint: S3Endpoint) -> AsyncIterator[tuple[S3Interposer, S3Endpoint]]:
    layer = S3Interposer(moto_endpoint.url)
    server = TestServer(layer.app(), host="127.0.0.1")
    await server.start_server()
    yield layer, replace(moto_endpoint, url=str(server.make_url("")).rstrip("/"))
    await server.close()


@pytest.fixture
async def opened() -> AsyncIterator[list[S3Storage]]:
    storages: list[S3Storage] = []
    yield storages
    for storage in storages:
        await storage.close()


def store_factory(opened: list[S3Storage], bucket: str) -> MakeStore:
    async def make(endpoint: S3Endpoint, *, lease: float = 30.0, **settings: Any) -> S3ResumableStore:
        storage = S3Storage(s3_config(endpoint, bucket, **{"part_size": PART, **settings}))
        await storage.start()
        opened.append(storage)
        store = S3ResumableStore(storage, lock_lease=lease)
        await store.start()
        return store

    return make


@pytest.fixture
def make_store(opened: list[S3Storage], moto_bucket: str) -> MakeStore:
    return store_factory(opened, moto_bucket)


@pytest.fixture
def view(moto_endpoint: S3Endpoint, moto_bucket: str) -> S3View:
    return S3View(moto_endpoint, moto_bucket)


async def round_trip(store: S3ResumableStore, view: S3View, *, known_length: bool) -> None:
    pieces = [payload(size, seed) for seed, size in enumerate(ODD_SIZES)]
    data = b"".join(pieces)
    state = await store.create(new_upload_state(len(data) if known_length else None))
    for piece in pieces:
        state = await append(store, state.id, piece)
    assert state.offset == len(data)
    if not known_length:
        async with store.lock(state.id) as held:
            await store.save(replace(held, length=len(data)))
    info = await finish(store, state.id)

    digest = hashlib.sha256(data).hexdigest()
    assert (info.size, info.sha256, info.content_type) == (len(data), digest, "video/mp4")
    assert view.get(state.key) == data
    assert view.metadata(state.key) == {"content_type": "video/mp4", "size": len(data), "sha256": digest}
    assert info.etag == view.client.head_object(Bucket=view.bucket, Key=state.key)["ETag"] != '""'
    assert view.keys() == [state.key]
    assert view.leftovers() == [f"upload {state.id}"]
    assert view.internal_keys() == [state_key(state.id)]  # only the finished upload's state
    done = await store.get(state.id)
    assert done.done and done.offset == len(data)
    assert "lease" not in done.backend and "upload_id" not in done.backend
    assert store._storage.budget.in_use == 0


@pytest.mark.parametrize("known_length", [True, False])
async def test_appends_of_odd_sizes_then_finish(
    interposer: Any, make_store: MakeStore, view: S3View, known_length: bool
) -> None:
    layer, endpoint = interposer
    store = await make_store(endpoint, max_concurrency=2)
    await round_trip(store, view, known_length=known_length)
    parts = [s for s in layer.seen if s.operation == "UploadPart"]
    assert parts and all(p.content_length == str(p.body_size) for p in parts)
    assert all(p.body_size == PART for p in parts[:-1])
    assert layer.max_parts_in_flight <= 2


@pytest.mark.real_s3
async def test_round_trip_on_real_s3(real_s3: S3Endpoint, real_bucket: str, opened: list[S3Storage]) -> None:
    store = await store_factory(opened, real_bucket)(real_s3, lease=3.0)
    await round_trip(store, S3View(real_s3, real_bucket), known_length=True)


async def test_a_new_process_continues_the_upload(
    moto_endpoint: S3Endpoint, make_store: MakeStore, view: S3View
) -> None:
    data = payload(2 * PART + 5)
    first = await make_store(moto_endpoint)
    state = await first.create(new_upload_state(len(data)))
    await append(first, state.id, data[: PART + 3])
    await first._storage.close()  # the process goes away between chunks

    second = await make_store(moto_endpoint)
    state = await append(second, state.id, data[PART + 3 :])
    info = await finish(second, state.id)
    assert view.get(state.key) == data
    assert info.sha256 == hashlib.sha256(data).hexdigest()


async def test_two_processes_serve_alternate_chunks(
    moto_endpoint: S3Endpoint, make_store: MakeStore, view: S3View
) -> None:
    stores = [await make_store(moto_endpoint), await make_store(moto_endpoint)]
    data = payload(3 * PART)
    state = await stores[0].create(new_upload_state(len(data)))
    for i, piece in enumerate(chunks(data, 2 * MiB + 1)):
        await append(stores[i % 2], state.id, piece)
    await finish(stores[1], state.id)
    assert view.get(state.key) == data


async def cut_off_body(data: bytes, cut: int, error: BaseException) -> AsyncIterator[bytes]:
    for chunk in chunks(data[:cut], 300_000):
        yield chunk
    raise error


async def test_cut_off_chunk_keeps_exactly_what_was_taken(
    moto_endpoint: S3Endpoint, make_store: MakeStore, view: S3View
) -> None:
    store = await make_store(moto_endpoint)
    data = payload(3 * PART)
    state = await store.create(new_upload_state(len(data)))
    state = await append(store, state.id, data[:1000])
    cut = 1000 + PART + 12345
    async with store.lock(state.id) as held:
        body = UploadBody(cut_off_body(data[1000:], cut - 1000, ConnectionResetError()), state=held)
        with pytest.raises(ConnectionResetError):
            await store.append(held, body)
    kept = await store.get(state.id)
    assert kept.offset == cut
    assert ResumableSha256(kept.sha256).hexdigest() == hashlib.sha256(data[:cut]).hexdigest()

    await append(store, state.id, data[cut:])
    await finish(store, state.id)
    assert view.get(state.key) == data
    assert view.internal_keys() == [state_key(state.id)]


@pytest.mark.parametrize("refusal", ["checksum", "too_long"])
async def test_refused_chunk_keeps_nothing(
    interposer: Any, make_store: MakeStore, view: S3View, refusal: str
) -> None:
    layer, endpoint = interposer
    store = await make_store(endpoint)
    data = payload(3 * PART)
    state = await store.create(new_upload_state(len(data)))
    state = await append(store, state.id, data[:1000])
    internal = view.internal_keys()
    async with store.lock(state.id) as held:
        if refusal == "checksum":
            checksum = Checksum("sha1", hashlib.sha1(b"other bytes").digest())
            body = UploadBody(agen(chunks(data[1000 : 2 * PART])), state=held, checksum=checksum)
            error: type[Exception] = ChecksumMismatch
        else:
            body = UploadBody(agen(chunks(data[1000:])), state=held, limit=PART + 10)
            error = BodyTooLarge
        with pytest.raises(error):
            await store.append(held, body)
    after = await store.get(state.id)
    assert (after.offset, after.sha256) == (state.offset, state.sha256)
    assert "UploadPart" in layer.operations()  # a part was sent, and is simply written again
    assert view.internal_keys() == internal

    await append(store, state.id, data[1000:])
    await finish(store, state.id)
    assert view.get(state.key) == data


async def test_cancelled_append_keeps_what_was_taken(
    moto_endpoint: S3Endpoint, make_store: MakeStore, view: S3View
) -> None:
    store = await make_store(moto_endpoint)
    data = payload(2 * PART)
    state = await store.create(new_upload_state(len(data)))
    taken = PART + 777
    reached = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        for chunk in chunks(data[:taken], 100_000):
            yield chunk
        reached.set()
        await asyncio.Event().wait()
        yield b"never"

    async def patch() -> None:
        async with store.lock(state.id) as held:
            await store.append(held, UploadBody(stalling(), state=held))

    task = asyncio.create_task(patch())
    await reached.wait()
    task.cancel()  # as at shutdown
    with pytest.raises(asyncio.CancelledError):
        await task
    await store._storage.cleanups.drain()
    kept = await store.get(state.id)
    assert kept.offset == taken and "lease" not in kept.backend
    await append(store, state.id, data[taken:])
    await finish(store, state.id)
    assert view.get(state.key) == data


async def test_a_held_upload_is_refused_everywhere(moto_endpoint: S3Endpoint, make_store: MakeStore) -> None:
    one, other = await make_store(moto_endpoint), await make_store(moto_endpoint)
    state = await one.create(new_upload_state(10))
    async with one.lock(state.id):
        for store in (one, other):
            with pytest.raises(UploadLocked):
                async with store.lock(state.id):
                    pass
    async with other.lock(state.id) as held:
        assert held.offset == 0
    with pytest.raises(UploadNotFound):
        async with other.lock(uuid.uuid4().hex):
            pass


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
            return await stalled.append(held, UploadBody(body(), state=held))

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
        f"{UPLOADS_PREFIX}{state.id}/tail-{current.backend['tail']}"
    ]
    layer.fault = None
    await append(other, state.id, data[100:])
    await finish(other, state.id)
    assert view.get(state.key) == data


async def test_terminate_leaves_nothing(
    moto_endpoint: S3Endpoint, make_store: MakeStore, view: S3View
) -> None:
    store = await make_store(moto_endpoint)
    state = await store.create(new_upload_state(3 * PART))
    await append(store, state.id, payload(PART + 10))
    # A tail written by an append whose process died before saving it.
    orphan = f"{UPLOADS_PREFIX}{state.id}/tail-orphan"
    view.client.put_object(Bucket=view.bucket, Key=orphan, Body=b"lost")
    assert len(view.leftovers()) == 2  # the multipart upload, and the upload's objects
    assert orphan in view.internal_keys()
    assert state.id in await store.upload_ids()
    async with store.lock(state.id) as held:
        await store.terminate(held)
    assert view.leftovers() == [] and view.keys() == []
    assert await store.upload_ids() == []
    with pytest.raises(UploadNotFound):
        await store.get(state.id)


@pytest.mark.parametrize("size", [0, 1, PART - 1])
async def test_small_uploads_are_one_put_object(
    interposer: Any, make_store: MakeStore, view: S3View, size: int
) -> None:
    layer, endpoint = interposer
    store = await make_store(endpoint)
    data = payload(size)
    state = await store.create(new_upload_state(size))
    for piece in (data[: size // 2], data[size // 2 :]):
        if piece:
            await append(store, state.id, piece)
    info = await finish(store, state.id)
    assert "CreateMultipartUpload" not in layer.operations()
    assert view.get(state.key) == data
    assert info.sha256 == hashlib.sha256(data).hexdigest() == view.metadata(state.key)["sha256"]
    assert view.internal_keys() == [state_key(state.id)]


async def test_uploads_are_listed_and_hidden_from_the_object_listing(
    moto_endpoint: S3Endpoint, make_store: MakeStore, view: S3View
) -> None:
    store = await make_store(moto_endpoint)
    ids = set()
    for _ in range(3):
        state = await store.create(new_upload_state(None))
        await append(store, state.id, b"tail bytes")
        ids.add(state.id)
    # '+' sorts before '.stream-proxy/' and 'z' after it.
    for key in ("+first", "z1", "z2"):
        view.client.put_object(Bucket=view.bucket, Key=key, Body=b"x")
    assert set(await store.upload_ids()) == ids
    listed, cursor = [], None
    while True:
        page = await store._storage.list(limit=1, cursor=cursor)
        listed += [o.key for o in page.objects]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert listed == ["+first", "z1", "z2"]
    assert [o.key for o in (await store._storage.list(limit=10)).objects] == listed
