"""The per-key lock of the local backend (issue 11, "Integrity under races").

Publishing (a write, a tus finish) and deleting wait for the key's stripe of
``locks/`` while another process holds it, without holding up the event loop; the
lock is not held while a body streams; its files are few and outlive every delete;
and two processes racing writes to one key leave it with one body and that body's
own metadata, round after round.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxy.rules.keys import INTERNAL_PREFIX
from proxy.storage import layout
from proxy.storage.base import ObjectNotFound
from proxy.storage.local.objects import LocalStorage
from proxy.storage.local.resumable import LocalResumableStore
from proxy.storage.resumable import UploadBody
from tests.conftest import ROOT, LocalView, agen, new_upload_state

# Holds the flock of the lock file argv[1] (made if need be, as the backend makes it)
# until its stdin closes: another process sharing the root, mid-publish.
HOLD_FLOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""

# Long enough that a step which does not wait for the lock is done by then, many
# times over; the tests' outcome never depends on it being short.
GRACE = 0.5


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.asynccontextmanager
async def held_elsewhere(storage: LocalStorage, key: str) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """``key``'s lock held by another process; yields what lets go of it (its end)."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLD_FLOCK,
        str(storage.root / layout.lock_key(key)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )

    async def release() -> None:
        holder.kill()  # the kernel drops the flock of a process that ends
        await holder.wait()

    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"locked\n"
        yield release
    finally:
        if holder.returncode is None:
            await release()


def key_of_another_stripe(key: str) -> str:
    return next(k for k in (f"other/{i}" for i in range(1000)) if layout.lock_key(k) != layout.lock_key(key))


async def test_a_write_publishes_only_once_another_process_lets_go_of_its_key(
    storage: LocalStorage,
) -> None:
    key = "v/held.bin"
    await storage.write(key, agen([b"old"]), content_type="text/plain")
    async with held_elsewhere(storage, key) as release:
        writing = asyncio.create_task(storage.write(key, agen([b"new"]), content_type="video/mp4"))
        # Meanwhile the event loop and the other stripes are free: another key is written.
        other = key_of_another_stripe(key)
        await asyncio.wait_for(storage.write(other, agen([b"o"]), content_type=None), 30)
        await asyncio.sleep(GRACE)
        assert not writing.done()
        # Neither the file nor its metadata has moved: the old version is whole.
        assert (storage.root / key).read_bytes() == b"old"
        before = await storage.stat(key)
        assert (before.sha256, before.content_type) == (sha(b"old"), "text/plain")
        await release()
        info = await asyncio.wait_for(writing, 30)
    now = await storage.stat(key)
    assert (storage.root / key).read_bytes() == b"new"
    assert (now.etag, now.sha256, now.content_type) == (info.etag, sha(b"new"), "video/mp4")
    assert (await storage.stat(other)).sha256 == sha(b"o")
    assert LocalView(storage.root).leftovers() == []


async def test_a_delete_waits_for_another_process_holding_its_key(storage: LocalStorage) -> None:
    key = "d/held.bin"
    await storage.write(key, agen([b"data"]), content_type="text/plain")
    meta = storage.root / layout.meta_key(key)
    async with held_elsewhere(storage, key) as release:
        deleting = asyncio.create_task(storage.delete(key))
        await asyncio.sleep(GRACE)
        assert not deleting.done()
        assert (storage.root / key).exists() and meta.exists()
        await release()
        await asyncio.wait_for(deleting, 30)
    assert not (storage.root / key).exists() and not meta.exists()
    with pytest.raises(ObjectNotFound):
        await storage.stat(key)


async def test_a_resumable_upload_finishes_only_once_its_key_is_let_go(storage: LocalStorage) -> None:
    store = LocalResumableStore(storage)
    await store.start()
    key = "t/held.bin"
    state = await store.create(new_upload_state(key=key, length=6))
    async with store.lock(state.id) as held:
        state = await store.append(held, UploadBody(agen([b"abcdef"]), state=held))
    async with held_elsewhere(storage, key) as release, store.lock(state.id) as held:
        finishing = asyncio.create_task(store.finish(held))
        await asyncio.sleep(GRACE)
        assert not finishing.done()
        assert not (storage.root / key).exists()
        await release()
        info = await asyncio.wait_for(finishing, 30)
    await store.close()
    assert (storage.root / key).read_bytes() == b"abcdef"
    stored = await storage.stat(key)
    assert (stored.etag, stored.sha256) == (info.etag, sha(b"abcdef"))


