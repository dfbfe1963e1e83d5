"""Local directory backend.

``root/<key>`` holds the bytes. The backend's own files live under
``root/.stream-proxy/`` (a name keys cannot use): ``tmp/`` for uploads in progress,
on the same filesystem so that publishing one is an atomic rename, ``meta/<key>``
for each object's content type and SHA-256, and ``uploads/`` for resumable uploads
(see local_resumable). A metadata file records the inode, size and mtime of the data
file it describes and is ignored if they no longer match, so a reader never pairs
one version's bytes with another's metadata.

All file system calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from proxy.keys import INTERNAL_PREFIX, InvalidKey, validate_key
from proxy.storage.base import KeyConflict, ObjectInfo, ObjectNotFound, ObjectPage, StorageError
from proxy.storage.cleanup import Cleanups
from proxy.streams import HashingReader

T = TypeVar("T")
INTERNAL_DIR = INTERNAL_PREFIX
WRITE_BLOCK = 1024 * 1024
SYNC_EVERY = 16 * 1024 * 1024
READ_BLOCK = 256 * 1024
# Temporary files this old are left over from a crashed process, not a slow upload.
STALE_TMP_SECONDS = 24 * 3600


async def _run(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._internal = self.root / INTERNAL_DIR
        self._tmp = self._internal / "tmp"
        self._meta = self._internal / "meta"
        self._cleanups = Cleanups()

    async def start(self) -> None:
        await _run(self._prepare)

    async def close(self) -> None:
        await self._cleanups.drain()

    def _prepare(self) -> None:
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._meta.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - STALE_TMP_SECONDS
        for entry in os.scandir(self._tmp):
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    # Resumable uploads build and remove their directories here.
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)

    def temp_path(self, suffix: str) -> Path:
        """A fresh name in the backend's temporary directory, on the objects' file
        system so that whatever is made there can be renamed into place."""
        return self._tmp / f"{uuid.uuid4().hex}{suffix}"

    def path_for(self, key: str) -> Path:
        """The data file of ``key``; refuses keys that would escape the root or use
        the backend's own directory."""
        return self.root / validate_key(key)

    def _meta_path(self, key: str) -> Path:
        return self._meta / (key + ".json")

    def _check_inside(self, path: Path) -> None:
        # Keys are validated, but a symlinked directory under the root could still
        # lead outside it.
        parent = path.parent.resolve()
        if parent != self.root and self.root not in parent.parents:
            raise InvalidKey("key resolves outside the storage root")

    # -- write ---------------------------------------------------------------

    async def write(
        self,
        key: str,
        body: AsyncIterator[bytes],
        *,
        content_type: str | None,
        size: int | None = None,
    ) -> ObjectInfo:
        self.path_for(key)  # refuse a bad key before reading the body
        reader = HashingReader(body)
        tmp_path = self.temp_path(".part")
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
        path = self.path_for(key)
        try:
            if not self._replace_into(src, path):
                raise StorageError(f"could not create the directory for {path}")
        except (NotADirectoryError, FileExistsError):
            raise KeyConflict("a parent of the key is an existing object") from None
        except IsADirectoryError:
            raise KeyConflict("the key is an existing directory of objects") from None
        fsync_dir(path.parent)
        return self.describe_file(key, meta)

    def describe_file(self, key: str, meta: dict[str, Any]) -> ObjectInfo:
        """Record ``meta`` for the object ``key`` as it is now. Blocking."""
        st = self.path_for(key).stat()
        self._write_meta(key, st, meta)
        return self._info(key, st, meta)

    def _replace_into(self, src: Path, dest: Path) -> bool:
        """os.replace into ``dest``'s directory, made as needed. A concurrent delete may
        prune that directory in between, so try again; False if it kept vanishing."""
        for _ in range(3):
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                self._check_inside(dest)
                os.replace(src, dest)
                return True
            except FileNotFoundError:
                continue
        return False

    def _write_meta(self, key: str, st: os.stat_result, meta: dict[str, Any]) -> None:
        record = {**meta, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        tmp = self.temp_path(".meta")
        write_synced(tmp, json.dumps(record).encode())
        if not self._replace_into(tmp, self._meta_path(key)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    # -- read side -----------------------------------------------------------

    def _read_meta(self, key: str, st: os.stat_result) -> dict[str, Any]:
        try:
            with open(self._meta_path(key), encoding="utf-8") as fh:
                record = json.load(fh)
        except (OSError, ValueError):
            return {}
        if (record.get("ino"), record.get("size"), record.get("mtime_ns")) != (
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
        ):
            return {}
        return dict(record)

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
        path = self.path_for(key)
        try:
            self._check_inside(path)
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        if not path.is_file():
            raise ObjectNotFound(key)
        return self._info(key, st, self._read_meta(key, st))

    async def stat(self, key: str, *, recent: bool = False) -> ObjectInfo:
        return await _run(self._stat, key)

    def _open_checked(self, key: str, etag: str | None) -> BinaryIO:
        path = self.path_for(key)
        self._check_inside(path)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - the caller closes it
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        if etag is not None and local_etag(os.fstat(fh.fileno())) != etag:
            fh.close()
            raise ObjectNotFound(key)
        return fh

    async def open_file(self, key: str, *, etag: str) -> BinaryIO:
        return await _run(self._open_checked, key, etag)

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

    def _delete(self, key: str) -> None:
        path = self.path_for(key)
        self._check_inside(path)
        if not path.is_file():
            raise ObjectNotFound(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._meta_path(key))
        self._prune(path.parent, self.root)
        self._prune(self._meta_path(key).parent, self._meta)

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

    def _list(self, prefix: str, limit: int, cursor: str | None) -> ObjectPage:
        # Walk only the directory the prefix names.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start_dir = self.root / base
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start_dir):
            rel_dir = os.path.relpath(dirpath, self.root)
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d != INTERNAL_DIR]
                rel_dir = ""
            for name in filenames:
                key = f"{rel_dir}/{name}" if rel_dir else name
                if key.startswith(prefix) and (cursor is None or key > cursor):
                    keys.append(key)
        keys.sort()  # code point order is UTF-8 byte order, as S3 lists
        objects = []
        for key in keys[:limit]:
            with contextlib.suppress(ObjectNotFound):
                objects.append(self._stat(key))
        more = len(keys) > limit
        return ObjectPage(objects, keys[limit - 1] if more and limit > 0 else None)

    async def list(self, prefix: str = "", limit: int = 1000, cursor: str | None = None) -> ObjectPage:
        return await _run(self._list, prefix, limit, cursor)


