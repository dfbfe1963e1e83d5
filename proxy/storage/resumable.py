"""Resumable uploads (tus) as the storage backends keep them: state, body, interface.

An upload's state lives in the backend beside its bytes, never only in a process:
any process sharing the directory or bucket can take the next chunk, and a restart
loses nothing that was acknowledged. The tus handler speaks HTTP; a ResumableStore
keeps bytes and state; UploadBody is the bridge that hashes and checks a chunk on
its way from the client to the store.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from proxy.rules.tus import Checksum
from proxy.storage.base import ObjectInfo, StorageError
from proxy.streaming.bodies import BodyTooLarge
from proxy.streaming.sha256_state import ResumableSha256

# Upload ids are uuid4().hex: checked before any id is used as a path or key.
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


class UploadNotFound(StorageError):
    pass


class UploadLocked(StorageError):
    """Another request, in this process or another, is writing to the upload."""


class ChecksumMismatch(StorageError):
    """The chunk's bytes do not match its Upload-Checksum; they were discarded."""


@dataclass(frozen=True)
class UploadState:
    """What is known about one upload. Stored as JSON by the backend.

    ``offset`` counts the bytes stored and acknowledged; ``sha256`` is the running
    SHA-256 state (ResumableSha256) of exactly those bytes. ``backend`` holds what
    only the backend needs (S3: multipart UploadId, parts, the object holding the
    bytes that do not yet fill a part) and ``version`` the stored state's revision
    (S3: its ETag), both opaque to the handler. ``owner`` names the identity that
    created it, as the access check records and compares it.
    """

    id: str
    key: str
    content_type: str
    length: int | None
    metadata: str
    created: float
    expires: float
    offset: int = 0
    sha256: str = field(default_factory=lambda: ResumableSha256().state())
    done: bool = False
    backend: dict[str, Any] = field(default_factory=dict)
    # Who created the upload, as the access check names callers: only they may go on
    # with it. None for uploads made with access control off, and in states stored
    # before there was an owner.
    owner: str | None = None
    # tus concatenation: "partial" for a partial upload, whose bytes never become an
    # object of their own; for a final, its Upload-Concat as HEAD answers it
    # (rules.tus.Concat.header). None for any other upload.
    concat: str | None = None
    version: str | None = field(default=None, compare=False)

    def to_json(self) -> bytes:
        record = asdict(self)
        del record["version"]
        if record["concat"] is None:
            # Left out, so that the states of plain uploads stay as processes that
            # predate concatenation read them (they refuse unknown fields).
            del record["concat"]
        return json.dumps(record, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, version: str | None = None) -> UploadState:
        record = json.loads(data)
        return cls(**record, version=version)

    def expired(self, now: float | None = None) -> bool:
        return self.expires <= (time.time() if now is None else now)

    @property
    def complete(self) -> bool:
        return self.length is not None and self.offset == self.length

    @property
    def partial(self) -> bool:
        return self.concat == "partial"

    @property
    def final(self) -> bool:
        return self.concat is not None and not self.partial


def check_sealed(partials: list[UploadState]) -> None:
    """What ``ResumableStore.concatenate`` takes: one or more sealed partial uploads."""
    if not partials:
        raise StorageError("a final upload needs partial uploads")
    for state in partials:
        if not (state.partial and state.done and state.complete):
            raise StorageError(f"upload {state.id} is no sealed partial upload")


