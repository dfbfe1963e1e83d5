"""Local directory backend: objects.

``root/<key>`` holds the bytes. The backend's own files (storage.layout) live under
the reserved first segment: uploads in progress in ``tmp/``, on the same filesystem
so that publishing one is an atomic rename, and each object's content type and
SHA-256 in ``meta/`` (named by the key's hash). A metadata file records the inode, size and mtime of
the data file it describes and is ignored if they no longer match, so a reader never
pairs one version's bytes with another's metadata: one that reads between a rename
and the metadata written after it finds no SHA-256 or type (served: the key's guess).
Renaming a file and its metadata into place, and removing both, run under the key's
lock (local.keylocks), so racing writers and deletes, in this process or others,
leave the key's file and metadata in agreement. Every path comes from LocalPaths.

File system calls run in worker threads, except a download's open, which runs on
the loop while the file system answers quickly (local.quick_calls).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from proxy.storage.base import KeyConflict, ObjectInfo, ObjectNotFound, ObjectPage, StorageError
from proxy.storage.local.files import WRITE_BLOCK, BlockWriter, fsync_dir, local_etag, write_synced
from proxy.storage.local.folders import delete_prefix
from proxy.storage.local.keylocks import KeyLocks
from proxy.storage.local.leftovers import SWEEP_INTERVAL, ProcessTemp
from proxy.storage.local.listing import list_page
from proxy.storage.local.meta_cache import MetaCache
from proxy.storage.local.paths import LocalPaths
from proxy.storage.local.quick_calls import QuickCalls
from proxy.storage.periodic import every, stop
from proxy.streaming.bodies import HashingReader
from proxy.streaming.cleanups import Cleanups

T = TypeVar("T")
READ_BLOCK = 256 * 1024


async def _run(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


def _version(st: os.stat_result) -> tuple[int, int, int]:
    """What tells one version of a file from another, as local_etag does."""
    return st.st_ino, st.st_size, st.st_mtime_ns


def _file_in_the_way(directory: Path) -> bool:
    """Whether the nearest existing one of ``directory`` and its parents is no directory."""
    for path in (directory, *directory.parents):
        if os.path.lexists(path):
            return not os.path.isdir(path)
    return False


class LocalStorage:
    def __init__(self, root: Path, *, sweep_interval: float = SWEEP_INTERVAL) -> None:
        self.paths = LocalPaths(root)
        self.root = self.paths.root
        self._locks = KeyLocks(self.paths)
        self._meta = MetaCache()
        self._quick = QuickCalls()
        self._cleanups = Cleanups()
        # Temporary files live in a directory this process holds locked (local.leftovers).
        self._temp = ProcessTemp(self.paths.tmp)
        self._sweep_interval = sweep_interval
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await _run(self._prepare)
        # Other processes sharing the root may die while this one runs.
        sweep = functools.partial(_run, self._temp.sweep)
        what = "sweep for temporary files of ended processes"
        self._sweeper = asyncio.create_task(every(self._sweep_interval, sweep, what, now=False))

    async def close(self) -> None:
        await self._cleanups.drain()
        await stop(self._sweeper)
        self._sweeper = None
        await _run(self._release)

    async def check(self) -> None:
        await _run(self._check)

    def _check(self) -> None:
        # access(2) also answers EROFS for a file system remounted read-only.
        if not (self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)):
            raise StorageError("the storage root is not a writable directory")

    def _prepare(self) -> None:
        self.paths.tmp.mkdir(parents=True, exist_ok=True)
        self.paths.meta.mkdir(parents=True, exist_ok=True)
        self._locks.prepare()
        self.paths.own_tmp = self._temp.claim()
        # Before serving: a restart leaves nothing of the process it replaces.
        self._temp.sweep()

    def _release(self) -> None:
        self.paths.own_tmp = None
        self._temp.release()

    # -- write ---------------------------------------------------------------

    async def write(
        self,
        key: str,
        body: AsyncIterator[bytes],
        *,
        content_type: str | None,
        size: int | None = None,
    ) -> ObjectInfo:
        self.paths.object(key)  # refuse a bad key before reading the body
        reader = HashingReader(body)
        tmp_path = self.paths.temp(".part")
        fh: BinaryIO = await _run(open, tmp_path, "xb")
        writer = BlockWriter(fh)
        try:
            while block := await reader.read(WRITE_BLOCK):
                await writer.write(block)
            await writer.flush()
            meta = {"content_type": content_type, "sha256": reader.sha256}
            return await _run(self._commit, key, fh, tmp_path, meta)
        except BaseException:
            await self._cleanups.run(self._discard(fh, tmp_path, writer))
            raise

    async def _discard(self, fh: BinaryIO, tmp_path: Path, writer: BlockWriter) -> None:
        with contextlib.suppress(BaseException):
            await writer.settle()
        await _run(self._remove_tmp, fh, tmp_path)

    @staticmethod
    def _remove_tmp(fh: BinaryIO, tmp_path: Path) -> None:
        with contextlib.suppress(OSError):
            fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)

    def _commit(self, key: str, fh: BinaryIO, tmp_path: Path, meta: dict[str, Any]) -> ObjectInfo:
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        return self.publish_file(key, tmp_path, meta)

    def publish_file(self, key: str, src: Path, meta: dict[str, Any]) -> ObjectInfo:
        """Make ``src``, a finished file already on disk and on the root's file system,
        the object ``key`` with ``meta`` (content_type, sha256), in one rename.
        KeyConflict leaves ``src`` where it was. Blocking: call it in a thread."""
        # The version this publishes, described before the rename (which keeps its
        # inode, size and mtime): a racing writer or delete may change what the key
        # holds a moment later, and neither the answer nor the metadata may then
        # describe that instead.
        st = os.stat(src)
        path = self.paths.object(key)
        # Written and synced before the lock is taken, so that all it covers is two renames.
        staged = self._stage_meta(st, meta)
        try:
            with self._locks.held(key):
                try:
                    if not self._replace_into(src, path, check=self.paths.check_writable):
                        raise StorageError(f"could not create the directory for {path}")
                except (NotADirectoryError, FileExistsError):
                    raise KeyConflict("a parent of the key is an existing object") from None
                except IsADirectoryError:
                    raise KeyConflict("the key is an existing directory of objects") from None
                self._replace_into(staged, self.paths.meta_of(key))
        finally:
            self._unstage(staged)
        # A delete racing this write may have removed the object and pruned its
        # directory already: the write happened all the same.
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(path.parent)
        return self._info(key, st, meta)

    def describe_file(self, key: str, meta: dict[str, Any], *, ino: int | None = None) -> ObjectInfo:
        """Record ``meta`` for the object ``key`` as it is now; with ``ino``, only if
        its file is that inode. ObjectNotFound if there is no such file, or the key
        changed meanwhile. Blocking."""
        _, st = self.paths.existing_file(key)
        if ino is not None and st.st_ino != ino:
            raise ObjectNotFound(key)
        staged = self._stage_meta(st, meta)
        try:
            with self._locks.held(key):
                # A writer that published since the stat has written its own metadata.
                if _version(self.paths.existing_file(key)[1]) != _version(st):
                    raise ObjectNotFound(key)
                self._replace_into(staged, self.paths.meta_of(key))
        finally:
            self._unstage(staged)
        return self._info(key, st, meta)

    @staticmethod
    def _replace_into(src: Path, dest: Path, check: Callable[[Path], None] | None = None) -> bool:
        """os.replace into ``dest``'s directory, made as needed, after ``check(dest)``
        (before any directory is made, and again after). A concurrent delete may prune
        that directory in between, so try again; False if it kept vanishing."""
        for _ in range(3):
            try:
                if check is not None:
                    check(dest)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if check is not None:
                    check(dest)
                os.replace(src, dest)
                return True
            except FileNotFoundError:
                continue
            except FileExistsError:
                # mkdir's own check: a file in the way is a conflict; a directory
                # pruned between its mkdir and its check is another try.
                if _file_in_the_way(dest.parent):
                    raise
        return False

    def _stage_meta(self, st: os.stat_result, meta: dict[str, Any]) -> Path:
        """A temporary file holding the metadata record of the version ``st``."""
        ino, size, mtime_ns = _version(st)
        staged = self.paths.temp(".meta")
        write_synced(staged, json.dumps({**meta, "ino": ino, "size": size, "mtime_ns": mtime_ns}).encode())
        return staged

    @staticmethod
    def _unstage(staged: Path) -> None:
        """Remove what is left of a staged record: one that was not renamed into place."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)

    # -- read side -----------------------------------------------------------

    def _read_meta(self, key: str, st: os.stat_result) -> dict[str, Any]:
        version = _version(st)
        kept = self._meta.get(key, version)
        if kept is not None:
            return kept
        try:
            with open(self.paths.meta_of(key), encoding="utf-8") as fh:
                record = json.load(fh)
        except FileNotFoundError:
            self._meta.put_missing(key, version)
            return {}
        except (OSError, ValueError):
            return {}
        if (
            not isinstance(record, dict)
            or (record.get("ino"), record.get("size"), record.get("mtime_ns")) != version
        ):
            self._meta.put_missing(key, version)  # another version's: none for this one yet
            return {}
        self._meta.put(key, version, record)
        return record

    def _info(self, key: str, st: os.stat_result, meta: dict[str, Any]) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=st.st_size,
            etag=local_etag(st),
            last_modified=datetime.fromtimestamp(st.st_mtime, UTC),
            content_type=meta.get("content_type"),
            sha256=meta.get("sha256"),
        )

    def _stat(self, key: str) -> ObjectInfo:
        _, st = self.paths.existing_file(key)
        return self._info(key, st, self._read_meta(key, st))

    async def stat(self, key: str, *, recent: bool = False) -> ObjectInfo:
        return await _run(self._stat, key)

    def _open_checked(self, key: str, etag: str | None) -> BinaryIO:
        fh, st = self.paths.open_existing(key)
        if etag is not None and local_etag(st) != etag:
            fh.close()
            raise ObjectNotFound(key)
        return fh

    async def open_file(self, key: str, *, etag: str) -> BinaryIO:
        return await _run(self._open_checked, key, etag)

    def _open_object(self, key: str) -> tuple[ObjectInfo, BinaryIO]:
        fh, st = self.paths.open_existing(key)
        try:
            return self._info(key, st, self._read_meta(key, st)), fh
        except BaseException:
            fh.close()
            raise

    async def open_object(self, key: str) -> tuple[ObjectInfo, BinaryIO]:
        # Every download's first step: on the loop while the file system answers
        # quickly, as it does when the file's entries are cached (local.quick_calls).
        return await self._quick.run(self._open_object, key)

    async def read(
        self, key: str, start: int = 0, end: int | None = None, *, etag: str | None = None
    ) -> AsyncIterator[bytes]:
        fh = await _run(self._open_checked, key, etag)
        try:
            await _run(fh.seek, start)
            remaining = None if end is None else end - start + 1
            while remaining is None or remaining > 0:
                n = READ_BLOCK if remaining is None else min(READ_BLOCK, remaining)
                block = await _run(fh.read, n)
                if not block:
                    break
                if remaining is not None:
                    remaining -= len(block)
                yield block
        finally:
            # Inline: a thread hop could be cancelled before it ran, leaking the file.
            fh.close()

    # -- delete and list -----------------------------------------------------

    def remove(self, key: str) -> None:
        """Remove the object ``key`` and its metadata, as DELETE does, but leave its
        emptied directories; ObjectNotFound if there is none. Blocking."""
        # The key's own name goes, whatever a symlink there pointed at.
        path = self.paths.object(key)
        with self._locks.held(key):
            self.paths.existing_file(key)
            try:
                os.unlink(path)
            except FileNotFoundError:
                raise ObjectNotFound(key) from None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.paths.meta_of(key))

    def _delete(self, key: str) -> None:
        self.remove(key)
        path = self.paths.object(key)
        # Unlocked: writers of other keys in these directories retry a pruned one.
        self._prune(path.parent, self.root)
        self._prune(self.paths.meta_of(key).parent, self.paths.meta)

    @staticmethod
    def _prune(directory: Path, stop: Path) -> None:
        """Remove now-empty directories up to ``stop``, so deletes leave no litter."""
        while directory != stop and stop in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    async def delete(self, key: str) -> None:
        await _run(self._delete, key)

    async def delete_prefix(self, prefix: str) -> int:
        # In steps, in the folder deletes' own threads (storage.local.folders).
        return await delete_prefix(self.paths, self.remove, prefix)

    async def list(self, prefix: str = "", limit: int = 1000, cursor: str | None = None) -> ObjectPage:
        # In the listing's own threads (storage.local.listing), not _run's.
        return await list_page(self.paths, self._stat, prefix, limit, cursor)