class BlockWriter:
    """Writes a stream to a file in worker threads, one block while the caller gathers
    the next, and syncs to disk on the way so that the final sync has little left."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._queued: list[bytes | bytearray] = []
        self._queued_size = 0
        self._writing: asyncio.Future[Any] | None = None
        self._syncing: asyncio.Future[Any] | None = None
        self._unsynced = 0

    async def write(self, data: bytes | bytearray) -> None:
        """Take ``data`` (not to be changed afterwards); waits only for a block's turn."""
        # Queued before any wait, so that flush() still writes it if this is cancelled.
        self._queued.append(data)
        self._queued_size += len(data)
        if self._queued_size >= WRITE_BLOCK:
            await self._dispatch()

    async def flush(self) -> None:
        """Write what is queued and wait for every write and sync to end."""
        if self._queued:
            await self._dispatch()
        await self.settle()

    async def settle(self) -> None:
        """Wait for every started thread call, so none touches the file after we go on."""
        outcomes = await asyncio.gather(
            *(f for f in (self._writing, self._syncing) if f is not None), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _dispatch(self) -> None:
        if self._writing is not None:
            await self._writing
        # A block that came whole is written as it is, sparing a copy.
        block = self._queued[0] if len(self._queued) == 1 else b"".join(self._queued)
        self._queued, self._queued_size = [], 0
        self._writing = asyncio.ensure_future(_run(self._fh.write, block))
        self._unsynced += len(block)
        if self._unsynced >= SYNC_EVERY and (self._syncing is None or self._syncing.done()):
            self._syncing = asyncio.ensure_future(_run(os.fdatasync, self._fh.fileno()))
            self._unsynced = 0


def local_etag(st: os.stat_result) -> str:
    """A strong validator from the file's identity: any replace makes a new inode."""
    return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


def write_synced(path: Path, data: bytes) -> None:
    """Make ``path`` hold ``data``, on disk before this returns."""
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
