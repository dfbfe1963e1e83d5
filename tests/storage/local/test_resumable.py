"""Resumable uploads in the local backend: what is on disk, crashes, locks between processes.

The promises every backend keeps are tested in tests/storage/contract/.
"""

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
from tests.conftest import LocalView, MiB, agen, new_upload_state

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


async def test_the_data_file_holds_exactly_the_bytes_counted(store: LocalResumableStore, root: Path) -> None:
    """What the contract suite sees through the interface, seen on disk: the data file
    holds no byte that the state does not count, and finishing renames it onto the key."""
    data = payload(2 * MiB + 100)
    state = await store.create(new_upload_state(length=len(data)))
    cut = MiB + 31  # less than the write block is still queued when the body fails
    with pytest.raises(ConnectionResetError):
        await append(store, state.id, cut_off([data[: cut - 1], data[cut - 1 : cut]], ConnectionResetError()))
    assert data_of(root, state.id) == data[:cut]
    checksum = Checksum("sha1", hashlib.sha1(b"other").digest())
    with pytest.raises(ChecksumMismatch):
        await append(store, state.id, agen([data[cut:]]), checksum=checksum)
    assert data_of(root, state.id) == data[:cut]  # cut back: refused bytes take no space
    await append(store, state.id, agen([data[cut:]]))
    inode = (upload_dir(root, state.id) / "data").stat().st_ino
    async with store.lock(state.id) as held:
        await store.finish(held)
    assert not (upload_dir(root, state.id) / "data").exists()
    assert (root / state.key).stat().st_ino == inode  # renamed, not copied
    assert LocalView(root).get(state.key) == data


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
