"""tus concatenation on S3 (proxy/storage/s3/resumable/concat.py), seen at the HTTP
level: large partials copied by S3 with no byte through the proxy, small ones sent,
and a failure that leaves nothing behind."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import replace
from typing import Any

import pytest

from proxy.storage import layout
from proxy.storage.base import UpstreamError
from proxy.storage.resumable import UploadState
from proxy.storage.s3.resumable.store import S3ResumableStore
from tests.conftest import S3Endpoint, S3View, new_upload_state
from tests.s3_interposer import S3Interposer, Seen
from tests.storage.s3.resumable.support import SIX, MakeStore, append, payload, state_key


async def sealed(store: S3ResumableStore, data: bytes) -> UploadState:
    state = await store.create(replace(new_upload_state(len(data)), concat="partial"))
    await append(store, state.id, data)
    async with store.lock(state.id) as held:
        return await store.seal(held)


async def concatenate(store: S3ResumableStore, ids: list[str], length: int) -> UploadState:
    final = replace(new_upload_state(length), concat="final;/uploads/x", offset=length, done=True)
    async with contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(store.lock(i)) for i in ids]
        await store.concatenate(final, held)
    return final


def calls(layer: S3Interposer, since: int) -> list[Seen]:
    return [s for s in layer.seen[since:] if not s.is_writer_upkeep]


def on_object(seen: Seen, upload_id: str) -> bool:
    return seen.path.endswith("/" + layout.upload_object_key(upload_id))


async def test_large_partials_are_copied_by_s3(
    interposer: tuple[S3Interposer, S3Endpoint], make_store: MakeStore, view: S3View
) -> None:
    layer, endpoint = interposer
    store = await make_store(endpoint)
    data = [payload(SIX + n, n) for n in range(3)]
    parts = [await sealed(store, d) for d in data]
    since = len(layer.seen)
    final = await concatenate(store, [p.id for p in parts], sum(map(len, data)))
    whole = b"".join(data)
    assert view.get(final.key) == whole
    assert view.metadata(final.key)["sha256"] == hashlib.sha256(whole).hexdigest()
    seen = calls(layer, since)
    part_calls = [s for s in seen if s.operation == "UploadPart"]
    # One UploadPartCopy per partial, each without a body: S3 copied the bytes.
    assert len(part_calls) == 3 and all(s.body_size == 0 for s in part_calls)
    # The first partial is never read (its saved hash state is where hashing starts);
    # the others are read once, for the hash.
    reads = [s for s in seen if s.method == "GET"]
    assert not any(on_object(s, parts[0].id) for s in reads)
    assert sorted(p.id for p in parts[1:] for s in reads if on_object(s, p.id)) == sorted(
        p.id for p in parts[1:]
    )
    # What the proxy sent upstream is requests, not the object's bytes.
    assert sum(s.body_size for s in seen) < 64 * 1024


async def test_small_partials_are_sent_as_parts(
    interposer: tuple[S3Interposer, S3Endpoint], make_store: MakeStore, view: S3View
) -> None:
    layer, endpoint = interposer
    store = await make_store(endpoint)
    data = [payload(2 * 1024 * 1024 + n, n) for n in range(4)]  # 8 MiB in all: two parts
    parts = [await sealed(store, d) for d in data]
    since = len(layer.seen)
    final = await concatenate(store, [p.id for p in reversed(parts)], sum(map(len, data)))
    whole = b"".join(reversed(data))
    assert view.get(final.key) == whole
    sent = [s.payload_size for s in calls(layer, since) if s.operation == "UploadPart"]
    assert sorted(sent) == sorted([5 * 1024 * 1024, len(whole) - 5 * 1024 * 1024])


async def test_a_failed_copy_leaves_no_object_and_the_partials(
    interposer: tuple[S3Interposer, S3Endpoint], make_store: MakeStore, view: S3View
) -> None:
    layer, endpoint = interposer
    store = await make_store(endpoint)
    parts = [await sealed(store, payload(SIX, n)) for n in range(2)]

    def refuse_copies(seen: Seen) -> int | None:
        return 500 if seen.operation == "UploadPart" else None

    layer.fault = refuse_copies
    with pytest.raises(UpstreamError):
        await concatenate(store, [p.id for p in parts], 2 * SIX)
    layer.fault = None
    # No object, no multipart upload, no staging object: only the partials, intact.
    assert view.keys() == []
    assert view.leftovers() == sorted(f"upload {p.id}" for p in parts)
    internal = [k for k in view.internal_keys() if not k.startswith(layout.WRITERS)]
    expected: list[Any] = sorted(k for p in parts for k in (state_key(p.id), layout.upload_object_key(p.id)))
    assert internal == expected
    final = await concatenate(store, [p.id for p in parts], 2 * SIX)
    assert view.get(final.key) == payload(SIX, 0) + payload(SIX, 1)
