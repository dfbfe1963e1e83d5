"""One append (a PATCH body) on its way into S3.

An append reads the upload's tail, adds the chunk, sends every part that is full,
writes the rest to a new tail object (a new token each time) and saves a state that
names it, with every part's number, ETag and size. The old tail is deleted only after
that save, so a saved state always names a tail that exists. Tails of appends that
never got saved stay under the upload's prefix until the upload is terminated or
expires, which removes the whole prefix.

A part that the PATCH's announced length will fill is sent while it fills, where the
endpoint allows it (s3.part_stream): a PATCH that is one part then takes about the
time of its bytes' transfer, not that of receiving them and then sending them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

from proxy.storage.base import ObjectTooLarge, StorageError
from proxy.storage.resumable import UploadBody, UploadState
from proxy.storage.s3.limits import MAX_PARTS
from proxy.storage.s3.multipart import PartSender, StreamedPart, UploadTarget
from proxy.storage.s3.resumable.lease import Lease
from proxy.storage.s3.resumable.plan import PartLayout, leftover_is_part, part_target
from proxy.storage.s3.resumable.records import UploadRecords
from proxy.streaming.budget import MemoryBudget
from proxy.streaming.part_buffer import PartBuffer

log = logging.getLogger(__name__)


class Append:
    """One append on its way into S3: the part being filled, the parts sent, the new tail.

    The part being filled (a PartBuffer: in memory as far as the storage's
    MemoryBudget allows) starts with the current tail; every full part goes to a
    PartSender, which owns its buffer from then on.
    """

    def __init__(
        self,
        state: UploadState,
        *,
        lease: Lease,
        records: UploadRecords,
        target: UploadTarget,
        budget: MemoryBudget,
        max_concurrency: int,
    ) -> None:
        self._lease = lease
        self._records = records
        self._target = target
        self._max_concurrency = max_concurrency
        self._state = state
        self._layout = PartLayout.of(state)
        self._budget = budget
        self._number = len(self._layout.parts) + 1
        self._sent: list[tuple[int, int]] = []  # (number, size) of the parts this append sent
        self._sender: PartSender | None = None
        self._streamed: StreamedPart | None = None  # the part being filled, on its way already
        self._creating: asyncio.Future[None] | None = None
        self._part = PartBuffer(budget)
        self._fill_to = 0  # the size at which the part in the buffer is sent
        # Bytes the body has given (and hashed) that are not in the buffer yet.
        self._pending = memoryview(b"")
        self._new_tail: str | None = None
        self.body_failed = False

    async def take(self, body: UploadBody) -> None:
        """Read all of ``body``, sending each part as it fills; the rest stays in the buffer."""
        await self._lease.hold()  # an earlier append under this lock may have released it
        self._plan(body, self._state.offset - self._layout.in_parts)
        await self._records.read_tail(self._state, self._layout, self._part)
        await self._start_streaming(body)
        chunks = aiter(body)
        while True:
            # A cut-off append may have kept a whole part as its tail.
            if self._part.size >= self._fill_to:
                await self._send_part()
                self._plan(body, 0)
                await self._start_streaming(body)
            if not self._pending:
                chunk = await self._next(chunks)
                if chunk is None:
                    return
                self._pending = memoryview(chunk)
                self._lease.check()
            room = self._fill_to - self._part.size
            piece, self._pending = self._pending[:room], self._pending[room:]
            await self._part.add(piece)  # in the part even if cancelled meanwhile

    def _plan(self, body: UploadBody, buffered: int) -> None:
        """Size the part about to be filled, which holds ``buffered`` bytes."""
        to_come = None
        if body.expected is not None:
            to_come = max(body.expected - body.taken, 0) + len(self._pending)
        self._fill_to = part_target(self._layout.size_of(self._number), buffered, to_come)

    async def _next(self, chunks: AsyncIterator[bytes]) -> bytes | None:
        try:
            return await anext(chunks)
        except StopAsyncIteration:
            return None
        except BaseException:
            self.body_failed = True
            raise

    async def _start_streaming(self, body: UploadBody) -> None:
        """Send the part being filled while it fills, if the body's announced length
        fills it and the endpoint allows it."""
        streamer = self._target.streamer
        if streamer is None or body.expected is None or self._number > MAX_PARTS:
            return
        to_come = max(body.expected - body.taken, 0) + len(self._pending)
        if self._part.size + to_come < self._fill_to:
            return  # this PATCH ends before the part does: it goes as a tail or at save()
        sender = await self._part_sender()
        await sender.wait_for_slot()
        self._streamed = sender.stream(self._number, self._part, self._fill_to, streamer)

    async def _send_part(self) -> None:
        if self._number > MAX_PARTS:
            raise ObjectTooLarge(f"the upload needs more than {MAX_PARTS} parts")
        part, streamed = self._part, self._streamed
        if streamed is not None:  # on its way already: it is whole now
            self._streamed = None
            streamed.hand_over()
        else:
            sender = await self._part_sender()
            await sender.wait_for_slot()
            sender.start(self._number, part)
        self._part = PartBuffer(self._budget)
        self._sent.append((self._number, part.size))
        self._number += 1

    async def _part_sender(self) -> PartSender:
        if self._sender is None:
            if self._layout.upload_id is None:
                # Shielded: a multipart upload must not exist without a state naming it.
                self._creating = asyncio.ensure_future(self._create_multipart())
                await asyncio.shield(self._creating)
            assert self._layout.upload_id is not None
            self._sender = self._target.part_sender(
                self._layout.upload_id, max_concurrency=self._max_concurrency
            )
        return self._sender

    async def _create_multipart(self) -> None:
        target = self._target
        upload_id = await target.create_multipart()
        layout = replace(self._layout, upload_id=upload_id)
        try:
            self._state = await self._lease.save(replace(self._state, backend=layout.backend()))
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
            await self._withdraw_streamed()
            # Cancelled between taking a chunk and buffering all of it: body.taken
            # (and the hash) count those bytes, so they are stored too.
            pending, self._pending = self._pending, memoryview(b"")
            await self._part.add(pending)
            if leftover_is_part(
                buffered=self._part.size,
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
            advanced = body.advanced(self._state, backend=layout.backend())
            # An incomplete upload is left for the next PATCH: this save is the release
            # (one write fewer). A complete one is published next, under the lease.
            saved = await self._lease.save(advanced, release=not advanced.complete)
        except BaseException:
            await self.discard()
            raise
        finally:
            self._part.close()
        if layout.tail != self._layout.tail and self._layout.tail is not None:
            await self._records.delete_tail(self._state.id, self._layout.tail)
        return saved

    def _sent_parts(self) -> tuple[tuple[int, str, int], ...]:
        if self._sender is None:
            return ()
        etags = self._sender.etags
        return tuple((number, etags[number], size) for number, size in self._sent)

    async def _put_tail(self) -> str | None:
        if not self._part.size:
            return None
        # Named before the PUT, so that discard() removes it even if its answer is lost.
        self._new_tail = self._records.new_tail()
        await self._records.put_tail(self._state.id, self._new_tail, self._part)
        return self._new_tail

    async def _withdraw_streamed(self) -> None:
        """The body was cut off before the part on its way was whole: that part will
        not be, so its bytes are kept like any others that do not fill a part."""
        streamed, self._streamed = self._streamed, None
        if streamed is not None:
            assert self._sender is not None
            await self._sender.withdraw(streamed)

    async def discard(self) -> None:
        """Give up this append: stop its parts, free its buffer, remove its tail. The
        saved state is left as it was; the parts sent are overwritten by the next append."""
        await self._settle()
        if self._sender is not None:
            await self._sender.cancel()
        self._part.close()
        if self._new_tail is not None:
            await self._records.delete_tail(self._state.id, self._new_tail)
