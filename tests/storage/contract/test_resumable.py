"""The ResumableStore promises (proxy/storage/resumable.py), held on every backend alike.

Each test runs on the local directory, S3 on moto, S3 on Ceph RGW and the in-memory
fake. Uploads are driven as the tus handler drives them (every change under
``lock``), and judged by what a client can see: the state ``get`` returns, the
object a finished upload becomes, the errors raised, and what is left behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from proxy.rules.tus import Checksum
from proxy.storage.base import ObjectNotFound
from proxy.storage.resumable import ChecksumMismatch, UploadBody, UploadLocked, UploadNotFound, UploadState
from proxy.streaming.bodies import BodyTooLarge
from proxy.streaming.sha256_state import ResumableSha256
from tests.conftest import MiB, new_upload_state
from tests.storage.contract.conftest import (
    PART,
    Subject,
    append,
    body_of,
    cut_off,
    finish,
    listed,
    payload,
    pieces,
    public,
    read,
    sha256,
    split,
)


def digest_of(state: UploadState) -> str:
    return ResumableSha256(state.sha256).hexdigest()


async def check_object(subject: Subject, key: str, data: bytes, content_type: str = "video/mp4") -> None:
    """The object ``key`` holds ``data``, with its SHA-256 and content type."""
    stat = await subject.objects.stat(key)
    assert (stat.size, stat.sha256, stat.content_type) == (len(data), sha256(data), content_type)
    assert await read(subject.objects, key, etag=stat.etag) == data


async def test_create_and_get_round_trip(subject: Subject) -> None:
    made = [
        replace(new_upload_state(length), metadata="filename Y2xpcC5tcDQ=,filetype dmlkZW8vbXA0")
        for length in (None, 0, 10 * PART)
    ]
    for state in made:
        created = await subject.uploads.create(state)
        assert public(created) == public(state)
        got = await subject.uploads.get(state.id)
        assert got == created
        assert public(got) == public(state)
        assert (got.offset, got.done, digest_of(got)) == (0, False, sha256(b""))
    assert sorted(await subject.uploads.upload_ids()) == sorted(s.id for s in made)
    # Nothing of an upload is an object.
    assert await listed(subject.objects) == []


async def test_an_unknown_upload_is_not_found(subject: Subject) -> None:
    await subject.uploads.create(new_upload_state())
    unknown = uuid.uuid4().hex
    with pytest.raises(UploadNotFound):
        await subject.uploads.get(unknown)
    with pytest.raises(UploadNotFound):
        async with subject.uploads.lock(unknown):
            pass
    assert unknown not in await subject.uploads.upload_ids()


# Around the local write block (1 MiB) and the S3 part (5 MiB), none a multiple of either.
ODD_SIZES = [1, 4095, MiB + 7, PART + 3, 3, 2 * MiB - 1]


@pytest.mark.parametrize("known_length", [True, False], ids=["known-length", "deferred-length"])
async def test_appends_of_odd_sizes_then_finish(subject: Subject, known_length: bool) -> None:
    uploads = subject.uploads
    data = payload(sum(ODD_SIZES))
    state = await uploads.create(new_upload_state(len(data) if known_length else None))
    assert await uploads.upload_ids() == [state.id]
    offset = 0
    for piece in split(data, ODD_SIZES):
        # Each request's body arrives in network chunks of an odd size of its own.
        state = await append(uploads, state.id, body_of(pieces(piece, 65_537)))
        offset += len(piece)
        assert state.offset == offset
        assert digest_of(state) == sha256(data[:offset])
        assert public(await uploads.get(state.id)) == public(state)
    # Nothing is visible before finish.
    with pytest.raises(ObjectNotFound):
        await subject.objects.stat(state.key)
    assert await listed(subject.objects) == []
    if not known_length:
        async with uploads.lock(state.id) as held:
            await uploads.save(replace(held, length=len(data)))

    info = await finish(uploads, state.id)
    assert (info.key, info.size, info.sha256, info.content_type) == (
        state.key,
        len(data),
        sha256(data),
        "video/mp4",
    )
    assert (await subject.objects.stat(state.key)).etag == info.etag
    await check_object(subject, state.key, data)
    # The done state stays, so that the client still learns the upload is complete.
    done = await uploads.get(state.id)
    assert done.done and done.offset == len(data) and done.length == len(data)
    assert subject.leftovers() == [f"upload {state.id}"]

    async with uploads.lock(state.id) as held:
        await uploads.terminate(held)
    assert subject.leftovers() == []
    assert await uploads.upload_ids() == []
    await check_object(subject, state.key, data)  # the object is no longer the upload's


async def test_an_empty_upload(subject: Subject) -> None:
    state = await subject.uploads.create(replace(new_upload_state(0, key="empty"), content_type="text/plain"))
    assert state.complete
    info = await finish(subject.uploads, state.id)
    assert (info.size, info.sha256) == (0, sha256(b""))
    await check_object(subject, "empty", b"", "text/plain")
    assert (await subject.uploads.get(state.id)).done


async def test_any_process_continues_the_upload(subject: Subject) -> None:
    sizes = [PART + 3, 5, 2 * MiB + 1, 2 * MiB + 1, PART + 1]
    data = payload(sum(sizes), seed=3)
    first, *rest = split(data, sizes)
    one = await subject.another()
    state = await one.uploads.create(new_upload_state(len(data)))
    await append(one.uploads, state.id, body_of([first]))
    await one.close()  # the process goes away between chunks

    # A restarted process and another one sharing the storage take turns.
    restarted, other = await subject.another(), await subject.another()
    assert (await restarted.uploads.get(state.id)).offset == len(first)
    for i, piece in enumerate(rest):
        await append((restarted, other)[i % 2].uploads, state.id, body_of(pieces(piece)))
    info = await finish(other.uploads, state.id)
    assert info.sha256 == sha256(data)
    await check_object(subject, state.key, data)


@pytest.mark.parametrize(
    "error", [ConnectionResetError("client gone"), asyncio.CancelledError()], ids=["reset", "cancelled"]
)
async def test_a_cut_off_body_keeps_exactly_what_was_taken(subject: Subject, error: BaseException) -> None:
    data = payload(2 * PART + 100)
    state = await subject.uploads.create(new_upload_state(len(data)))
    await append(subject.uploads, state.id, body_of([data[:10]]))
    cut = PART + 12345  # S3: past a part; locally the last byte is less than a write block
    with pytest.raises(type(error)):
        await append(subject.uploads, state.id, cut_off([data[10 : cut - 1], data[cut - 1 : cut]], error))
    kept = await subject.uploads.get(state.id)
    assert kept.offset == cut
    assert digest_of(kept) == sha256(data[:cut])
    # The next chunk goes on from there, and the hash covers every byte once.
    await append(subject.uploads, state.id, body_of(pieces(data[cut:])))
    info = await finish(subject.uploads, state.id)
    assert info.sha256 == sha256(data)
    await check_object(subject, state.key, data)


async def test_a_cancelled_append_keeps_what_was_taken(subject: Subject) -> None:
    data = payload(2 * PART)
    state = await subject.uploads.create(new_upload_state(len(data)))
    taken = PART + 777
    given = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        for chunk in pieces(data[:taken], 100_000):
            yield chunk
        given.set()
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(append(subject.uploads, state.id, stalling()))
    async with asyncio.timeout(30):
        await given.wait()
    task.cancel()  # as aiohttp cancels a handler whose client has gone
    with pytest.raises(asyncio.CancelledError):
        await task
    kept = await subject.uploads.get(state.id)
    assert kept.offset == taken
    assert digest_of(kept) == sha256(data[:taken])
    await append(subject.uploads, state.id, body_of(pieces(data[taken:])))
    await finish(subject.uploads, state.id)
    await check_object(subject, state.key, data)


REFUSALS = {
    # A chunk with a checksum cannot be verified when it is cut off: none of it counts.
    "checksum-cut-off": (
        {"checksum": Checksum("sha1", hashlib.sha1(b"whatever").digest())},
        ConnectionResetError(),
        ConnectionResetError,
    ),
    "checksum-mismatch": (
        {"checksum": Checksum("md5", hashlib.md5(b"other").digest())},
        None,
        ChecksumMismatch,
    ),
    "too-large": ({"limit": PART + 10}, None, BodyTooLarge),
}


@pytest.mark.parametrize(("options", "error", "raised"), REFUSALS.values(), ids=REFUSALS.keys())
async def test_a_refused_or_unverifiable_chunk_keeps_nothing(
    subject: Subject, options: dict[str, Any], error: BaseException | None, raised: type[BaseException]
) -> None:
    data = payload(3 * PART)
    state = await subject.uploads.create(new_upload_state(None))
    await append(subject.uploads, state.id, body_of([b"kept"]))
    # More than a part: S3 has sent one by the time the chunk is refused.
    chunks = [data[: PART + 5], b"and past the limit"]
    body = cut_off(chunks, error) if error is not None else body_of(chunks)
    with pytest.raises(raised):
        await append(subject.uploads, state.id, body, **options)
    kept = await subject.uploads.get(state.id)
    assert kept.offset == 4
    assert digest_of(kept) == sha256(b"kept")
    assert await listed(subject.objects) == []
    # The chunk is simply sent again.
    state = await append(subject.uploads, state.id, body_of(pieces(data)))
    async with subject.uploads.lock(state.id) as held:
        await subject.uploads.finish(await subject.uploads.save(replace(held, length=held.offset)))
    await check_object(subject, state.key, b"kept" + data)


async def test_a_matching_checksum_is_kept(subject: Subject) -> None:
    data = payload(PART + 1)
    state = await subject.uploads.create(new_upload_state(len(data) + 5))
    checksum = Checksum("sha256", hashlib.sha256(b"chunk").digest())
    state = await append(subject.uploads, state.id, body_of([b"ch", b"", b"unk"]), checksum=checksum)
    assert state.offset == 5
    checksum = Checksum("sha1", hashlib.sha1(data).digest())
    state = await append(subject.uploads, state.id, body_of(pieces(data)), checksum=checksum)
    assert (await subject.uploads.get(state.id)).offset == len(data) + 5
    await finish(subject.uploads, state.id)
    await check_object(subject, state.key, b"chunk" + data)


async def test_one_writer_at_a_time(subject: Subject) -> None:
    uploads = subject.uploads
    state = await uploads.create(new_upload_state(10))
    other = await subject.another()
    async with uploads.lock(state.id) as held:
        assert public(held) == public(state)
        # Refused at once, whether in this process or in another one.
        for contender in (uploads, other.uploads):
            with pytest.raises(UploadLocked):
                async with asyncio.timeout(5), contender.lock(state.id):
                    pass
        await uploads.append(held, UploadBody(body_of([b"01234"]), state=held))
    async with other.uploads.lock(state.id) as held:
        assert held.offset == 5
        with pytest.raises(UploadLocked):
            async with uploads.lock(state.id):
                pass
    # Let go on the way out, errors included.
    with pytest.raises(RuntimeError):
        async with uploads.lock(state.id):
            raise RuntimeError("the request failed")
    async with uploads.lock(state.id) as held:
        assert public(held) == public(await uploads.get(state.id))


async def test_save_keeps_changed_fields(subject: Subject) -> None:
    state = await subject.uploads.create(new_upload_state(None))
    async with subject.uploads.lock(state.id) as held:
        changed = replace(held, length=99, expires=held.expires + 60)
        saved = await subject.uploads.save(changed)
        assert public(saved) == public(changed)
    assert public(await subject.uploads.get(state.id)) == public(changed)
    # And they survive an append.
    await append(subject.uploads, state.id, body_of([b"abc"]))
    after = await subject.uploads.get(state.id)
    assert (after.length, after.expires, after.offset) == (99, changed.expires, 3)


async def test_terminate_leaves_nothing(subject: Subject) -> None:
    kept = await subject.uploads.create(new_upload_state(None))
    await append(subject.uploads, kept.id, body_of([b"another upload's bytes"]))
    state = await subject.uploads.create(new_upload_state(3 * PART))
    # S3: a multipart upload with a part, and a tail.
    await append(subject.uploads, state.id, body_of(pieces(payload(PART + 10))))
    async with subject.uploads.lock(state.id) as held:
        await subject.uploads.terminate(held)
    assert subject.leftovers() == [f"upload {kept.id}"]
    assert await subject.uploads.upload_ids() == [kept.id]
    with pytest.raises(UploadNotFound):
        await subject.uploads.get(state.id)
    with pytest.raises(UploadNotFound):
        async with subject.uploads.lock(state.id):
            pass
    with pytest.raises(ObjectNotFound):
        await subject.objects.stat(state.key)
    assert (await subject.uploads.get(kept.id)).offset == len(b"another upload's bytes")
