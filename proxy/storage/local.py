"""Local directory backend.

``root/<key>`` holds the bytes. The backend's own files live under
``root/.stream-proxy/`` (a name keys cannot use): ``tmp/`` for uploads in progress,
on the same filesystem so that publishing one is an atomic rename, and ``meta/<key>``
for each object's content type and SHA-256. A metadata file records the inode, size
and mtime of the data file it describes and is ignored if they no longer match, so a
reader never pairs one version's bytes with another's metadata.

All file system calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from proxy.keys import InvalidKey, validate_key
from proxy.storage.base import KeyConflict, ObjectInfo, ObjectNotFound, ObjectPage, StorageError
from proxy.storage.cleanup import Cleanups
from proxy.streams import HashingReader

T = TypeVar("T")
INTERNAL_DIR = ".stream-proxy"
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
                    os.unlink(entry.path)

    def path_for(self, key: str) -> Path:
        """The data file of ``key``; refuses keys that would escape the root or use
        the backend's own directory."""
        validate_key(key)
        if key.split("/", 1)[0] == INTERNAL_DIR:
            raise InvalidKey(f"keys under {INTERNAL_DIR}/ are reserved")
        return self.root / key

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
        path = self.path_for(key)
        reader = HashingReader(body)
        tmp_path = self._tmp / f"{uuid.uuid4().hex}.part"
        fh: BinaryIO = await _run(open, tmp_path, "xb")
        writing: asyncio.Future[Any] | None = None
        syncing: asyncio.Future[Any] | None = None
        unsynced = 0
        try:
            # One block is written in a thread while the next is read from the client.
            while block := await reader.read(WRITE_BLOCK):
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(_run(fh.write, block))
                unsynced += len(block)
                # Flush to disk as we go, so that the final fsync has little left to do.
                if unsynced >= SYNC_EVERY and (syncing is None or syncing.done()):
                    syncing = asyncio.ensure_future(_run(os.fdatasync, fh.fileno()))
                    unsynced = 0
            await _settle(writing, syncing)
            meta = {"content_type": content_type, "sha256": reader.sha256}
            return await _run(self._commit, key, path, fh, tmp_path, meta)
        except BaseException:
            await self._cleanups.run(self._discard(fh, tmp_path, writing, syncing))
            raise

    async def _discard(self, fh: BinaryIO, tmp_path: Path, *running: asyncio.Future[Any] | None) -> None:
        with contextlib.suppress(BaseException):
            await _settle(*running)
        await _run(self._remove_tmp, fh, tmp_path)

    @staticmethod
    def _remove_tmp(fh: BinaryIO, tmp_path: Path) -> None:
        with contextlib.suppress(OSError):
            fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)

    def _commit(self, key: str, path: Path, fh: BinaryIO, tmp_path: Path, meta: dict[str, Any]) -> ObjectInfo:
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        self._publish(tmp_path, path)
        st = path.stat()
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

    def _publish(self, src: Path, dest: Path) -> None:
        try:
            if not self._replace_into(src, dest):
                raise StorageError(f"could not create the directory for {dest}")
        except (NotADirectoryError, FileExistsError):
            raise KeyConflict("a parent of the key is an existing object") from None
        except IsADirectoryError:
            raise KeyConflict("the key is an existing directory of objects") from None
        _fsync_dir(dest.parent)

    def _write_meta(self, key: str, st: os.stat_result, meta: dict[str, Any]) -> None:
        record = {**meta, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        tmp = self._tmp / f"{uuid.uuid4().hex}.meta"
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(record, out)
            out.flush()
            os.fsync(out.fileno())
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


async def _settle(*running: asyncio.Future[Any] | None) -> None:
    """Wait for every started thread call, so none touches the file after we go on."""
    outcomes = await asyncio.gather(*(f for f in running if f is not None), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def local_etag(st: os.stat_result) -> str:
    """A strong validator from the file's identity: any replace makes a new inode."""
    return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
