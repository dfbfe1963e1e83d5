"""An in-memory backend: the Storage and ResumableStore promises and nothing else.

A fake for tests that need a backend but not a disk or an S3 server, kept honest by
the contract suite (tests/storage/contract/), which runs the same tests on it as on
the local directory, moto and Ceph RGW. No I/O: only asyncio.

Like the real backends, it keeps its own files (storage.layout) beside the objects,
under the reserved first segment: an upload's state and bytes so far are entries in
the same dict, hidden from listings and unreachable through object keys. The
MemoryStorage is the shared medium, as a directory or bucket is: two
MemoryResumableStores over one MemoryStorage behave like two processes sharing it,
locks included.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from proxy.rules.keys import is_valid_key, validate_key, validate_list_prefix, validate_prefix
from proxy.storage import layout
from proxy.storage.backend import Backend
from proxy.storage.base import ObjectInfo, ObjectNotFound, ObjectPage, StorageError
from proxy.storage.resumable import (
    UPLOAD_ID,
    UploadBody,
    UploadLocked,
    UploadNotFound,
    UploadState,
    check_sealed,
)
from proxy.streaming.sha256_state import ResumableSha256

# Reads come in pieces, as from a socket, so that callers never rely on one chunk.
READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Entry:
    """One stored thing: an object, or one of the backend's own files."""

    data: bytes
    info: ObjectInfo


