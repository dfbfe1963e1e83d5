"""Resumable (tus) uploads in an S3 bucket: state, bytes and lock all in the bucket.

Layout, under the prefix that object keys cannot use:

- ``.stream-proxy/uploads/<id>/state.json``: the UploadState as JSON.
- ``.stream-proxy/uploads/<id>/tail-<token>``: the bytes that do not yet fill a part.

The bytes go to one S3 multipart upload on the final key, created when the first
part is full. An append reads the tail, adds the chunk, sends every part that is
full, writes the rest to a new tail object (a new token each time) and saves a state
that names it, with every part's number, ETag and size. The old tail is deleted only
after that save, so a saved state always names a tail that exists. Part sizes are
chosen when the upload is created and recorded in its state, so neither a later
process nor a changed setting can alter them mid-upload.

S3 takes parts of different sizes (all but the last >= MIN_PART_SIZE), which spares
most PATCHes of a few MiB their tail (part_target, leftover_is_part):

- When the PATCH's length is known (Content-Length) and cutting a part at the part
  size would leave fewer than MIN_PART_SIZE bytes of it, the part takes them too:
  it is then up to ``part size + MIN_PART_SIZE - 1`` bytes. Its whole size is
  reserved from the MemoryBudget before it is filled, while nothing else is held.
- What is left at the end of an append goes as a part of its own, not as a tail,
  when the upload's length was known at creation and it is more than one part, and
  either it completes the upload after at least one part (the last part may be of
  any size), or it is at least MIN_PART_SIZE and the rest of the upload still fits
  in MAX_PARTS parts of the part size. So an upload sent in PATCHes of 5 MiB or more
  writes no tail at all, and one that never fills a part still ends as one
  PutObject.

Every part's size is recorded in the state, so offsets stay right across processes.

A finish completes the multipart upload, attaches the sha256 (a copy onto itself)
and then saves the state as done. If it stops in between, the multipart upload is
gone and the next finish fails on it; that finish then recognises the object
(_published_before) and takes the work up where it stopped.

Locking: what is guaranteed
---------------------------
Every write of the state object is conditional: the first with ``If-None-Match: *``,
every other with ``If-Match`` on the ETag this process last read or wrote. A state
is therefore only ever replaced by a process that saw the version it replaces; of
two writers starting from one version, one gets 412 and writes nothing. (ETags are
content hashes, so a state rewritten with identical bytes matches again; that is
harmless, since the reader's copy is then exact, and every write made under the
lock carries a fresh nonce, so no two of those are ever identical.)

``lock(id)`` reads the state. If it carries a lease that has not run out, the upload
is locked (UploadLocked, at once); otherwise the process writes the state with a
lease of its own, and a 412 means another process took it first (UploadLocked). A
lease runs out ``lease + 1`` seconds after the state's Last-Modified, both read from
the S3 server's clock (Last-Modified and Date), so the proxies' clocks never matter;
the extra second covers S3's one-second resolution. The holder rewrites the state
every ``lease / 3`` seconds to renew it and writes it without the lease when done.
Within one process a second lock on the same upload fails without asking S3.

If a holder stalls past its lease (a hung process, a network partition, renewals
that keep failing), another process may take the upload over. The stalled holder
counts its own lease from the moment it sent its last successful write, before S3
dated that write, so it stops (UploadLocked) no later than anyone may take over,
as long as the clocks tick at the same rate. Every write it still attempts to the
state fails its If-Match, so it never saves over the new holder's state. What it can
still do is finish an UploadPart already in flight, on a part number the new holder
also writes. That cannot corrupt the object silently: Complete names every part's
ETag from the state, S3 refuses it (InvalidPart) if a part holds other bytes, and
the upload then fails instead of publishing the wrong bytes.

A holder that dies (or is cancelled while its lease is being written) leaves its
lease, which blocks the upload for at most ``lease + 1`` seconds. Tails of appends
that never got saved stay under the upload's prefix until the upload is terminated
or expires, which removes the whole prefix.
Removing the state object itself is unconditional (S3 servers such as RGW 16.2 do not
support conditional deletes); it happens only under the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from proxy.keys import INTERNAL_PREFIX
from proxy.sha256_state import ResumableSha256
from proxy.storage.base import ObjectInfo, ObjectNotFound, ObjectTooLarge, StorageError, UpstreamError
from proxy.storage.part_sizing import (
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    part_size_for_known_size,
    part_size_for_unknown_size,
)
from proxy.storage.resumable import UploadBody, UploadLocked, UploadNotFound, UploadState
from proxy.storage.s3 import READ_CHUNK, S3Storage
from proxy.storage.s3_errors import error_code, quoted_etag, upstream
from proxy.storage.s3_upload import PartSender, UploadTarget

log = logging.getLogger(__name__)
T = TypeVar("T")

UPLOADS_PREFIX = f"{INTERNAL_PREFIX}/uploads/"
# A conditional write found another version, or none (RGW answers a missing
# object's If-Match with 412, moto with 404); AWS answers 409 to a concurrent one.
_CONFLICT_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "NoSuchKey", "404"}


class _StateChanged(Exception):
    """A conditional write of the state found a version other than the expected one."""


def _upload_prefix(upload_id: str) -> str:
    return f"{UPLOADS_PREFIX}{upload_id}/"


def _state_key(upload_id: str) -> str:
    return _upload_prefix(upload_id) + "state.json"


def _tail_key(upload_id: str, token: str) -> str:
    return _upload_prefix(upload_id) + f"tail-{token}"


async def _conditional(call: Awaitable[T]) -> T:
    try:
        return await call
    except ClientError as exc:
        if error_code(exc) in _CONFLICT_CODES:
            raise _StateChanged from exc
        raise


async def _read_into(stream: Any, buf: bytearray) -> None:
    try:
        async for chunk in stream.iter_chunks(READ_CHUNK):
            buf += chunk
    finally:
        stream.close()


def _md5(data: bytes | bytearray) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def part_target(size: int, buffered: int, to_come: int | None) -> int:
    """How many bytes the part being filled should hold.

    ``size`` is the layout's size for that part, ``buffered`` what it holds already,
    ``to_come`` the bytes of this PATCH not buffered yet (None: not known). If cutting
    at ``size`` would leave 1 to MIN_PART_SIZE - 1 bytes of the PATCH behind, the part
    takes them too, so that they need no tail: up to ``size + MIN_PART_SIZE - 1``
    bytes, never over MAX_PART_SIZE.
    """
    if buffered >= size:
        return buffered  # a kept tail that fills a part already goes as it is
    if to_come is None:
        return size
    rest = buffered + to_come - size
    if 0 < rest < MIN_PART_SIZE and size + rest <= MAX_PART_SIZE:
        return size + rest
    return size


def leftover_is_part(
    *,
    buffered: int,
    number: int,
    part_size: int,
    growing: bool,
    length: int | None,
    end: int,
    max_parts: int = MAX_PARTS,
) -> bool:
    """Whether the ``buffered`` bytes left at the end of an append, up to offset
    ``end``, go to S3 now as part ``number`` instead of to a tail object.

    Only when the upload's length was known at creation (so ``part_size`` fits it in
    ``max_parts``) and is over one part (one that never fills a part ends as one
    PutObject). Then the bytes that complete the upload are its last part, of any
    size, once a part exists; other bytes only if they make a valid non-last part
    (MIN_PART_SIZE) and the rest of the upload still fits in ``max_parts`` parts.
    """
    if buffered == 0 or growing or length is None or length <= part_size or number > max_parts:
        return False
    if end >= length:
        return number > 1
    return buffered >= MIN_PART_SIZE and number + -(-(length - end) // part_size) <= max_parts


@dataclass(frozen=True)
class _Layout:
    """What ``UploadState.backend`` records about where the upload's bytes are."""

    part_size: int
    growing: bool  # unknown length at creation: part sizes follow the growing schedule
    upload_id: str | None = None
    parts: tuple[tuple[int, str, int], ...] = ()  # (number, ETag, size)
    tail: str | None = None

    @classmethod
    def of(cls, state: UploadState) -> _Layout:
        b = state.backend
        return cls(
            part_size=b["part_size"],
            growing=b["growing"],
            upload_id=b.get("upload_id"),
            parts=tuple((int(n), str(e), int(s)) for n, e, s in b.get("parts", [])),
            tail=b.get("tail"),
        )

    def backend(self) -> dict[str, Any]:
        record: dict[str, Any] = {"part_size": self.part_size, "growing": self.growing}
        if self.upload_id is not None:
            record["upload_id"] = self.upload_id
        if self.parts:
            record["parts"] = [list(p) for p in self.parts]
        if self.tail is not None:
            record["tail"] = self.tail
        return record

    def size_of(self, number: int) -> int:
        if self.growing:
            return part_size_for_unknown_size(number, self.part_size)
        return self.part_size

    @property
    def in_parts(self) -> int:
        return sum(size for _, _, size in self.parts)


