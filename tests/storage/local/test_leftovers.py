"""Temporary files of processes that died (proxy/storage/local/leftovers.py): removed
at start and by the periodic sweep, while a live process's are never touched."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.storage import layout
from proxy.storage.local.leftovers import ProcessTemp
from proxy.storage.local.objects import LocalStorage
from tests.conftest import ROOT, LocalView, wait_until

MiB = 1024 * 1024

# A process that starts the backend, sends part of an upload and waits forever; it
# prints its temporary directory, then "ready" once the upload's file has bytes.
WRITER = """
import asyncio, sys
from pathlib import Path
from proxy.storage.local.objects import LocalStorage

async def main():
    storage = LocalStorage(Path(sys.argv[1]))
    await storage.start()
    print(storage.paths.own_tmp, flush=True)

    async def body():
        yield b"x" * (4 * 1024 * 1024)
        yield b"y" * (4 * 1024 * 1024)
        await asyncio.Event().wait()

    await storage.write("never/finished.bin", body(), content_type=None)

asyncio.run(main())
"""


async def killed_writer(root: Path) -> Path:
    """Run WRITER on ``root`` and SIGKILL it mid-upload; returns the directory it left."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(root), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        own = Path(line.decode().strip())
        await wait_until(lambda: any(p.stat().st_size > 0 for p in own.glob("*.part")), 30)
    finally:
        proc.kill()
        await proc.wait()
    assert own.parent == root / layout.TMP and suffixes(own) == [".part"]
    return own


def suffixes(directory: Path) -> list[str]:
    return [p.suffix for p in directory.iterdir()]


def process_dirs(root: Path) -> list[Path]:
    return sorted(p for p in (root / layout.TMP).iterdir() if p.name.endswith(layout.TMP_PROCESS_SUFFIX))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


async def test_a_restart_removes_what_a_killed_upload_left(root: Path) -> None:
    left = await killed_writer(root)
    storage = LocalStorage(root)
    await storage.start()
    try:
        assert not left.exists()
        assert process_dirs(root) == [storage.paths.own_tmp]
        assert LocalView(root).leftovers() == []
    finally:
        await storage.close()
    assert list((root / layout.TMP).iterdir()) == []  # a clean stop leaves nothing either


async def test_a_running_process_sweeps_after_one_that_died(root: Path) -> None:
    storage = LocalStorage(root, sweep_interval=0.1)
    await storage.start()
    try:
        left = await killed_writer(root)
        await wait_until(lambda: not left.exists(), 10)
        assert process_dirs(root) == [storage.paths.own_tmp]
    finally:
        await storage.close()


async def test_a_live_process_uploads_untouched_by_others_sweeps(root: Path) -> None:
    writer = LocalStorage(root)
    await writer.start()
    gate = asyncio.Event()
    data = os.urandom(3 * MiB)

    async def body() -> AsyncIterator[bytes]:
        yield data[: 2 * MiB]
        await gate.wait()
        yield data[2 * MiB :]

    upload = asyncio.create_task(writer.write("kept/clip.mp4", body(), content_type="video/mp4"))
    # Another process over the same root: its start and its periodic sweeps pass over
    # the live writer's directory (flock excludes two open files in one process as
    # it does two processes).
    other = LocalStorage(root, sweep_interval=0.02)
    try:
        assert writer.paths.own_tmp is not None
        await wait_until(lambda: LocalView(root).leftovers() != [], 10)
        await other.start()
        await asyncio.sleep(0.3)  # many sweeps
        assert suffixes(writer.paths.own_tmp) == [".part"]
        gate.set()
        info = await upload
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        assert (root / "kept" / "clip.mp4").read_bytes() == data
    finally:
        gate.set()
        await other.close()
        await writer.close()


async def test_a_process_directory_is_kept_while_locked_and_removed_after(root: Path) -> None:
    tmp = root / layout.TMP
    tmp.mkdir(parents=True)
    held = tmp / f"someone{layout.TMP_PROCESS_SUFFIX}"
    held.mkdir()
    (held / "x.part").write_bytes(b"x")
    fd = os.open(held, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    storage = LocalStorage(root, sweep_interval=0.05)
    try:
        await storage.start()
        await asyncio.sleep(0.3)
        assert (held / "x.part").exists()
        os.close(fd)  # as the kernel does when its process ends
        fd = -1
        await wait_until(lambda: not held.exists(), 10)
    finally:
        if fd >= 0:
            os.close(fd)
        await storage.close()


SWEEPER = """
import sys
from pathlib import Path
from proxy.storage.local.leftovers import ProcessTemp

tmp, stop = Path(sys.argv[1]), Path(sys.argv[2])
sweeper = ProcessTemp(tmp)  # claims nothing: every unlocked directory is fair game
while not stop.exists():
    sweeper.sweep()
"""


def test_a_claimed_directory_never_falls_to_a_racing_sweep(tmp_path: Path) -> None:
    """Claims race another process that sweeps without pause: each claimed directory
    must survive until released, however the two interleave."""
    tmp, stop = tmp_path / "tmp", tmp_path / "stop"
    tmp.mkdir()
    sweeper = subprocess.Popen([sys.executable, "-c", SWEEPER, str(tmp), str(stop)], cwd=ROOT)
    try:
        for _ in range(1000):
            temp = ProcessTemp(tmp)
            own = temp.claim()
            (own / "f.part").write_bytes(b"x")
            assert (own / "f.part").read_bytes() == b"x"
            temp.release()
            assert not own.exists()
    finally:
        stop.touch()
        sweeper.wait(timeout=60)
    assert sweeper.returncode == 0
    assert list(tmp.iterdir()) == []


async def test_temporary_names_are_in_the_process_directory(root: Path) -> None:
    storage = LocalStorage(root)
    await storage.start()
    try:
        own = storage.paths.own_tmp
        assert own is not None and own.is_dir()
        assert storage.paths.temp(".part").parent == own
        # Locked: nobody else can take it.
        fd = os.open(own, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        await storage.close()
    assert not own.exists()
