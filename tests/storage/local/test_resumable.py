"""Resumable uploads in the local backend: real files, restarts, cut-off chunks, locks."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from proxy.rules.tus import Checksum
from proxy.storage import layout
from proxy.storage.base import KeyConflict
from proxy.storage.local.objects import LocalStorage
from proxy.storage.local.resumable import LocalResumableStore
from proxy.storage.resumable import (
    ChecksumMismatch,
    ResumableStore,
    UploadBody,
    UploadLocked,
    UploadNotFound,
    UploadState,
)
from proxy.streaming.bodies import BodyTooLarge
from proxy.streaming.sha256_state import ResumableSha256
from tests.conftest import LocalView, MiB, agen, new_upload_state

# Sizes that fill no block evenly, around the 1 MiB write block.
PIECES = [1, 4095, MiB + 7, 3, 2 * MiB - 1]
HOLD_FLOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@asynccontextmanager
async def opened(root: Path) -> AsyncIterator[LocalResumableStore]:
    """A store as one server process has it, over the directory ``root``."""
    storage = LocalStorage(root)
    await storage.start()
    store = LocalResumableStore(storage)
    await store.start()
    try:
        yield store
    finally:
        await store.close()
        await storage.close()


@pytest.fixture
async def store(root: Path) -> AsyncIterator[LocalResumableStore]:
    async with opened(root) as store:
        yield store


def payload(size: int, seed: int = 0) -> bytes:
    # A prime period: no piece boundary lines up with it, so misplaced bytes show.
    pattern = bytes((i * 7 + seed) % 256 for i in range(251))
    return (pattern * (size // 251 + 1))[:size]


async def append(
    store: ResumableStore, upload_id: str, body: AsyncIterator[bytes], **options: Any
) -> UploadState:
    async with store.lock(upload_id) as state:
        return await store.append(state, UploadBody(body, state=state, **options))


async def cut_off(chunks: list[bytes], error: BaseException) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    raise error


def upload_dir(root: Path, upload_id: str) -> Path:
    return root / layout.UPLOADS / upload_id


def data_of(root: Path, upload_id: str) -> bytes:
    return (upload_dir(root, upload_id) / "data").read_bytes()


def leave_junk(root: Path, upload_id: str, junk: bytes) -> None:
    """As a writer that died after writing but before saving its state would."""
    with open(upload_dir(root, upload_id) / "data", "ab") as fh:
        fh.write(junk)


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    pieces, start = [], 0
    for size in sizes:
        pieces.append(data[start : start + size])
        start += size
    return pieces


async def test_pieces_of_odd_sizes_become_the_object(store: LocalResumableStore, root: Path) -> None:
    data = payload(sum(PIECES))
    state = await store.create(new_upload_state(length=len(data)))
    assert await store.upload_ids() == [state.id]
    offset = 0
    for piece in split(data, PIECES):
        # Each request's body arrives in network chunks of its own odd size.
        state = await append(
            store, state.id, agen([piece[i : i + 65_537] for i in range(0, len(piece), 65_537)])
        )
        offset += len(piece)
        assert state.offset == offset
        assert await store.get(state.id) == state
    assert LocalView(root).keys() == []  # nothing is visible before finish

    async with store.lock(state.id) as held:
        info = await store.finish(held)
    view = LocalView(root)
    assert view.get("videos/clip.mp4") == data
    assert info.sha256 == hashlib.sha256(data).hexdigest() == view.metadata("videos/clip.mp4")["sha256"]
    assert info.size == len(data) and info.content_type == "video/mp4"
    assert view.metadata("videos/clip.mp4")["content_type"] == "video/mp4"
    # Only a small done state stays, so that HEAD still answers, until terminate or expiry.
    done = await store.get(state.id)
    assert done.done and done.offset == len(data)
    assert not (upload_dir(root, state.id) / "data").exists()
    assert view.leftovers() == [f"upload {state.id}"]
    async with store.lock(state.id) as held:
        await store.terminate(held)
    assert view.leftovers() == []
    assert view.keys() == ["videos/clip.mp4"]


async def test_empty_upload(store: LocalResumableStore, root: Path) -> None:
    state = await store.create(new_upload_state(key="empty", length=0))
    async with store.lock(state.id) as held:
        info = await store.finish(held)
    assert info.sha256 == hashlib.sha256(b"").hexdigest()
    assert LocalView(root).get("empty") == b""


async def test_restart_and_a_second_process_continue_the_upload(root: Path) -> None:
    data = payload(3 * MiB + 11, seed=3)
    first, second, third = split(data, [MiB + 1, 5, 2 * MiB + 5])
    async with opened(root) as store:
        state = await store.create(new_upload_state(length=len(data)))
        await append(store, state.id, agen([first]))

    # A new process finds the state and continues, and another one sharing the
    # directory takes the chunk after that.
    async with opened(root) as restarted, opened(root) as other:
        assert (await restarted.get(state.id)).offset == len(first)
        await append(restarted, state.id, agen([second]))
        await append(other, state.id, agen([third]))
        async with restarted.lock(state.id) as held:
            assert held.offset == len(data)
            info = await restarted.finish(held)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert LocalView(root).get(state.key) == data


@pytest.mark.parametrize("error", [ConnectionResetError("client gone"), asyncio.CancelledError()])
async def test_a_cut_off_body_keeps_exactly_the_bytes_taken(
    store: LocalResumableStore, root: Path, error: BaseException
) -> None:
    data = payload(2 * MiB + 100)
    state = await store.create(new_upload_state(length=len(data)))
    await append(store, state.id, agen([data[:10]]))
    taken = [data[10 : MiB + 30], data[MiB + 30 : MiB + 31]]  # less than the write block is still queued
    with pytest.raises(type(error)):
        await append(store, state.id, cut_off(taken, error))
    stored = await store.get(state.id)
    assert stored.offset == MiB + 31
    assert data_of(root, state.id) == data[: MiB + 31]
    # The next chunk continues from there, and the hash covers every byte once.
    await append(store, state.id, agen([data[MiB + 31 :]]))
    async with store.lock(state.id) as held:
        info = await store.finish(held)
    assert info.sha256 == hashlib.sha256(data).hexdigest()


async def test_a_cancelled_request_keeps_its_bytes(store: LocalResumableStore, root: Path) -> None:
    state = await store.create(new_upload_state())
    stall, taken = asyncio.Event(), asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield b"abc"
        taken.set()
        await stall.wait()
        yield b"never"

    task = asyncio.create_task(append(store, state.id, stalled()))
    await taken.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await store.get(state.id)).offset == 3
    assert data_of(root, state.id) == b"abc"


async def test_lock_is_held_until_the_work_of_a_cancelled_request_ends(
    store: LocalResumableStore, root: Path
) -> None:
    state = await store.create(new_upload_state())
    stall, taken = asyncio.Event(), asyncio.Event()
    block = payload(48 * MiB)

    async def stalled() -> AsyncIterator[bytes]:
        yield block
        taken.set()  # the store holds the lock and has the block
        await stall.wait()

    task = asyncio.create_task(append(store, state.id, stalled()))
    await taken.wait()
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()  # again, as a shutdown does: the request ends, saving the bytes goes on
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(UploadLocked):
        async with store.lock(state.id):
            pass
    await store.close()  # waits for that work
    async with store.lock(state.id) as held:
        assert held.offset == len(block)
    assert data_of(root, state.id) == block


@pytest.mark.parametrize(
    ("options", "tail", "error"),
    [
        # A chunk with a checksum cannot be verified when cut off: none of it counts.
        ({"checksum": Checksum("sha1", hashlib.sha1(b"whatever").digest())}, [], ConnectionResetError()),
        ({"checksum": Checksum("sha1", hashlib.sha1(b"other").digest())}, [], None),
        ({"limit": MiB + 10}, [b"over the limit"], None),
    ],
    ids=["checksum-cut-off", "checksum-mismatch", "too-large"],
)
async def test_a_refused_or_unverifiable_chunk_keeps_nothing(
    store: LocalResumableStore,
    root: Path,
    options: dict[str, Any],
    tail: list[bytes],
    error: BaseException | None,
) -> None:
    state = await store.create(new_upload_state())
    await append(store, state.id, agen([b"kept"]))
    chunks = [payload(MiB + 5), *tail]
    body = cut_off(chunks, error) if error else agen(chunks)
    expected = type(error) if error else (ChecksumMismatch if "checksum" in options else BodyTooLarge)
    with pytest.raises(expected):
        await append(store, state.id, body, **options)
    stored = await store.get(state.id)
    assert stored.offset == 4
    assert ResumableSha256(stored.sha256).hexdigest() == hashlib.sha256(b"kept").hexdigest()
    assert data_of(root, state.id) == b"kept"


async def test_a_matching_checksum_is_kept(store: LocalResumableStore, root: Path) -> None:
    state = await store.create(new_upload_state())
    checksum = Checksum("sha256", hashlib.sha256(b"chunk").digest())
    assert (await append(store, state.id, agen([b"ch", b"unk"]), checksum=checksum)).offset == 5
    assert data_of(root, state.id) == b"chunk"


async def test_bytes_a_crashed_writer_left_past_the_offset_are_overwritten(
    store: LocalResumableStore, root: Path
) -> None:
    state = await store.create(new_upload_state(length=10))
    await append(store, state.id, agen([b"01234"]))
    leave_junk(root, state.id, b"bytes of a writer that died before saving its state")
    await append(store, state.id, agen([b"567"]))
    assert data_of(root, state.id) == b"01234567"

    leave_junk(root, state.id, b"more")
    # A deferred length can complete the upload without another byte.
    async with store.lock(state.id) as held:
        held = await store.save(replace(held, length=8))
        info = await store.finish(held)
    assert LocalView(root).get(state.key) == b"01234567"
    assert info.sha256 == hashlib.sha256(b"01234567").hexdigest()


async def test_lock_conflicts_within_one_process(store: LocalResumableStore, root: Path) -> None:
    state = await store.create(new_upload_state())
    async with opened(root) as other:
        async with store.lock(state.id):
            for contender in (store, other):
                with pytest.raises(UploadLocked):
                    async with contender.lock(state.id):
                        pass
        async with other.lock(state.id) as held:
            assert held == state


async def test_lock_conflicts_with_another_process_until_it_exits(
    store: LocalResumableStore, root: Path
) -> None:
    state = await store.create(new_upload_state())
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLD_FLOCK,
        str(upload_dir(root, state.id) / "lock"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 10) == b"locked\n"
        with pytest.raises(UploadLocked):
            async with store.lock(state.id):
                pass
    finally:
        holder.kill()  # no unlock: the kernel drops the lock of a process that dies
        await holder.wait()
    async with store.lock(state.id) as held:
        assert held == state


async def test_a_lock_taken_for_a_cancelled_request_is_let_go(store: LocalResumableStore) -> None:
    state = await store.create(new_upload_state())
    for _ in range(20):
        waiting = asyncio.create_task(append(store, state.id, agen([b"x"])))
        await asyncio.sleep(0)  # now waiting for the thread that takes the lock
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    # The threads took the lock after their callers had gone; each lets it go.
    async with asyncio.timeout(5):
        while True:
            with contextlib.suppress(UploadLocked):
                async with store.lock(state.id) as held:
                    break
            await asyncio.sleep(0.01)
    assert held.offset == 0


async def test_unknown_and_malformed_ids(store: LocalResumableStore, root: Path) -> None:
    unknown = uuid.uuid4().hex
    with pytest.raises(UploadNotFound):
        await store.get(unknown)
    with pytest.raises(UploadNotFound):
        async with store.lock(unknown):
            pass
    for bad in ("../../etc", "A" * 32, unknown + "0", ""):
        with pytest.raises(ValueError):
            await store.get(bad)
        with pytest.raises(ValueError):
            async with store.lock(bad):
                pass
    assert LocalView(root).leftovers() == []


async def test_save_keeps_changed_fields(store: LocalResumableStore) -> None:
    state = await store.create(new_upload_state())
    async with store.lock(state.id) as held:
        changed = replace(held, length=99, expires=held.expires + 60)
        await store.save(changed)
    assert await store.get(state.id) == changed


async def test_terminate_leaves_nothing(store: LocalResumableStore, root: Path) -> None:
    state = await store.create(new_upload_state(length=10 * MiB))
    await append(store, state.id, agen([payload(3 * MiB)]))
    async with store.lock(state.id) as held:
        await store.terminate(held)
    assert LocalView(root).leftovers() == []
    assert await store.upload_ids() == []
    with pytest.raises(UploadNotFound):
        async with store.lock(state.id):
            pass


async def test_key_conflict_on_finish_leaves_the_upload_to_finish_later(
    store: LocalResumableStore, root: Path
) -> None:
    storage = LocalStorage(root)
    await storage.write("a", agen([b"an object where a directory is needed"]), content_type=None)
    state = await store.create(new_upload_state(key="a/b.bin", length=6))
    await append(store, state.id, agen([b"abcdef"]))
    async with store.lock(state.id) as held:
        with pytest.raises(KeyConflict):
            await store.finish(held)
    assert not (await store.get(state.id)).done
    assert data_of(root, state.id) == b"abcdef"

    await storage.delete("a")
    async with store.lock(state.id) as held:
        info = await store.finish(held)
    assert info.sha256 == hashlib.sha256(b"abcdef").hexdigest()
    assert LocalView(root).get("a/b.bin") == b"abcdef"


async def test_what_a_crash_while_creating_or_removing_leaves_is_cleared(root: Path) -> None:
    async with opened(root) as store:
        tmp = root / layout.TMP
        for name in ("half-built.upload", "half-removed.removed"):
            (tmp / name).mkdir()
            (tmp / name / "data").write_bytes(b"x")
            old = time.time() - 2 * 24 * 3600
            os.utime(tmp / name, (old, old))
        assert await store.upload_ids() == []
    async with opened(root):  # a restart clears them, once they are older than any upload in progress
        assert LocalView(root).leftovers() == []


@pytest.mark.parametrize("metadata_written", [True, False])
async def test_finish_after_a_crash_that_followed_the_rename(
    store: LocalResumableStore, root: Path, metadata_written: bool
) -> None:
    data = b"abcdef"
    state = await store.create(new_upload_state(key="v/a.bin", length=len(data)))
    await append(store, state.id, agen([data]))
    # As a process that died right after publishing, before saving done (and maybe
    # before writing the object's metadata) would leave it.
    (root / "v").mkdir()
    os.replace(upload_dir(root, state.id) / "data", root / "v" / "a.bin")
    if metadata_written:
        LocalStorage(root).describe_file("v/a.bin", {"content_type": "video/mp4"})
    async with store.lock(state.id) as held:
        assert held.complete and not held.done
        info = await store.finish(held)
    digest = hashlib.sha256(data).hexdigest()
    assert info.sha256 == digest == LocalView(root).metadata("v/a.bin")["sha256"]
    assert LocalView(root).get("v/a.bin") == data
    assert (await store.get(state.id)).done


async def test_a_file_at_the_key_that_is_not_the_upload_is_not_taken_for_it(
    store: LocalResumableStore, root: Path
) -> None:
    state = await store.create(new_upload_state(key="v/a.bin", length=3))
    await append(store, state.id, agen([b"abc"]))
    (upload_dir(root, state.id) / "data").unlink()  # gone some other way
    (root / "v").mkdir()
    (root / "v" / "a.bin").write_bytes(b"xyz")
    async with store.lock(state.id) as held:
        with pytest.raises(FileNotFoundError):
            await store.finish(held)
    assert not (await store.get(state.id)).done