@dataclass(eq=False)
class _Held:
    """This process's lock on one upload."""

    upload_id: str
    holder: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: UploadState | None = None  # as last read or written; None once removed
    deadline: float = 0.0  # event loop time at which our lease may have run out
    lost: bool = False
    # Serialises writes of the state (saves and renewals): each needs the last ETag.
    mutex: asyncio.Lock = field(default_factory=asyncio.Lock)
    renewer: asyncio.Task[None] | None = None

    def check(self) -> None:
        """Stop if another process may have taken the upload over."""
        if not self.lost and asyncio.get_running_loop().time() >= self.deadline:
            self.lost = True
        if self.lost:
            raise UploadLocked(f"upload {self.upload_id}: this request's lock ran out")


class S3ResumableStore:
    def __init__(self, storage: S3Storage, lock_lease: float) -> None:
        self._storage = storage
        self._lease = lock_lease
        self._held: dict[str, _Held] = {}

    @property
    def _client(self) -> Any:
        return self._storage.client

    @property
    def _bucket(self) -> str:
        return self._storage.bucket

    async def start(self) -> None:
        """Nothing to prepare: the S3Storage it shares is started by the application."""

    async def close(self) -> None:
        """Nothing to release: writes that must finish run in the storage's Cleanups,
        which S3Storage.close() waits for."""

    # State

    async def _read_state(self, upload_id: str) -> tuple[UploadState, dict[str, Any]]:
        key = _state_key(upload_id)
        try:
            response = await upstream(self._client.get_object(Bucket=self._bucket, Key=key), key=key)
        except ObjectNotFound:
            raise UploadNotFound(upload_id) from None
        data = bytearray()
        await upstream(_read_into(response["Body"], data))
        return UploadState.from_json(bytes(data), version=quoted_etag(response["ETag"])), response

    async def _put_state(self, state: UploadState, *, if_match: str | None) -> str:
        """Write ``state`` if the stored one is still ``if_match`` (None: if there is
        none); returns the new ETag, or raises _StateChanged."""
        body = state.to_json()
        args: dict[str, Any] = {
            "Bucket": self._bucket,
            "Key": _state_key(state.id),
            "Body": body,
            "ContentType": "application/json",
        }
        if if_match is None:
            args["IfNoneMatch"] = "*"
        else:
            args["IfMatch"] = if_match.strip('"')  # RGW 16.2 only matches the bare ETag
        try:
            response = await upstream(_conditional(self._client.put_object(**args)))
        except _StateChanged:
            # botocore retries a write whose answer was lost, and the retry fails the
            # condition that the first attempt met: if what is stored is byte for byte
            # what we sent (every locked write carries a fresh nonce), it is ours.
            try:
                stored, _ = await self._read_state(state.id)
            except UploadNotFound:
                raise _StateChanged from None
            if stored.to_json() != body or stored.version is None:
                raise
            return stored.version
        return quoted_etag(response["ETag"])

    async def create(self, state: UploadState) -> UploadState:
        try:
            if state.length is None:
                layout = _Layout(self._storage.cfg.part_size, growing=True)
            else:
                layout = _Layout(part_size_for_known_size(state.length, self._storage.cfg.part_size), False)
        except ValueError as exc:
            raise ObjectTooLarge(str(exc)) from None
        stored = replace(state, backend=layout.backend())
        try:
            version = await self._put_state(stored, if_match=None)
        except _StateChanged:
            raise StorageError(f"upload {state.id} exists already") from None
        return replace(stored, version=version)

    async def get(self, upload_id: str) -> UploadState:
        state, _ = await self._read_state(upload_id)
        return state

    # Lock

    def lock(self, upload_id: str) -> contextlib.AbstractAsyncContextManager[UploadState]:
        return self._locked(upload_id)

    @contextlib.asynccontextmanager
    async def _locked(self, upload_id: str) -> AsyncIterator[UploadState]:
        if upload_id in self._held:
            raise UploadLocked(f"upload {upload_id} is being written to")
        held = self._held[upload_id] = _Held(upload_id)
        try:
            state = await self._acquire(held)
            held.renewer = asyncio.create_task(self._renew(held))
            try:
                yield state
            finally:
                await self._storage.cleanups.run(self._release(held))
        finally:
            del self._held[upload_id]

    async def _acquire(self, held: _Held) -> UploadState:
        state, response = await self._read_state(held.upload_id)
        lease = state.backend.get("lease")
        if lease is not None:
            date = response["ResponseMetadata"]["HTTPHeaders"].get("date")
            now = parsedate_to_datetime(date).timestamp() if date else time.time()
            if now < response["LastModified"].timestamp() + float(lease["seconds"]) + 1:
                raise UploadLocked(f"upload {held.upload_id} is being written to")
        held.state = state
        async with held.mutex:
            return await self._write_held(held, state)

    async def _write_held(self, held: _Held, state: UploadState) -> UploadState:
        """Write ``state`` with our lease over the version we hold; the caller holds
        ``held.mutex``. UploadLocked if another process has written it meanwhile."""
        assert held.state is not None and held.state.version is not None
        if held.lost:
            raise UploadLocked(f"upload {held.upload_id}: this request's lock ran out")
        lease = {"holder": held.holder, "seconds": self._lease, "write": uuid.uuid4().hex}
        state = replace(state, backend={**state.backend, "lease": lease})
        sent = asyncio.get_running_loop().time()
        try:
            version = await self._put_state(state, if_match=held.state.version)
        except _StateChanged:
            held.lost = True
            raise UploadLocked(f"upload {held.upload_id} was taken over by another request") from None
        held.state = replace(state, version=version)
        held.deadline = sent + self._lease
        return held.state

    async def _save_held(self, held: _Held, state: UploadState) -> UploadState:
        async with held.mutex:
            return await self._write_held(held, state)

    async def _renew(self, held: _Held) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            async with held.mutex:
                if held.state is None or held.lost:
                    return
                try:
                    await self._write_held(held, held.state)
                except UploadLocked:
                    log.warning("lost the lock on upload %s", held.upload_id)
                    return
                except StorageError as exc:
                    # Try again: the lease lasts three renewals, and check() stops
                    # the writer once it has run out.
                    log.warning("could not renew the lock on upload %s: %s", held.upload_id, exc)

    async def _release(self, held: _Held) -> None:
        async with held.mutex:
            # Stopped while it sleeps or waits for the mutex, never in the middle of a
            # write whose new ETag we would then not know.
            if held.renewer is not None:
                held.renewer.cancel()
                await asyncio.wait([held.renewer])
            if held.state is None or held.lost or held.state.version is None:
                return
            backend = {k: v for k, v in held.state.backend.items() if k != "lease"}
            try:
                await self._put_state(replace(held.state, backend=backend), if_match=held.state.version)
            except _StateChanged:
                log.warning("upload %s was taken over before its lock was released", held.upload_id)
            except StorageError as exc:
                log.warning(
                    "could not release the lock on upload %s (it runs out in %s s): %s",
                    held.upload_id,
                    self._lease,
                    exc,
                )

    def _holding(self, state: UploadState) -> _Held:
        held = self._held.get(state.id)
        if held is None or held.state is None:
            raise RuntimeError(f"upload {state.id} is not locked by this process")
        held.check()
        return held

    async def save(self, state: UploadState) -> UploadState:
        return await self._save_held(self._holding(state), state)

    # Bytes

    def _target(self, state: UploadState) -> UploadTarget:
        return UploadTarget(self._client, self._bucket, state.key, state.content_type)

    def _part_sender(self, state: UploadState, upload_id: str) -> PartSender:
        return self._target(state).part_sender(
            upload_id, max_concurrency=self._storage.cfg.max_concurrency, budget=self._storage.budget
        )

    async def _read_tail(self, state: UploadState, layout: _Layout, buf: bytearray) -> None:
        if layout.tail is None:
            return
        key = _tail_key(state.id, layout.tail)
        try:
            response = await upstream(self._client.get_object(Bucket=self._bucket, Key=key), key=key)
        except ObjectNotFound:
            raise UpstreamError(f"upload {state.id}: its stored bytes are missing ({key})") from None
        await upstream(_read_into(response["Body"], buf))
        expected = state.offset - layout.in_parts
        if len(buf) != expected:
            raise UpstreamError(f"upload {state.id}: {key} holds {len(buf)} bytes, not {expected}")

    async def _delete_quietly(self, key: str) -> None:
        """Delete an object that nothing refers to any more; one left behind goes when
        its upload is terminated or expires."""
        try:
            await upstream(self._client.delete_object(Bucket=self._bucket, Key=key))
        except StorageError as exc:
            log.warning("could not delete %s: %s", key, exc)

    async def append(self, state: UploadState, body: UploadBody) -> UploadState:
        appending = _Append(self, self._holding(state), state)
        try:
            await appending.take(body)
        except BaseException as exc:
            keep = body.keeps_partial and (appending.body_failed or isinstance(exc, asyncio.CancelledError))
            if not keep:
                await self._storage.cleanups.run(appending.discard())
                raise
            try:
                await self._storage.cleanups.run(appending.save(body))
            except StorageError as save_error:
                log.warning("upload %s: could not keep a cut-off chunk: %s", state.id, save_error)
            raise
        return await self._storage.cleanups.run(appending.save(body))

    async def finish(self, state: UploadState) -> ObjectInfo:
        # Once every byte is in, publishing no longer depends on the client: it runs
        # to the end even if the request is cancelled meanwhile.
        return await self._storage.cleanups.run(self._finish(self._holding(state), state))

    async def _finish(self, held: _Held, state: UploadState) -> ObjectInfo:
        layout = _Layout.of(state)
        target = self._target(state)
        sha256 = ResumableSha256(state.sha256).hexdigest()
        budget = self._storage.budget
        reserved = await budget.acquire(state.offset - layout.in_parts)
        try:
            tail = bytearray()
            await self._read_tail(state, layout, tail)
            if not layout.parts:
                etag = await target.put(tail, sha256)
                if layout.upload_id is not None:  # created by an append that then failed
                    await target.abort(layout.upload_id)
            else:
                assert layout.upload_id is not None
                etags = {number: etag for number, etag, _ in layout.parts}
                try:
                    if tail:
                        sender = self._part_sender(state, layout.upload_id)
                        sender.start(len(layout.parts) + 1, tail, reserved)
                        reserved = 0
                        await sender.wait_all()
                        etags.update(sender.etags)
                    etag, size = await target.complete(layout.upload_id, etags)
                    etag = await target.attach_sha256(etag, size, sha256)
                except UpstreamError:
                    published = await self._published_before(target, state, layout, tail, sha256)
                    if published is None:
                        raise
                    etag = published
        finally:
            budget.release(reserved)
        self._storage.forget_recent(state.key)
        done = _Layout(layout.part_size, layout.growing)
        await self._save_held(held, replace(state, done=True, backend=done.backend()))
        if layout.tail is not None:
            await self._delete_quietly(_tail_key(state.id, layout.tail))
        return ObjectInfo(
            key=state.key,
            size=state.offset,
            etag=etag,
            last_modified=datetime.now().astimezone(),
            content_type=state.content_type,
            sha256=sha256,
        )

    async def _published_before(
        self, target: UploadTarget, state: UploadState, layout: _Layout, tail: bytearray, sha256: str
    ) -> str | None:
        """The object's ETag if an earlier finish of this upload already completed it
        and then stopped before saving done (a crash, a lost answer): that multipart
        upload is gone, so this finish fails. The object is known by the sha256 the
        earlier finish attached, or before that by the multipart ETag its parts make
        (the MD5 of their MD5s, as S3 computes it; ``tail``, read by this finish, was
        the last part), and the work is taken up there."""
        try:
            info = await self._storage.stat(state.key)
        except ObjectNotFound:
            return None
        if info.size != state.offset:
            return None
        if info.sha256 == sha256:
            return info.etag
        try:
            md5s = [bytes.fromhex(etag.strip('"')) for _, etag, _ in layout.parts]
        except ValueError:
            return None  # not MD5 ETags (e.g. SSE-KMS): nothing to compare
        if tail:
            md5s.append(await asyncio.to_thread(_md5, tail))
        if info.etag != f'"{_md5(b"".join(md5s)).hex()}-{len(md5s)}"':
            return None
        log.info("upload %s: finishing the work of an earlier finish that stopped", state.id)
        return await target.attach_sha256(info.etag, info.size, sha256)

    async def terminate(self, state: UploadState) -> None:
        held = self._holding(state)
        layout = _Layout.of(state)
        if layout.upload_id is not None:
            await self._target(state).abort(layout.upload_id)
        state_key = _state_key(state.id)
        # Every tail, also those of appends that died before saving; the state goes
        # last, so that a failure here leaves the upload for the next sweep to find.
        for key in await self._keys(_upload_prefix(state.id)):
            if key != state_key:
                await upstream(self._client.delete_object(Bucket=self._bucket, Key=key))
        async with held.mutex:
            await upstream(self._client.delete_object(Bucket=self._bucket, Key=state_key))
            held.state = None

    async def _listing(self, prefix: str, **args: Any) -> AsyncIterator[dict[str, Any]]:
        token: str | None = None
        while True:
            page_args = {"Bucket": self._bucket, "Prefix": prefix, **args}
            if token is not None:
                page_args["ContinuationToken"] = token
            page: dict[str, Any] = await upstream(self._client.list_objects_v2(**page_args))
            yield page
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    async def _keys(self, prefix: str) -> list[str]:
        return [item["Key"] async for page in self._listing(prefix) for item in page.get("Contents", [])]

    async def upload_ids(self) -> list[str]:
        return [
            entry["Prefix"][len(UPLOADS_PREFIX) : -1]
            async for page in self._listing(UPLOADS_PREFIX, Delimiter="/")
            for entry in page.get("CommonPrefixes", [])
        ]