class UploadBody:
    """One PATCH body on its way into a store.

    Bytes are hashed into the upload's running SHA-256 as the store takes them, so
    ``sha256_state`` always describes exactly ``taken`` bytes past the start offset.
    A store that stops early on an error keeps those bytes only if ``keeps_partial``:
    never when the chunk carries a checksum (it cannot be verified) or when this body
    refused it (too long, checksum mismatch). ``expected`` is the chunk's length as
    announced (Content-Length), None when it is not known (a chunked body); a store
    may use it to plan how it cuts the bytes, never to trust that they all arrive.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        state: UploadState,
        checksum: Checksum | None = None,
        limit: int | None = None,
        expected: int | None = None,
    ) -> None:
        self._chunks = chunks
        self.expected = expected
        self._sha256 = ResumableSha256(state.sha256)
        self._checksum = checksum
        self._digest = hashlib.new(checksum.algorithm) if checksum else None
        self._limit = limit
        self._refused = False
        self.taken = 0

    @property
    def keeps_partial(self) -> bool:
        return self._checksum is None and not self._refused

    def sha256_state(self) -> str:
        return self._sha256.state()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            if not chunk:
                continue
            if self._limit is not None and self.taken + len(chunk) > self._limit:
                self._refused = True
                raise BodyTooLarge(self._limit)
            if self._digest is not None:
                self._digest.update(chunk)
            self._sha256.update(chunk)
            self.taken += len(chunk)
            yield chunk
        if (
            self._checksum is not None
            and self._digest is not None
            and self._digest.digest() != self._checksum.digest
        ):
            self._refused = True
            raise ChecksumMismatch(
                f"the {self._checksum.algorithm} of the chunk does not match Upload-Checksum"
            )

    def advanced(self, state: UploadState, **changes: Any) -> UploadState:
        """``state`` moved past the bytes taken so far, as the store should save it."""
        return replace(state, offset=state.offset + self.taken, sha256=self.sha256_state(), **changes)


class ResumableStore(Protocol):
    """Bytes and state of resumable uploads in one backend.

    Every method that changes an upload is called while holding ``lock(id)``, and
    passes the state that the lock (or the previous call) returned.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def create(self, state: UploadState) -> UploadState:
        """Store a new upload (its id is fresh) and whatever the backend needs to
        receive its bytes; return the state as stored."""
        ...

    async def get(self, upload_id: str) -> UploadState:
        """The stored state; UploadNotFound if there is none."""
        ...

    def lock(self, upload_id: str) -> AbstractAsyncContextManager[UploadState]:
        """Hold the upload exclusively, against this and every other process sharing
        the backend, and yield its current state. UploadLocked at once (no waiting)
        if it is held; UploadNotFound if it does not exist."""
        ...

    async def save(self, state: UploadState) -> UploadState:
        """Store changed fields (length, expiry) of a held upload."""
        ...

    async def append(self, state: UploadState, body: UploadBody) -> UploadState:
        """Consume ``body``, storing its bytes at ``state.offset``, and return the
        saved ``body.advanced(state)``. If ``body`` raises, save what was taken when
        ``body.keeps_partial`` (else nothing) and re-raise. If storing fails, the
        saved state is unchanged and the error propagates."""
        ...

    async def finish(self, state: UploadState) -> ObjectInfo:
        """The upload is complete: publish its bytes as the object ``state.key``
        (atomically, with sha256 and content type), free what only the upload
        needed, and save the state with ``done=True``."""
        ...

    async def seal(self, state: UploadState) -> UploadState:
        """A partial upload (tus concatenation) is complete: keep its bytes inside the
        backend, where ``concatenate`` finds them, publish nothing, and save the state
        with ``done=True``."""
        ...

    async def concatenate(self, final: UploadState, partials: list[UploadState]) -> ObjectInfo:
        """Assemble the sealed ``partials`` (held, in this order) into the object
        ``final.key`` with its SHA-256 and content type, atomically, as ``finish``
        publishes; then store ``final`` (new, complete and done; its ``sha256`` is
        set here) and remove the partials. Runs to its end once begun, even if the
        caller is cancelled. If it fails, no object was made and the partials are
        as they were; what a crash leaves is removed by the backend's sweeps."""
        ...

    async def terminate(self, state: UploadState) -> None:
        """Remove the upload: state, bytes, and any S3 multipart upload."""
        ...

    async def upload_ids(self) -> list[str]:
        """Ids of every upload in the backend, for the expiry sweep."""
        ...
