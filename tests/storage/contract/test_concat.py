"""tus concatenation in the ResumableStore (seal, concatenate), on every backend alike.

Partial uploads are written and sealed as the tus handler does it, then assembled
into a final by ``concatenate`` while held; judged by the object's bytes and
recorded SHA-256, the final's state, and what is left of the partials.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace

import pytest

from proxy.storage.base import StorageError
from proxy.storage.expiry import sweep
from proxy.storage.resumable import UploadBody, UploadNotFound, UploadState
from proxy.streaming.sha256_state import ResumableSha256
from tests.conftest import MiB, new_upload_state
from tests.storage.contract.conftest import Subject, body_of, listed, payload, pieces, read, sha256


async def partial(subject: Subject, data: bytes) -> UploadState:
    """A sealed partial upload holding ``data``."""
    state = await subject.uploads.create(replace(new_upload_state(len(data)), concat="partial"))
    async with subject.uploads.lock(state.id) as held:
        if data:
            held = await subject.uploads.append(held, UploadBody(body_of(pieces(data)), state=held))
        assert held.complete
        held = await subject.uploads.seal(held)
    return held


def final_state(length: int, key: str = "videos/whole.mp4") -> UploadState:
    state = replace(new_upload_state(length, key=key), concat="final;/uploads/x", offset=length, done=True)
    return replace(state, metadata="filename d2hvbGUubXA0")


async def concatenate(subject: Subject, final: UploadState, ids: list[str]) -> None:
    async with contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(subject.uploads.lock(i)) for i in ids]
        await subject.uploads.concatenate(final, held)


async def check_final(subject: Subject, final: UploadState, data: bytes, used: list[UploadState]) -> None:
    stat = await subject.objects.stat(final.key)
    assert (stat.size, stat.sha256, stat.content_type) == (len(data), sha256(data), "video/mp4")
    assert await read(subject.objects, final.key) == data
    stored = await subject.uploads.get(final.id)
    assert (stored.done, stored.offset, stored.length, stored.concat) == (
        True,
        len(data),
        len(data),
        final.concat,
    )
    assert ResumableSha256(stored.sha256).hexdigest() == sha256(data)
    # The partials are gone, bytes and all: only the final is left of the uploads.
    for gone in used:
        with pytest.raises(UploadNotFound):
            await subject.uploads.get(gone.id)
    assert await subject.uploads.upload_ids() == [final.id]
    assert subject.leftovers() == [f"upload {final.id}"]
    assert [o.key for o in await listed(subject.objects)] == [final.key]


async def test_partials_out_of_order_make_one_object(subject: Subject) -> None:
    # Large and small partials mixed (on S3: copied ones and ones sent as bytes), one
    # empty; created in one order, written in another, named in a third.
    data = [
        payload(size, seed) for seed, size in enumerate([6 * MiB + 5, 1 * MiB + 3, 0, 7 * MiB, 2 * MiB + 1])
    ]
    made = [await subject.uploads.create(replace(new_upload_state(len(d)), concat="partial")) for d in data]
    for index in (3, 0, 4, 2, 1):
        async with subject.uploads.lock(made[index].id) as held:
            if data[index]:
                held = await subject.uploads.append(
                    held, UploadBody(body_of(pieces(data[index])), state=held)
                )
            await subject.uploads.seal(held)
    # HEAD's view of a sealed partial: complete, done, still a partial, no object.
    sealed = await subject.uploads.get(made[0].id)
    assert (sealed.partial, sealed.done, sealed.offset) == (True, True, len(data[0]))
    order = [4, 1, 3, 0, 2]
    whole = b"".join(data[i] for i in order)
    final = final_state(len(whole))
    await concatenate(subject, final, [made[i].id for i in order])
    await check_final(subject, final, whole, made)


async def test_large_partials(subject: Subject) -> None:
    # Every partial over S3's part minimum: on S3 all of it is copied server-side.
    data = [payload(6 * MiB + n, n) for n in range(3)]
    parts = [await partial(subject, d) for d in data]
    whole = data[2] + data[0] + data[1]
    final = final_state(len(whole))
    await concatenate(subject, final, [parts[2].id, parts[0].id, parts[1].id])
    await check_final(subject, final, whole, parts)


async def test_small_partials(subject: Subject) -> None:
    data = [payload(n * 100_000 + 1, n) for n in range(1, 5)]
    parts = [await partial(subject, d) for d in data]
    whole = b"".join(data)
    final = final_state(len(whole))
    await concatenate(subject, final, [p.id for p in parts])
    await check_final(subject, final, whole, parts)


async def test_empty_partials_make_an_empty_object(subject: Subject) -> None:
    parts = [await partial(subject, b"") for _ in range(2)]
    final = final_state(0)
    await concatenate(subject, final, [p.id for p in parts])
    await check_final(subject, final, b"", parts)


async def test_an_unfinished_partial_is_refused_and_nothing_changes(subject: Subject) -> None:
    done = await partial(subject, payload(1000, 1))
    unfinished = await subject.uploads.create(replace(new_upload_state(2000), concat="partial"))
    async with subject.uploads.lock(unfinished.id) as held:
        await subject.uploads.append(held, UploadBody(body_of([payload(500, 2)]), state=held))
    with pytest.raises(StorageError):
        await concatenate(subject, final_state(1500), [done.id, unfinished.id])
    assert await listed(subject.objects) == []
    assert sorted(await subject.uploads.upload_ids()) == sorted([done.id, unfinished.id])
    assert (await subject.uploads.get(done.id)).done


async def test_a_sealed_partial_is_removed_by_termination_and_expiry(subject: Subject) -> None:
    terminated = await partial(subject, payload(6 * MiB, 1))
    expiring = await partial(subject, payload(100, 2))
    async with subject.uploads.lock(terminated.id) as held:
        await subject.uploads.terminate(held)
    assert await subject.uploads.upload_ids() == [expiring.id]
    assert await sweep(subject.uploads, now=time.time() + 7200) == 1
    # Nothing of either is left: no state, no bytes, no internal object.
    assert await subject.uploads.upload_ids() == []
    assert subject.leftovers() == []
    assert await listed(subject.objects) == []