async def test_the_lock_is_not_held_while_a_body_streams(storage: LocalStorage) -> None:
    key = "s/streaming.bin"
    gate, started = asyncio.Event(), asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"a" * 100_000
        started.set()
        await gate.wait()
        yield b"b"

    writing = asyncio.create_task(storage.write(key, body(), content_type=None))
    await asyncio.wait_for(started.wait(), 30)
    await asyncio.sleep(0.1)  # the first block on its way to the disk
    fd = os.open(storage.root / layout.lock_key(key), os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # would raise BlockingIOError if held
    finally:
        os.close(fd)
    gate.set()
    info = await asyncio.wait_for(writing, 30)
    assert info.size == 100_001


def test_a_fixed_number_of_lock_files_serves_every_key() -> None:
    stripes = {layout.lock_key(f"clips/{i}.mp4") for i in range(20_000)}
    assert len(stripes) == layout.LOCK_STRIPES
    assert all(s.startswith(layout.LOCKS) and "/" not in s.removeprefix(layout.LOCKS) for s in stripes)


async def test_lock_files_outlive_deletes_that_prune_the_metadata(storage: LocalStorage) -> None:
    keys = [f"p/{i}/clip.bin" for i in range(24)]
    for key in keys:
        await storage.write(key, agen([key.encode()]), content_type=None)
    for key in keys:
        await storage.delete(key)
    root = storage.root
    assert [p.name for p in root.iterdir()] == [INTERNAL_PREFIX]
    assert list((root / layout.META).iterdir()) == []  # every metadata shard pruned
    # One file per stripe used, each still there to lock.
    locks = sorted(p.name for p in (root / layout.LOCKS).iterdir())
    assert locks == sorted({layout.lock_key(k).removeprefix(layout.LOCKS) for k in keys})


# -- two processes racing ----------------------------------------------------------------------

# Writes, for each round number read from stdin, WRITERS bodies to one key at once,
# then prints the round: a second proxy process sharing the root.
RACER = """
import asyncio, random, sys
from pathlib import Path
from proxy.storage.local.objects import LocalStorage

root, key, tag, writers = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])

def body(round_, w):
    size = 64 * 1024 + 4099 * w + 13 * round_ + (0 if tag == "a" else 997)
    return random.Random(f"{tag}-{round_}-{w}").randbytes(size)

async def chunks(data):
    yield data

async def main():
    storage = LocalStorage(root)
    await storage.start()
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        round_ = int(line)
        await asyncio.gather(*(
            storage.write(key, chunks(body(round_, w)), content_type=f"video/x-{tag}-{round_}-{w}")
            for w in range(writers)
        ))
        print(round_, flush=True)
    await storage.close()

asyncio.run(main())
"""
RACER_WRITERS = 4
RACE_ROUNDS = 15


def racer_body(tag: str, round_: int, writer: int) -> bytes:
    size = 64 * 1024 + 4099 * writer + 13 * round_ + (0 if tag == "a" else 997)
    return random.Random(f"{tag}-{round_}-{writer}").randbytes(size)


async def test_two_processes_racing_writes_leave_one_body_with_its_own_metadata(
    storage: LocalStorage,
) -> None:
    key = "race/clip.bin"
    racers = [
        await asyncio.create_subprocess_exec(
            *[sys.executable, "-c", RACER, str(storage.root), key, tag, str(RACER_WRITERS)],
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for tag in ("a", "b")
    ]
    problems: list[str] = []
    try:
        for round_ in range(RACE_ROUNDS):
            for racer in racers:
                assert racer.stdin is not None
                racer.stdin.write(f"{round_}\n".encode())
            for racer in racers:
                assert racer.stdout is not None
                assert await asyncio.wait_for(racer.stdout.readline(), 60) == f"{round_}\n".encode()
            sent = {
                sha(racer_body(tag, round_, w)): f"video/x-{tag}-{round_}-{w}"
                for tag in ("a", "b")
                for w in range(RACER_WRITERS)
            }
            info = await storage.stat(key)
            data = b"".join([chunk async for chunk in storage.read(key, etag=info.etag)])
            if sha(data) not in sent:
                problems.append(f"round {round_}: the key holds none of the bodies sent")
            elif (info.sha256, info.content_type) != (sha(data), sent[sha(data)]):
                record = json.loads((storage.root / layout.meta_key(key)).read_text())
                problems.append(f"round {round_}: metadata {record} for a body of {len(data)} bytes")
    finally:
        for racer in racers:
            if racer.stdin is not None:
                racer.stdin.close()
        for racer in racers:
            try:
                await asyncio.wait_for(racer.wait(), 30)
            except TimeoutError:
                racer.kill()
                await racer.wait()
    assert problems == [], f"{len(problems)} of {RACE_ROUNDS} rounds: {problems[:3]}"
    assert [r.returncode for r in racers] == [0, 0]
    assert LocalView(storage.root).leftovers() == []