class MemoryStorage:
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        # Every write gets a new ETag, as a local file's new inode does, even when the
        # bytes are the same.
        self._serial = itertools.count(1)
        # Uploads held by some store over this storage: the lock lives with the
        # medium, as a flock lives in the kernel, not in one store.
        self.held: set[str] = set()

    async def start(self) -> None:
        """Nothing to prepare."""

    async def close(self) -> None:
        """Nothing to release: no work outlives a call."""

    # -- objects ---------------------------------------------------------------

    async def write(
        self,
        key: str,
        body: AsyncIterator[bytes],
        *,
        content_type: str | None,
        size: int | None = None,
    ) -> ObjectInfo:
        validate_key(key)  # refused before any byte is read
        data = bytearray()
        async for chunk in body:
            data += chunk
        # Only now, with every byte in: if the body raised, nothing was stored and
        # the previous object is untouched.
        return self.put_entry(key, bytes(data), content_type=content_type)

    async def stat(self, key: str, *, recent: bool = False) -> ObjectInfo:
        return self._object(key).info

    async def read(
        self, key: str, start: int = 0, end: int | None = None, *, etag: str | None = None
    ) -> AsyncIterator[bytes]:
        # Taken once: an overwrite while reading never splices two versions.
        entry = self._object(key)
        if etag is not None and entry.info.etag != etag:
            raise ObjectNotFound(key)
        stop = len(entry.data) if end is None else min(end + 1, len(entry.data))
        for offset in range(start, stop, READ_CHUNK):
            yield entry.data[offset : min(offset + READ_CHUNK, stop)]

    async def delete(self, key: str) -> None:
        self._object(key)
        del self._entries[key]

    async def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix)
        # The backend's own entries and names no key can have are no objects.
        doomed = [key for key in self._entries if key.startswith(prefix) and is_valid_key(key)]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    async def list(self, prefix: str = "", limit: int = 1000, cursor: str | None = None) -> ObjectPage:
        validate_list_prefix(prefix)
        # Code point order is UTF-8 byte order, the order S3 lists in.
        keys = sorted(
            key
            for key in self._entries
            if key.startswith(prefix) and not layout.is_internal(key) and (cursor is None or key > cursor)
        )
        page = keys[:limit]
        more = len(keys) > limit
        return ObjectPage([self._entries[k].info for k in page], page[-1] if more and page else None)

    def _object(self, key: str) -> Entry:
        validate_key(key)  # also refuses the backend's own files
        entry = self._entries.get(key)
        if entry is None:
            raise ObjectNotFound(key)
        return entry

    # -- what is stored, internal files included --------------------------------

    def put_entry(
        self, key: str, data: bytes, *, content_type: str | None = None, sha256: str | None = None
    ) -> ObjectInfo:
        """Store ``data`` under ``key`` (any key, the backend's own included) at once."""
        digest = sha256 or hashlib.sha256(data).hexdigest()
        info = ObjectInfo(
            key=key,
            size=len(data),
            etag=f'"{next(self._serial):x}-{digest[:16]}"',
            last_modified=datetime.now(UTC),
            content_type=content_type,
            sha256=digest,
        )
        self._entries[key] = Entry(data, info)
        return info

    def entry(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        return None if found is None else found.data

    def remove_entry(self, key: str) -> None:
        self._entries.pop(key, None)

    def stored_keys(self) -> builtins.list[str]:  # list() is a method here
        """Every key stored, the backend's own included, in order."""
        return sorted(self._entries)


class MemoryResumableStore:
    """Uploads as ``uploads/<id>/state.json`` and ``uploads/<id>/data`` entries of
    the MemoryStorage; finishing moves ``data`` to the object's key."""

    def __init__(self, storage: MemoryStorage) -> None:
        self._storage = storage

    async def start(self) -> None:
        """Nothing to prepare."""

    async def close(self) -> None:
        """Nothing to wait for: a cut-off append saves before it re-raises."""

    # -- state -----------------------------------------------------------------

    async def create(self, state: UploadState) -> UploadState:
        if self._storage.entry(_state_key(state.id)) is not None:
            raise StorageError(f"upload {state.id} exists already")
        self._storage.put_entry(_data_key(state.id), b"")
        self._write_state(state)
        return state

    async def get(self, upload_id: str) -> UploadState:
        stored = self._storage.entry(_state_key(upload_id))
        if stored is None:
            raise UploadNotFound(upload_id)
        return UploadState.from_json(stored)

    @contextlib.asynccontextmanager
    async def lock(self, upload_id: str) -> AsyncIterator[UploadState]:
        state = await self.get(upload_id)
        if upload_id in self._storage.held:
            raise UploadLocked(f"upload {upload_id} is being written by another request")
        self._storage.held.add(upload_id)
        try:
            yield state
        finally:
            self._storage.held.discard(upload_id)

    async def save(self, state: UploadState) -> UploadState:
        self._check_held(state)
        return self._write_state(state)

    async def upload_ids(self) -> list[str]:
        ids = {key.removeprefix(layout.UPLOADS).split("/", 1)[0] for key in self._upload_keys()}
        return sorted(ids)

    # -- bytes -----------------------------------------------------------------

    async def append(self, state: UploadState, body: UploadBody) -> UploadState:
        self._check_held(state)
        stored = self._storage.entry(_data_key(state.id))
        if stored is None:
            raise StorageError(f"upload {state.id}: its bytes are missing")
        taken = bytearray()
        try:
            async for chunk in body:
                taken += chunk
        except BaseException:
            # Saved before re-raising, with no await in between: a cancelled caller
            # cannot stop it half-way.
            if body.keeps_partial:
                self._store_bytes(stored[: state.offset] + taken, body.advanced(state))
            raise
        return self._store_bytes(stored[: state.offset] + taken, body.advanced(state))

    def _store_bytes(self, data: bytes, advanced: UploadState) -> UploadState:
        # Bytes are counted only by the state that names them, as on disk.
        assert len(data) == advanced.offset
        self._storage.put_entry(_data_key(advanced.id), data)
        return self._write_state(advanced)

    async def finish(self, state: UploadState) -> ObjectInfo:
        self._check_held(state)
        stored = self._storage.entry(_data_key(state.id))
        if stored is None:
            raise StorageError(f"upload {state.id}: its bytes are missing")
        info = self._storage.put_entry(
            validate_key(state.key),
            stored[: state.offset],
            content_type=state.content_type,
            sha256=ResumableSha256(state.sha256).hexdigest(),
        )
        self._storage.remove_entry(_data_key(state.id))
        self._write_state(replace(state, done=True))
        return info

    async def seal(self, state: UploadState) -> UploadState:
        self._check_held(state)
        return self._write_state(replace(state, done=True))

    async def concatenate(self, final: UploadState, partials: list[UploadState]) -> ObjectInfo:
        check_sealed(partials)
        datas: list[bytes] = []
        for partial in partials:
            self._check_held(partial)
            stored = self._storage.entry(_data_key(partial.id))
            if stored is None:
                raise StorageError(f"upload {partial.id}: its bytes are missing")
            datas.append(stored[: partial.offset])
        # As the real backends do: partial 1's saved state goes on over the others' bytes.
        sha = ResumableSha256(partials[0].sha256)
        for data in datas[1:]:
            sha.update(data)
        whole = b"".join(datas)
        assert len(whole) == final.length == final.offset
        info = self._storage.put_entry(
            validate_key(final.key), whole, content_type=final.content_type, sha256=sha.hexdigest()
        )
        self._write_state(replace(final, sha256=sha.state(), done=True))
        for partial in partials:
            for key in self._upload_keys(partial.id):
                self._storage.remove_entry(key)
        return info

    async def terminate(self, state: UploadState) -> None:
        self._check_held(state)
        for key in self._upload_keys(state.id):
            self._storage.remove_entry(key)

    # -- helpers -----------------------------------------------------------------

    def _check_held(self, state: UploadState) -> None:
        # The interface's rule, enforced so that a caller breaking it fails here.
        if state.id not in self._storage.held:
            raise RuntimeError(f"upload {state.id} is not locked")

    def _write_state(self, state: UploadState) -> UploadState:
        self._storage.put_entry(_state_key(state.id), state.to_json(), content_type="application/json")
        return state

    def _upload_keys(self, upload_id: str | None = None) -> list[str]:
        prefix = layout.UPLOADS if upload_id is None else layout.upload_prefix(upload_id)
        return [key for key in self._storage.stored_keys() if key.startswith(prefix)]


def _state_key(upload_id: str) -> str:
    return layout.upload_state_key(_checked(upload_id))


def _data_key(upload_id: str) -> str:
    return layout.upload_prefix(_checked(upload_id)) + layout.UPLOAD_DATA


def _checked(upload_id: str) -> str:
    # As on disk: a key is never built from an id that is not one.
    if not UPLOAD_ID.fullmatch(upload_id):
        raise ValueError(f"not an upload id: {upload_id!r}")
    return upload_id


def memory_backend(objects: MemoryStorage | None = None) -> Backend:
    """A backend over ``objects`` (a new, empty MemoryStorage by default). Two
    backends over one MemoryStorage are two processes sharing a directory."""
    storage = objects or MemoryStorage()
    return Backend(storage, MemoryResumableStore(storage))
