"""Resumable uploads kept in S3 (proxy/storage/s3/resumable/), against moto and Ceph RGW.

Every store gets its own S3Storage, as a separate proxy process would; faults and
stalls are injected at the HTTP level by an S3Interposer in front of moto.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.rules.tus import Checksum
from proxy.storage import layout
from proxy.storage.base import UpstreamError
from proxy.storage.resumable import ChecksumMismatch, UploadBody, UploadLocked, UploadNotFound, UploadState
from proxy.storage.s3.limits import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE
from proxy.storage.s3.objects import S3Storage
from proxy.storage.s3.resumable.plan import leftover_is_part, part_target
from proxy.storage.s3.resumable.store import S3ResumableStore
from proxy.streaming.bodies import BodyTooLarge
from proxy.streaming.sha256_state import ResumableSha256
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
    return f"{layout.UPLOADS}{upload_id}/state.json"


async def append(store: S3ResumableStore, upload_id: str, data: bytes) -> UploadState:
    async with store.lock(upload_id) as state:
        return await store.append(state, UploadBody(agen(chunks(data)), state=state))


async def finish(store: S3ResumableStore, upload_id: str) -> Any:
    async with store.lock(upload_id) as state:
        assert state.complete
        return await store.finish(state)


@contextlib.asynccontextmanager
async def interposed(endpoint: S3Endpoint) -> AsyncIterator[tuple[S3Interposer, S3Endpoint]]:
    """An S3Interposer in front of ``endpoint``, and the endpoint that goes through it."""
    layer = S3Interposer(endpoint.url)
    server = TestServer(layer.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield layer, replace(endpoint, url=str(server.make_url("")).rstrip("/"))
    finally:
        await server.close()


@pytest.fixture
async def interposer(moto_endpoint: S3Endpoint) -> AsyncIterator[tuple[S3Interposer, S3Endpoint]]:
    async with interposed(moto_endpoint) as pair:
        yield pair


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
    assert store.storage.budget.in_use == 0


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
    await first.storage.close()  # the process goes away between chunks

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
    await store.storage.cleanups.drain()
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
        f"{layout.UPLOADS}{state.id}/tail-{current.backend['tail']}"
    ]
    layer.fault = None
    await append(other, state.id, data[100:])
    await finish(other, state.id)
    assert view.get(state.key) == data


@pytest.fixture(params=["moto", pytest.param("rgw", marks=pytest.mark.real_s3)])
async def any_interposer(
    request: pytest.FixtureRequest, opened: list[S3Storage]
) -> AsyncIterator[tuple[S3Interposer, S3Endpoint, MakeStore, S3View]]:
    """An interposer in front of moto or RGW, with stores and a view of that server."""
    endpoint: S3Endpoint = request.getfixturevalue("moto_endpoint" if request.param == "moto" else "real_s3")
    bucket: str = request.getfixturevalue("moto_bucket" if request.param == "moto" else "real_bucket")
    async with interposed(endpoint) as (layer, through):
        yield layer, through, store_factory(opened, bucket), S3View(endpoint, bucket)


def copies_onto(key: str) -> Callable[[Any], bool]:
    """Whether an interposed request is the CopyObject that attaches sha256 to ``key``."""
    return lambda s: s.operation == "PUT object" and s.path.endswith("/" + key)


async def state_once_unlocked(store: S3ResumableStore, upload_id: str) -> UploadState:
    """The state, once a lease left by a failed request has run out."""
    async with asyncio.timeout(10):
        while True:
            try:
                async with store.lock(upload_id) as state:
                    return state
            except UploadLocked:
                await asyncio.sleep(0.25)


@pytest.mark.parametrize("stopped", ["before_sha256", "before_done"])
@pytest.mark.parametrize("deferred", [False, True], ids=["known-length", "deferred-length"])
async def test_a_finish_that_stopped_after_complete_is_taken_up(
    any_interposer: Any, stopped: str, deferred: bool
) -> None:
    layer, endpoint, make_store, view = any_interposer
    store = await make_store(endpoint, lease=1.0)
    pieces = [payload(3 * MiB, 1), payload(4 * MiB, 2), payload(2 * MiB + 7, 3)]
    data = b"".join(pieces)
    state = await store.create(new_upload_state(None if deferred else len(data)))
    for piece in pieces:
        state = await append(store, state.id, piece)
    if deferred:
        # The length comes last: the bytes past the first part wait in a tail,
        # which the finish sends as the last part.
        async with store.lock(state.id) as held:
            state = await store.save(replace(held, length=len(data)))
    assert bool(state.backend.get("tail")) == deferred
    # The finish completes the object, then stops where a crash would stop it.
    if stopped == "before_sha256":
        layer.fault = lambda s: 503 if copies_onto(state.key)(s) else None
    else:
        layer.fault = lambda s: (
            503
            if s.method == "PUT"
            and s.path.endswith("/state.json")
            and "CompleteMultipartUpload" in layer.operations()
            else None
        )
    # A failed save of the state can also cost the lease.
    with pytest.raises((UpstreamError, UploadLocked)):
        await finish(store, state.id)
    layer.fault = None
    assert view.get(state.key) == data
    assert not (await state_once_unlocked(store, state.id)).done

    info = await finish(await make_store(endpoint), state.id)  # as a restarted process would

    digest = hashlib.sha256(data).hexdigest()
    assert (info.size, info.sha256) == (len(data), digest)
    assert view.get(state.key) == data
    assert view.metadata(state.key)["sha256"] == digest
    assert (await store.get(state.id)).done
    assert view.internal_keys() == [state_key(state.id)]  # the tail is gone
    assert view.leftovers() == [f"upload {state.id}"]  # no multipart upload either


async def test_another_object_at_the_key_is_not_taken_for_the_upload(
    interposer: Any, make_store: MakeStore, view: S3View
) -> None:
    layer, endpoint = interposer
    store = await make_store(endpoint)
    data = payload(PART + 1000)
    state = await store.create(new_upload_state(len(data)))
    state = await append(store, state.id, data[: PART - 10])
    state = await append(store, state.id, data[PART - 10 :])
    layer.fault = lambda s: 503 if copies_onto(state.key)(s) else None
    with pytest.raises(UpstreamError):
        await finish(store, state.id)
    layer.fault = None
    # Meanwhile someone else wrote other bytes of the same size to the key.
    other = payload(len(data), seed=99)
    view.client.put_object(Bucket=view.bucket, Key=state.key, Body=other)

    with pytest.raises(UpstreamError):
        await finish(store, state.id)

    assert view.get(state.key) == other
    assert "sha256" not in view.metadata(state.key)
    assert not (await store.get(state.id)).done


async def test_terminate_leaves_nothing(
    moto_endpoint: S3Endpoint, make_store: MakeStore, view: S3View
) -> None:
    store = await make_store(moto_endpoint)
    state = await store.create(new_upload_state(3 * PART))
    await append(store, state.id, payload(PART + 10))
    # A tail written by an append whose process died before saving it.
    orphan = f"{layout.UPLOADS}{state.id}/tail-orphan"
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
        page = await store.storage.list(limit=1, cursor=cursor)
        listed += [o.key for o in page.objects]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert listed == ["+first", "z1", "z2"]
    assert [o.key for o in (await store.storage.list(limit=10)).objects] == listed


# Parts of different sizes: PATCHes of MIN_PART_SIZE or more leave no tail.

SIX = 6 * MiB


async def append_announced(
    store: S3ResumableStore, upload_id: str, data: bytes, *, announced: bool = True
) -> UploadState:
    """One PATCH whose Content-Length is known (``announced``), or a chunked one."""
    async with store.lock(upload_id) as state:
        body = UploadBody(agen(chunks(data)), state=state, expected=len(data) if announced else None)
        return await store.append(state, body)


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    pieces, start = [], 0
    for size in sizes:
        pieces.append(data[start : start + size])
        start += size
    assert start == len(data)
    return pieces


def tail_writes(layer: S3Interposer) -> list[str]:
    return [f"{s.method} {s.path}" for s in layer.seen if "/tail-" in s.path]


def part_sizes(layer: S3Interposer) -> dict[int, int]:
    """The size of each part number as last sent, by number."""
    sizes = {int(s.query["partNumber"]): s.body_size for s in layer.seen if s.operation == "UploadPart"}
    return dict(sorted(sizes.items()))


async def check_object(store: S3ResumableStore, view: S3View, upload_id: str, data: bytes) -> UploadState:
    info = await finish(store, upload_id)
    digest = hashlib.sha256(data).hexdigest()
    assert info.size == len(data) and info.sha256 == digest == view.metadata(info.key)["sha256"]
    assert view.get(info.key) == data
    assert view.internal_keys() == [state_key(upload_id)]
    assert store.storage.budget.in_use == 0
    return await store.get(upload_id)


@pytest.mark.parametrize(
    ("patches", "parts"),
    [
        # 8 MiB PATCHes: every one is a part of its own (6 MiB + the 2 MiB behind it).
        ([8 * MiB] * 5, [8 * MiB] * 5),
        # The last PATCH completes the upload: the last part, of any size.
        ([8 * MiB] * 3 + [3 * MiB], [8 * MiB] * 3 + [3 * MiB]),
        # 5 MiB + 3: under the part size, but a valid part.
        ([PART + 3] * 4 + [1000], [PART + 3] * 4 + [1000]),
        # 13 MiB: 6 MiB, then 7 MiB (1 MiB would be too small to leave behind).
        ([13 * MiB] * 2, [SIX, 7 * MiB] * 2),
    ],
)
async def test_patches_of_min_part_size_or_more_leave_no_tail(
    interposer: Any, make_store: MakeStore, view: S3View, patches: list[int], parts: list[int]
) -> None:
    layer, endpoint = interposer
    store = await make_store(endpoint, part_size=SIX, max_concurrency=2)
    data = payload(sum(patches))
    state = await store.create(new_upload_state(len(data)))
    assert state.backend["part_size"] == SIX
    for piece in split(data, patches):
        state = await append_announced(store, state.id, piece)
        assert "tail" not in state.backend
        assert view.internal_keys() == [state_key(state.id)]
        assert store.storage.budget.in_use == 0
    assert [size for _, _, size in state.backend["parts"]] == parts
    await check_object(store, view, state.id, data)
    assert tail_writes(layer) == []
    assert list(part_sizes(layer).values()) == parts


async def test_one_mib_patches_still_use_a_tail(interposer: Any, make_store: MakeStore, view: S3View) -> None:
    layer, endpoint = interposer
    store = await make_store(endpoint, part_size=SIX)
    data = payload(13 * MiB + 5)
    state = await store.create(new_upload_state(len(data)))
    for piece in chunks(data, MiB):
        state = await append_announced(store, state.id, piece)
        has_tail = state.backend.get("tail") is not None
        assert has_tail != (state.offset % (5 * MiB) == 0 or state.complete)
    await check_object(store, view, state.id, data)
    assert any(w.startswith("PUT") for w in tail_writes(layer))
    # Once 5 MiB are together they go as a part rather than as a tail again.
    assert list(part_sizes(layer).values()) == [5 * MiB, 5 * MiB, 3 * MiB + 5]


async def test_a_chunked_patch_keeps_the_part_size(
    interposer: Any, make_store: MakeStore, view: S3View
) -> None:
    layer, endpoint = interposer
    store = await make_store(endpoint, part_size=SIX)
    data = payload(4 * 8 * MiB)
    state = await store.create(new_upload_state(len(data)))
    for piece in chunks(data, 8 * MiB):
        state = await append_announced(store, state.id, piece, announced=False)
    await check_object(store, view, state.id, data)
    # 2, then 4 MiB left over; then none; the last 2 MiB end the upload as its last part.
    assert [w.split()[0] for w in tail_writes(layer)].count("PUT") == 2
    assert list(part_sizes(layer).values()) == [SIX] * 5 + [2 * MiB]


async def test_a_restart_between_patches_of_several_part_sizes(
    moto_endpoint: S3Endpoint, make_store: MakeStore, view: S3View
) -> None:
    patches = [8 * MiB, PART + 3, MiB, 8 * MiB, 2 * MiB, 9 * MiB + 1]
    data = payload(sum(patches))
    pieces = split(data, patches)
    first = await make_store(moto_endpoint, part_size=SIX)
    state = await first.create(new_upload_state(len(data)))
    for piece in pieces[:3]:
        state = await append_announced(first, state.id, piece)
    await first.storage.close()  # the process goes away between chunks
    assert [size for _, _, size in state.backend["parts"]] == [8 * MiB, PART + 3]
    assert state.backend["tail"]  # the 1 MiB

    second = await make_store(moto_endpoint, part_size=SIX)
    for piece in pieces[3:]:
        state = await append_announced(second, state.id, piece)
    # 1 + 8 MiB; 2 MiB (a tail); 2 + 9 MiB + 1 = a part of 6 MiB and the last one.
    assert [size for _, _, size in state.backend["parts"]] == [8 * MiB, PART + 3, 9 * MiB, SIX, PART + 1]
    await check_object(second, view, state.id, data)


async def test_a_cut_off_patch_sends_what_makes_a_part(
    moto_endpoint: S3Endpoint, make_store: MakeStore, view: S3View
) -> None:
    store = await make_store(moto_endpoint, part_size=SIX)
    data = payload(4 * 8 * MiB)
    state = await store.create(new_upload_state(len(data)))
    cut = 7 * MiB + 12345  # into the 2 MiB that the first part takes on
    async with store.lock(state.id) as held:
        body = UploadBody(
            cut_off_body(data[: 8 * MiB], cut, ConnectionResetError()), state=held, expected=8 * MiB
        )
        with pytest.raises(ConnectionResetError):
            await store.append(held, body)
    kept = await store.get(state.id)
    assert kept.offset == cut and "tail" not in kept.backend
    assert [size for _, _, size in kept.backend["parts"]] == [cut]
    assert store.storage.budget.in_use == 0
    for piece in chunks(data[cut:], 8 * MiB):
        await append_announced(store, state.id, piece)
    await check_object(store, view, state.id, data)


async def test_cancelled_while_a_part_waits_keeps_every_byte_taken(
    interposer: Any, make_store: MakeStore, view: S3View
) -> None:
    """Cancelled with a chunk taken (and hashed) but not all of it buffered yet."""
    layer, endpoint = interposer
    layer.delays["UploadPart"] = 1.0
    store = await make_store(endpoint, max_concurrency=1)
    data = payload(3 * PART)
    state = await store.create(new_upload_state(len(data)))
    bodies: list[UploadBody] = []

    async def patch() -> None:
        async with store.lock(state.id) as held:
            bodies.append(UploadBody(agen(chunks(data, 3 * MiB)), state=held))
            await store.append(held, bodies[0])

    task = asyncio.create_task(patch())
    # Four chunks of 3 MiB taken: the second part is full with 2 MiB over while the
    # first is still on its way, so the append waits for a slot.
    taken = 4 * 3 * MiB
    async with asyncio.timeout(10):
        while not (bodies and bodies[0].taken == taken and layer.parts_in_flight == 1):
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.storage.cleanups.drain()
    kept = await store.get(state.id)
    assert kept.offset == taken
    assert ResumableSha256(kept.sha256).hexdigest() == hashlib.sha256(data[:taken]).hexdigest()
    layer.delays.clear()
    await append(store, state.id, data[taken:])
    await check_object(store, view, state.id, data)


@pytest.mark.real_s3
async def test_parts_of_several_sizes_on_real_s3(
    real_s3: S3Endpoint, real_bucket: str, opened: list[S3Storage]
) -> None:
    make = store_factory(opened, real_bucket)
    view = S3View(real_s3, real_bucket)
    patches = [8 * MiB, PART + 3, 8 * MiB, MiB, 8 * MiB, 3 * MiB + 7]
    data = payload(sum(patches))
    store = await make(real_s3, lease=3.0, part_size=SIX)
    state = await store.create(new_upload_state(len(data)))
    for i, piece in enumerate(split(data, patches)):
        if i == 3:
            store = await make(real_s3, lease=3.0, part_size=SIX)  # another process
        state = await append_announced(store, state.id, piece)
    # The 1 MiB PATCH went to a tail, and into the next part; the last PATCH is the last part.
    assert [size for _, _, size in state.backend["parts"]] == [
        8 * MiB,
        PART + 3,
        8 * MiB,
        9 * MiB,
        3 * MiB + 7,
    ]
    assert "tail" not in state.backend
    await check_object(store, view, state.id, data)


# The decisions themselves, pure: never more than max_parts parts, no part but the
# last under MIN_PART_SIZE, every byte in exactly one part.


@given(
    size=st.sampled_from([PART, SIX, 8 * MiB, PART + 1]),
    buffered=st.integers(0, 16 * MiB),
    to_come=st.none() | st.integers(0, 32 * MiB),
)
def test_part_target_leaves_no_small_rest(size: int, buffered: int, to_come: int | None) -> None:
    target = part_target(size, buffered, to_come)
    if buffered >= size:
        assert target == buffered
        return
    assert size <= target <= min(size + MIN_PART_SIZE - 1, MAX_PART_SIZE)
    if to_come is not None:
        rest = buffered + to_come - target
        assert rest <= 0 or rest >= MIN_PART_SIZE


def simulate(
    length: int, part_size: int, patches: list[tuple[int, int | None]], max_parts: int
) -> tuple[list[int], bool]:
    """What _Append and _finish do with an upload of known length, in sizes only:
    the part sizes it ends with and whether it was one PutObject. Each PATCH is
    (bytes that arrive, Content-Length or None)."""
    parts: list[int] = []
    tail = offset = 0
    for sent, expected in patches:
        buf, consumed = tail, 0
        target = part_target(part_size, buf, expected)
        while True:
            if buf >= target:
                parts.append(buf)
                buf = 0
                target = part_target(part_size, 0, None if expected is None else expected - consumed)
            if consumed == sent:
                break
            step = min(target - buf, sent - consumed)
            buf, consumed = buf + step, consumed + step
        offset += sent
        number = len(parts) + 1
        if leftover_is_part(
            buffered=buf,
            number=number,
            part_size=part_size,
            growing=False,
            length=length,
            end=offset,
            max_parts=max_parts,
        ):
            parts.append(buf)
            buf = 0
        tail = buf
    assert offset == length
    if not parts:
        return [tail], True
    if tail:
        parts.append(tail)
    return parts, False


# Not much under 1 MiB: the simulation takes one step per PATCH.
patch_sizes = st.sampled_from(
    [MiB // 3, MiB, PART - 1, PART, PART + 3, SIX, 8 * MiB, 11 * MiB, 13 * MiB, 40 * MiB]
)


@given(
    max_parts=st.integers(1, 40),
    part_size=st.sampled_from([PART, SIX, 8 * MiB]),
    fill=st.floats(0.01, 1.0),
    cycle=st.lists(st.tuples(patch_sizes, st.sampled_from(["announced", "chunked", "cut"])), min_size=1),
)
@settings(deadline=None)
@example(max_parts=MAX_PARTS, part_size=SIX, fill=1.0, cycle=[(PART + 3, "announced")])
@example(max_parts=MAX_PARTS, part_size=SIX, fill=0.999, cycle=[(8 * MiB, "announced"), (PART, "cut")])
def test_parts_stay_valid_and_within_max_parts(
    max_parts: int, part_size: int, fill: float, cycle: list[tuple[int, str]]
) -> None:
    # An upload that part_size_for_known_size would give this part size.
    length = max(1, int(max_parts * part_size * fill))
    patches: list[tuple[int, int | None]] = []
    offset, i = 0, 0
    while offset < length:
        size, kind = cycle[i % len(cycle)]
        i += 1
        size = min(size, length - offset)
        if kind == "cut" and size > 1:
            patches.append((size // 2, size))  # announced, then cut off halfway
            size //= 2
        else:
            patches.append((size, size if kind == "announced" else None))
        offset += size
    parts, single = simulate(length, part_size, patches, max_parts)
    assert sum(parts) == length
    if single:
        assert length <= part_size + MIN_PART_SIZE - 1
        return
    assert len(parts) <= max_parts
    assert all(p >= MIN_PART_SIZE for p in parts[:-1])
    assert all(p <= min(part_size + MIN_PART_SIZE - 1, MAX_PART_SIZE) for p in parts)


def test_a_leftover_that_would_need_too_many_parts_stays_a_tail() -> None:
    decide = {"part_size": SIX, "growing": False, "max_parts": 10}
    # 10 parts of 6 MiB: a 5 MiB part now would leave 55 MiB for 9 parts of 6 MiB.
    length = 60 * MiB
    assert not leftover_is_part(buffered=PART, number=1, length=length, end=PART, **decide)
    assert leftover_is_part(buffered=PART, number=1, length=length - MiB, end=PART, **decide)
    # Too small, growing, unknown length, or all one PutObject: a tail.
    assert not leftover_is_part(buffered=PART - 1, number=1, length=length - MiB, end=PART - 1, **decide)
    assert not leftover_is_part(
        buffered=PART, number=1, length=length, end=PART, **{**decide, "growing": True}
    )
    assert not leftover_is_part(buffered=PART, number=1, length=None, end=PART, **decide)
    assert not leftover_is_part(buffered=PART + 1, number=1, length=PART + 1, end=PART + 1, **decide)
    # The end of the upload: its last part, once there is a part before it.
    assert leftover_is_part(buffered=1, number=2, length=SIX + 1, end=SIX + 1, **decide)
    assert not leftover_is_part(buffered=1, number=1, length=SIX + 1, end=SIX + 1, **decide)
