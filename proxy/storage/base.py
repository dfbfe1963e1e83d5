"""The storage interface every backend implements, and its errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO, Protocol, cast, runtime_checkable


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # strong, quoted, as sent in an ETag header
    last_modified: datetime
    content_type: str | None = None
    sha256: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "size": self.size,
            "etag": self.etag,
            "sha256": self.sha256,
            "content_type": self.content_type,
        }


@dataclass(frozen=True)
class ObjectPage:
    objects: list[ObjectInfo]
    next_cursor: str | None


class StorageError(Exception):
    """Base of the errors a backend raises on purpose."""


class ObjectNotFound(StorageError):
    pass


class UpstreamError(StorageError):
    """The storage service failed (after its retries): the proxy answers 502."""


class KeyConflict(StorageError):
    """The key collides with an existing object's path (local: file vs directory)."""


class ObjectTooLarge(StorageError):
    """The object is larger than the backend can store."""


class DeleteIncomplete(UpstreamError):
    """A folder delete that removed ``deleted`` objects but failed on others (or on
    reading what was left): the storage failed part-way, and said so only at the end."""

    def __init__(self, message: str, *, deleted: int) -> None:
        super().__init__(message)
        self.deleted = deleted


class Storage(Protocol):
    """What the HTTP layer needs from a backend.

    ``write`` consumes ``body`` and makes the object visible under ``key`` only once
    every byte has been stored; if ``body`` raises, or the backend fails, nothing is
    left behind and the previous object under ``key`` (if any) is untouched.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def write(
        self,
        key: str,
        body: AsyncIterator[bytes],
        *,
        content_type: str | None,
        size: int | None = None,
    ) -> ObjectInfo: ...

    async def stat(self, key: str, *, recent: bool = False) -> ObjectInfo:
        """The object's size and validators. With ``recent``, the backend may answer
        from what it saw a moment ago; callers then read with ``etag`` to be safe."""
        ...

    def read(
        self, key: str, start: int = 0, end: int | None = None, *, etag: str | None = None
    ) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` inclusive (``None``: to the end). With ``etag``,
        fail with ObjectNotFound rather than read another version of the object."""
        ...

    async def delete(self, key: str) -> None: ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix`` (a folder: empty, or a
        valid key and '/', else InvalidKey) and return how many went. Never the
        backend's own files, nor names that can be no key. Objects written while it
        runs may remain; what it saw when it looked is gone. DeleteIncomplete when
        some could not be deleted, after deleting all it could."""
        ...

    async def list(self, prefix: str = "", limit: int = 1000, cursor: str | None = None) -> ObjectPage: ...


@runtime_checkable
class Checked(Protocol):
    """A backend that can tell cheaply whether it can serve (the readiness probe)."""

    async def check(self) -> None:
        """Return if the storage is reachable and writable as far as one cheap look
        tells; else raise StorageError or OSError."""
        ...


@runtime_checkable
class FileBacked(Protocol):
    """A backend whose objects are files, so they can be sent with sendfile."""

    async def open_file(self, key: str, *, etag: str) -> BinaryIO:
        """Open the object's file for reading; ObjectNotFound if it is gone or is no
        longer the version ``etag`` names."""
        ...

    async def open_object(self, key: str) -> tuple[ObjectInfo, BinaryIO]:
        """Open the object's file for reading, with what stat() would say of exactly
        the version opened: one step, so no other version can come in between.
        ObjectNotFound if there is none."""
        ...


@runtime_checkable
class Presigned(Protocol):
    """A backend that can hand out a URL another program (ffmpeg) reads an object by."""

    async def presigned_read(self, key: str, *, expires: int) -> str:
        """A GET URL for ``key`` valid for ``expires`` seconds; a reader sends
        ``If-Match`` with the ETag it wants, so it never reads another version."""
        ...


class BodyRelay(Protocol):
    """A read whose answer has arrived: its body waits on a connection of its own."""

    async def send_to(self, fd: int, *, send_timeout: float | None) -> None:
        """Move the body to the non-blocking socket ``fd``: ConnectionError when ``fd``
        fails or takes no bytes for ``send_timeout`` seconds, StorageError when the
        backend fails."""
        ...

    async def read_whole(self, limit: int) -> bytes | None:
        """The whole body, read into memory, if it is at most ``limit`` bytes (else
        None, and it is left to send_to): then nothing is left to send, and the
        connection is free for another read. StorageError when the backend fails."""
        ...

    def close(self) -> None:
        """Release the backend connection; at once if the body was not all sent."""
        ...


@runtime_checkable
class Relayed(Protocol):
    """A backend that can move a read's bytes to a socket without them passing
    through the interpreter."""

    async def open_relay(
        self, key: str, start: int, end: int | None, *, etag: str, size: int
    ) -> BodyRelay | None:
        """Start reading bytes ``start`` to ``end`` (``None``: to the end) of the
        ``size`` bytes of version ``etag``, as read() would; ObjectNotFound as read()
        would. None when this read cannot be relayed: use read()."""
        ...


# isinstance() with a runtime-checkable protocol costs 20-40 us on Python 3.11 (it
# looks at every member each time): as much as the rest of a small download. What a
# backend class provides does not change, so it is decided once per class.
def as_file_backed(storage: object) -> FileBacked | None:
    return cast(FileBacked, storage) if _provides(type(storage), FileBacked) else None


def as_relayed(storage: object) -> Relayed | None:
    return cast(Relayed, storage) if _provides(type(storage), Relayed) else None


_PROVIDED: dict[tuple[type, Any], bool] = {}


def _provides(kind: type, capability: Any) -> bool:
    provided = _PROVIDED.get((kind, capability))
    if provided is None:
        provided = _PROVIDED[kind, capability] = issubclass(kind, capability)
    return provided