class _Append:
    """One append on its way into S3: the part being filled, the parts sent, the new tail.

    The part buffer is reserved from the storage's MemoryBudget before it is filled,
    starting with the current tail, at its whole size (part_target); every full part
    goes to a PartSender, which owns the buffer and reservation from then on.
    """

    def __init__(self, store: S3ResumableStore, held: _Held, state: UploadState) -> None:
        self._store = store
        self._held = held
        self._state = state
        self._layout = _Layout.of(state)
        self._budget = store._storage.budget
        self._number = len(self._layout.parts) + 1
        self._sent: list[tuple[int, int]] = []  # (number, size) of the parts this append sent
        self._sender: PartSender | None = None
        self._creating: asyncio.Future[None] | None = None
        self._buf = bytearray()
        self._target = 0  # the size at which the part in the buffer is sent
        self._reserved = 0
        # Bytes the body has given (and hashed) that are not in the buffer yet.
        self._pending = memoryview(b"")
        self._new_tail: str | None = None
        self.body_failed = False

    async def take(self, body: UploadBody) -> None:
        """Read all of ``body``, sending each part as it fills; the rest stays in the buffer."""
        await self._reserve(body, self._state.offset - self._layout.in_parts)
        await self._store._read_tail(self._state, self._layout, self._buf)
        chunks = aiter(body)
        while True:
            # A cut-off append may have kept a whole part as its tail.
            if len(self._buf) >= self._target:
                await self._send_part()
                await self._reserve(body, 0)
            if not self._pending:
                chunk = await self._next(chunks)
                if chunk is None:
                    return
                self._pending = memoryview(chunk)
                self._held.check()
            room = self._target - len(self._buf)
            self._buf += self._pending[:room]
            self._pending = self._pending[room:]

    async def _reserve(self, body: UploadBody, buffered: int) -> None:
        """Size the part about to be filled, which holds ``buffered`` bytes, and
        reserve it. Nothing else is held meanwhile (the parts in flight let go of
        theirs on their own), so two appends never wait for each other."""
        to_come = None
        if body.expected is not None:
            to_come = max(body.expected - body.taken, 0) + len(self._pending)
        self._target = part_target(self._layout.size_of(self._number), buffered, to_come)
        self._reserved = await self._budget.acquire(self._target)

    async def _next(self, chunks: AsyncIterator[bytes]) -> bytes | None:
        try:
            return await anext(chunks)
        except StopAsyncIteration:
            return None
        except BaseException:
            self.body_failed = True
            raise

    async def _send_part(self) -> None:
        if self._number > MAX_PARTS:
            raise ObjectTooLarge(f"the upload needs more than {MAX_PARTS} parts")
        if self._sender is None:
            if self._layout.upload_id is None:
                # Shielded: a multipart upload must not exist without a state naming it.
                self._creating = asyncio.ensure_future(self._create_multipart())
                await asyncio.shield(self._creating)
            assert self._layout.upload_id is not None
            self._sender = self._store._part_sender(self._state, self._layout.upload_id)
        await self._sender.wait_for_slot()
        data, reserved = self._buf, self._reserved
        self._buf, self._reserved = bytearray(), 0
        self._sender.start(self._number, data, reserved)
        self._sent.append((self._number, len(data)))
        self._number += 1

    async def _create_multipart(self) -> None:
        target = self._store._target(self._state)
        upload_id = await target.create_multipart()
        layout = replace(self._layout, upload_id=upload_id)
        try:
            self._state = await self._store._save_held(
                self._held, replace(self._state, backend=layout.backend())
            )
        except BaseException:
            try:
                await target.abort(upload_id)
            except StorageError as exc:
                log.warning("could not abort multipart upload %s of %s: %s", upload_id, target.key, exc)
            raise
        self._layout = layout

    async def _settle(self) -> None:
        if self._creating is not None:
            await asyncio.wait([self._creating])

    async def save(self, body: UploadBody) -> UploadState:
        """Store what was taken: send the rest as a part (leftover_is_part) or wait
        for the parts and write it as the new tail, save the state that names them;
        on any failure, discard() instead."""
        try:
            await self._settle()
            # Cancelled between taking a chunk and buffering all of it: body.taken
            # (and the hash) count those bytes, so they are stored too.
            self._buf += self._pending
            self._pending = memoryview(b"")
            if leftover_is_part(
                buffered=len(self._buf),
                number=self._number,
                part_size=self._layout.part_size,
                growing=self._layout.growing,
                length=self._state.length,
                end=self._state.offset + body.taken,
            ):
                await self._send_part()
            if self._sender is not None:
                await self._sender.wait_all()
            layout = self._layout
            if self._sent or body.taken:
                layout = replace(layout, parts=layout.parts + self._sent_parts(), tail=await self._put_tail())
            saved = await self._store._save_held(
                self._held, body.advanced(self._state, backend=layout.backend())
            )
        except BaseException:
            await self.discard()
            raise
        finally:
            self._budget.release(self._reserved)
            self._reserved = 0
        if layout.tail != self._layout.tail and self._layout.tail is not None:
            await self._store._delete_quietly(_tail_key(self._state.id, self._layout.tail))
        return saved

    def _sent_parts(self) -> tuple[tuple[int, str, int], ...]:
        if self._sender is None:
            return ()
        etags = self._sender.etags
        return tuple((number, etags[number], size) for number, size in self._sent)

    async def _put_tail(self) -> str | None:
        if not self._buf:
            return None
        # Named before the PUT, so that discard() removes it even if its answer is lost.
        self._new_tail = uuid.uuid4().hex
        key = _tail_key(self._state.id, self._new_tail)
        await upstream(self._store._client.put_object(Bucket=self._store._bucket, Key=key, Body=self._buf))
        return self._new_tail

    async def discard(self) -> None:
        """Give up this append: stop its parts, free its buffer, remove its tail. The
        saved state is left as it was; the parts sent are overwritten by the next append."""
        await self._settle()
        if self._sender is not None:
            await self._sender.cancel()
        self._budget.release(self._reserved)
        self._reserved = 0
        if self._new_tail is not None:
            await self._store._delete_quietly(_tail_key(self._state.id, self._new_tail))
