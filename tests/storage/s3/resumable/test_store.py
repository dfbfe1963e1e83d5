"""The S3 resumable store as a whole (proxy/storage/s3/resumable/store.py): a round trip
seen in the bucket, and termination."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest

from proxy.storage import layout
from proxy.storage.resumable import UploadNotFound
from proxy.storage.s3.objects import S3Storage
from proxy.storage.s3.resumable.store import S3ResumableStore
from tests.conftest import MiB, S3Endpoint, S3View, new_upload_state
from tests.storage.s3.resumable.support import (
    PART,
    MakeStore,
    append,
    finish,
    payload,
    state_key,
    store_factory,
)

ODD_SIZES = [1 * MiB, PART + 3, 7, 1 * MiB, PART + 3, 2 * PART + 1]


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
    assert all(p.payload_size == PART for p in parts[:-1])
    assert layer.max_parts_in_flight <= 2


@pytest.mark.real_s3
async def test_round_trip_on_real_s3(real_s3: S3Endpoint, real_bucket: str, opened: list[S3Storage]) -> None:
    store = await store_factory(opened, real_bucket)(real_s3, lease=3.0)
    await round_trip(store, S3View(real_s3, real_bucket), known_length=True)


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
