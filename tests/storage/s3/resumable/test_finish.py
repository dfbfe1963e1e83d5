"""Publishing a finished upload, and taking up a finish that stopped
(proxy/storage/s3/resumable/finish.py), on moto and Ceph RGW."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from proxy.storage import layout
from proxy.storage.base import UpstreamError
from proxy.storage.resumable import UploadLocked, UploadState
from proxy.storage.s3.objects import S3Storage
from proxy.storage.s3.resumable.store import S3ResumableStore
from tests.conftest import MiB, S3Endpoint, S3View, new_upload_state
from tests.s3_interposer import S3Interposer
from tests.storage.s3.resumable.support import (
    PART,
    MakeStore,
    append,
    finish,
    interposed,
    payload,
    state_key,
    store_factory,
)


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
    """Whether an interposed request is the CopyObject that publishes ``key``."""
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


@pytest.mark.alone
@pytest.mark.parametrize("stopped", ["before_publish", "before_done"])
@pytest.mark.parametrize("deferred", [False, True], ids=["known-length", "deferred-length"])
async def test_a_finish_that_stopped_after_complete_is_taken_up(
    any_interposer: Any, stopped: str, deferred: bool
) -> None:
    layer, endpoint, make_store, view = any_interposer
    # Short, so that the lease a failed finish leaves runs out soon; long enough that
    # appends to RGW on a loaded machine (two test workers) keep it renewed.
    store = await make_store(endpoint, lease=3.0)
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
    if stopped == "before_publish":
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
    if stopped == "before_publish":
        # Assembled at the upload's own key, not yet at the object's.
        assert view.get(layout.upload_object_key(state.id)) == data
        assert view.keys() == []  # nothing at the object's key yet
    else:
        assert view.get(state.key) == data
    assert not (await state_once_unlocked(store, state.id)).done

    info = await finish(await make_store(endpoint), state.id)  # as a restarted process would

    digest = hashlib.sha256(data).hexdigest()
    assert (info.size, info.sha256) == (len(data), digest)
    assert view.get(state.key) == data
    assert view.metadata(state.key)["sha256"] == digest
    assert (await store.get(state.id)).done
    assert view.internal_keys() == [state_key(state.id)]  # the tail and staging object are gone
    assert view.leftovers() == [f"upload {state.id}"]  # no multipart upload either


async def test_a_finish_taken_up_after_another_write_publishes_its_own_bytes(
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
    # Meanwhile someone else wrote other bytes of the same size to the key: they are
    # neither taken for this upload's nor labelled with its hash.
    other = payload(len(data), seed=99)
    view.client.put_object(Bucket=view.bucket, Key=state.key, Body=other)
    assert "sha256" not in view.metadata(state.key)

    info = await finish(store, state.id)

    digest = hashlib.sha256(data).hexdigest()
    assert info.sha256 == digest
    assert view.get(state.key) == data  # the finish came last, so its version is there
    assert view.metadata(state.key)["sha256"] == digest
    assert (await store.get(state.id)).done
    assert view.internal_keys() == [state_key(state.id)]


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
