"""Local backend specifics: atomic publication, the root's boundary, metadata."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.rules.keys import InvalidKey
from proxy.storage import layout
from proxy.storage.base import KeyConflict, ObjectNotFound
from proxy.storage.local.meta_cache import MISSING_FOR
from proxy.storage.local.objects import LocalStorage
from tests.conftest import LocalView, agen


async def test_object_appears_only_when_complete(storage: LocalStorage) -> None:
    gate = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"a" * 3_000_000
        await gate.wait()
        yield b"b" * 10

    task = asyncio.create_task(storage.write("v/clip.mp4", slow_body(), content_type="video/mp4"))
    await asyncio.sleep(0.2)
    assert not (storage.root / "v" / "clip.mp4").exists()
    assert len(LocalView(storage.root).leftovers()) == 1
    gate.set()
    info = await task
    assert info.size == 3_000_010
    assert (storage.root / "v" / "clip.mp4").stat().st_size == 3_000_010
    assert LocalView(storage.root).leftovers() == []


async def test_symlink_out_of_root_is_refused(storage: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (storage.root / "escape").symlink_to(outside)
    with pytest.raises(InvalidKey):
        await storage.write("escape/x", agen([b"data"]), content_type=None)
    assert list(outside.iterdir()) == []
    (outside / "x").write_bytes(b"secret")
    # Read through the link: what lies outside the root is no object.
    with pytest.raises(ObjectNotFound):
        await storage.stat("escape/x")


async def test_file_and_directory_conflicts(storage: LocalStorage) -> None:
    await storage.write("a", agen([b"1"]), content_type=None)
    with pytest.raises(KeyConflict):
        await storage.write("a/b", agen([b"2"]), content_type=None)
    await storage.write("d/x", agen([b"3"]), content_type=None)
    with pytest.raises(KeyConflict):
        await storage.write("d", agen([b"4"]), content_type=None)
    assert (storage.root / "a").read_bytes() == b"1"
    assert LocalView(storage.root).leftovers() == []


async def test_metadata_of_a_replaced_file_is_ignored(storage: LocalStorage) -> None:
    info = await storage.write("k.bin", agen([b"hello"]), content_type="text/plain")
    assert (await storage.stat("k.bin")).sha256 == info.sha256
    # Someone replaces the file behind the proxy's back: the old sha256 must not stick.
    tmp = storage.root / "other"
    tmp.write_bytes(b"other")
    os.replace(tmp, storage.root / "k.bin")
    fresh = await storage.stat("k.bin")
    assert fresh.sha256 is None and fresh.content_type is None
    assert fresh.etag != info.etag


async def test_delete_removes_emptied_directories(storage: LocalStorage) -> None:
    for key in ("m/1", "m/sub/3"):
        await storage.write(key, agen([b"data"]), content_type=None)
    await storage.delete("m/sub/3")
    assert not (storage.root / "m" / "sub").exists()  # emptied directories go too
    meta = storage.root / layout.meta_key("m/sub/3")
    assert not meta.exists() and not meta.parent.exists()  # its metadata file and the directory that held it
    assert (storage.root / "m" / "1").read_bytes() == b"data"
    with pytest.raises(ObjectNotFound):
        await storage.stat("m")


async def test_start_removes_only_stale_temporary_files(tmp_path: Path) -> None:
    tmp_dir = tmp_path / "root" / layout.TMP
    tmp_dir.mkdir(parents=True)
    stale, fresh = tmp_dir / "old.part", tmp_dir / "new.part"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    two_days_ago = time.time() - 2 * 86400
    os.utime(stale, (two_days_ago, two_days_ago))
    await LocalStorage(tmp_path / "root").start()
    assert not stale.exists() and fresh.exists()


async def test_metadata_of_another_version_of_the_same_file_is_ignored(storage: LocalStorage) -> None:
    # Same inode and size, another mtime: as a file rewritten in place, or an inode
    # reused by a later file, would look. Its metadata describes no version there now.
    info = await storage.write("same.bin", agen([b"hello"]), content_type="text/plain")
    os.utime(storage.root / "same.bin", ns=(time.time_ns(), time.time_ns() - 10**9))
    fresh = await storage.stat("same.bin")
    assert fresh.etag != info.etag
    assert fresh.sha256 is None and fresh.content_type is None


async def test_describing_a_file_that_is_not_the_expected_one_changes_nothing(
    storage: LocalStorage,
) -> None:
    # A tus finish after a crash describes the key's file only if it is the upload's.
    info = await storage.write("k.bin", agen([b"put"]), content_type="text/plain")
    record = LocalView(storage.root).metadata("k.bin")
    other_ino = record["ino"] + 1
    with pytest.raises(ObjectNotFound):
        await asyncio.to_thread(storage.describe_file, "k.bin", {"sha256": "0" * 64}, ino=other_ino)
    assert LocalView(storage.root).metadata("k.bin") == record
    assert (await storage.stat("k.bin")).sha256 == info.sha256
    assert LocalView(storage.root).leftovers() == []


async def test_open_object_describes_the_version_it_opened(storage: LocalStorage) -> None:
    first = await storage.write("v.bin", agen([b"first version"]), content_type="text/plain")
    info, fh = await storage.open_object("v.bin")
    with fh:
        # Replaced (other bytes, same length) after the open, before any read.
        await storage.write("v.bin", agen([b"other version"]), content_type="application/x-other")
        assert fh.read() == b"first version"
    assert info == first
    assert (await storage.stat("v.bin")).etag != first.etag


async def test_a_versions_metadata_is_read_once(storage: LocalStorage) -> None:
    info = await storage.write("m.bin", agen([b"data"]), content_type="text/plain")
    meta = storage.root / layout.meta_key("m.bin")
    assert (await storage.stat("m.bin")).sha256 == info.sha256
    # The record of this version is kept: its file is not read again.
    meta.write_text("not json")
    assert (await storage.open_object("m.bin"))[0] == info


async def test_missing_metadata_is_looked_for_again_a_second_later(storage: LocalStorage) -> None:
    info = await storage.write("m.bin", agen([b"data"]), content_type="text/plain")
    meta = storage.root / layout.meta_key("m.bin")
    record = meta.read_bytes()
    meta.unlink()  # as a reader between a publish's rename and its record sees it
    assert (await storage.stat("m.bin")).sha256 is None
    meta.write_bytes(record)
    assert (await storage.stat("m.bin")).sha256 is None  # taken to have none, for a while
    await asyncio.sleep(MISSING_FOR + 0.1)
    assert (await storage.stat("m.bin")) == info
