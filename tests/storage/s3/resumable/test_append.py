"""PATCH bodies on their way into parts and tails (proxy/storage/s3/resumable/append.py)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.rules.tus import Checksum
from proxy.storage.resumable import ChecksumMismatch, UploadBody, UploadState
from proxy.storage.s3.objects import S3Storage
from proxy.storage.s3.resumable.store import S3ResumableStore
from proxy.streaming.bodies import BodyTooLarge
from proxy.streaming.sha256_state import ResumableSha256
from tests.conftest import MiB, S3Endpoint, S3View, new_upload_state, wait_until
from tests.s3_interposer import S3Interposer
from tests.storage.s3.resumable.support import (
    PART,
    SIX,
    MakeStore,
    agen,
    append,
    chunks,
    cut_off_body,
    finish,
    payload,
    state_key,
    store_factory,
)


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

    async def a_part_sent_first(part_of: bytes) -> AsyncIterator[bytes]:
        """The chunks, waiting past the first part for it to reach S3: the refusal
        that follows would otherwise cut it off (parts go out in pieces)."""
        given = 0
        for chunk in chunks(part_of):
            if given >= PART:
                await wait_until(lambda: "UploadPart" in layer.operations())
            yield chunk
            given += len(chunk)

    async with store.lock(state.id) as held:
        if refusal == "checksum":
            checksum = Checksum("sha1", hashlib.sha1(b"other bytes").digest())
            body = UploadBody(a_part_sent_first(data[1000 : 2 * PART]), state=held, checksum=checksum)
            error: type[Exception] = ChecksumMismatch
        else:
            body = UploadBody(a_part_sent_first(data[1000:]), state=held, limit=PART + 10)
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


# Parts of different sizes: PATCHes of MIN_PART_SIZE or more leave no tail.


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
    sizes = {int(s.query["partNumber"]): s.payload_size for s in layer.seen if s.operation == "UploadPart"}
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
