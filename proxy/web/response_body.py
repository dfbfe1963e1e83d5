"""The body of a download: sendfile when the backend has files, else one backend
read per range, relayed to the client's socket (splice) when the backend and the
connection allow it, else streamed through aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import BinaryIO

from aiohttp import web

from proxy.rules.ranges import ByteRange
from proxy.storage.base import BodyRelay, ObjectInfo, Relayed, Storage, StorageError, as_relayed
from proxy.streaming.client_socket import ClientSocket
from proxy.streaming.splice import ClientStalled
from proxy.web.sendfile import FileEnded, send_file

log = logging.getLogger(__name__)


async def send_body(request: web.Request, response: web.StreamResponse, body: Body) -> None:
    """Send the headers, then the opened body; failures after the headers end the
    response here, as nothing else can be answered."""
    try:
        await response.prepare(request)
        await body.send(response)
        await response.write_eof()
    except ClientStalled as exc:
        # Still connected, mid-body: only closing ends this response.
        log.info("GET %s: %s, closing the connection", body.info.key, exc)
        if request.transport is not None:
            request.transport.abort()
    except ConnectionError:
        # Browsers cancel range requests they no longer need (every seek does): the
        # headers are out, so there is nothing to answer and nothing went wrong here.
        log.debug("client went away during GET %s", body.info.key)
    except StorageError as exc:
        # The object changed or the store failed between two ranges: the headers are
        # out, so the only honest answer is to cut the connection short.
        log.warning("GET %s failed after its headers were sent: %s", body.info.key, exc)
        if request.transport is not None:
            request.transport.close()


# A body of one range up to this size is read whole before the head is sent.
SMALL_BODY = 64 * 1024


def _read_exactly(file: BinaryIO, byte_range: ByteRange, key: str) -> bytes:
    data = os.pread(file.fileno(), byte_range.length, byte_range.start)
    if len(data) != byte_range.length:
        # Never in place: writes replace a file by renaming another onto it.
        raise StorageError(f"{key}: the file ended {byte_range.length - len(data)} bytes early")
    return data


class Body:
    """The ranges of one object: sendfile when the backend has files, else one
    backend read per range, relayed to the client's socket when the backend and the
    connection allow it. The first read starts in open(), before any header is sent,
    so that a missing or changed object can still be answered properly."""

    def __init__(
        self,
        storage: Storage,
        info: ObjectInfo,
        parts: list[tuple[bytes, ByteRange]],
        closing: bytes,
        *,
        whole: bool,
        send_timeout: float | None,
        file: BinaryIO | None = None,
    ) -> None:
        self.storage = storage
        self.info = info
        self.parts = parts
        self.closing = closing
        self.whole = whole
        self.send_timeout = send_timeout
        # The object's file, opened (and closed) by the caller, when the backend has files.
        self._file = file
        self._first: AsyncIterator[bytes] | None = None
        self._first_chunk = b""
        # Both set when reads can be relayed to the client's socket.
        self._relayed: Relayed | None = None
        self._client: ClientSocket | None = None
        self._first_relay: BodyRelay | None = None
        # The whole body, when it is one small range read by open(): it then goes out
        # with the head in one write, instead of through sendfile or a relay, whose
        # set-up costs more than the bytes for the small ranges players ask for.
        self.held: bytes | None = None

    async def open(self, transport: asyncio.BaseTransport | None) -> None:
        if not self.parts:
            return
        header, first = self.parts[0]
        small = len(self.parts) == 1 and not header and not self.closing and first.length <= SMALL_BODY
        if self._file is not None:
            if small:
                # sendfile reads the file on the loop too: this blocks no more than it would.
                self.held = _read_exactly(self._file, first, self.info.key)
            self._client = ClientSocket.of(transport)
            return
        relayed = as_relayed(self.storage)
        if relayed is not None:
            self._client = ClientSocket.of(transport)
            self._relayed = relayed if self._client is not None else None
        self._first_relay = await self._open_relay(first)
        if self._first_relay is not None:
            if small:
                self.held = await self._first_relay.read_whole(SMALL_BODY)
            return
        self._first = self._read(first)
        self._first_chunk = await anext(self._first, b"")
        if small and len(self._first_chunk) == first.length:
            self.held = self._first_chunk

    async def close(self) -> None:
        if self._first_relay is not None:
            self._first_relay.close()  # at once, like the aclose() below
        if self._first is not None:
            # Releases the S3 response at once when the client went away.
            await self._first.aclose()  # type: ignore[attr-defined]
        if self._client is not None:
            self._client.close()

    def _read(self, byte_range: ByteRange) -> AsyncIterator[bytes]:
        # A whole-object read asks for no range at all: one plain GetObject on S3.
        end = None if self.whole else byte_range.end
        return self.storage.read(self.info.key, byte_range.start, end, etag=self.info.etag)

    async def _open_relay(self, byte_range: ByteRange) -> BodyRelay | None:
        if self._relayed is None:
            return None
        end = None if self.whole else byte_range.end
        return await self._relayed.open_relay(
            self.info.key, byte_range.start, end, etag=self.info.etag, size=self.info.size
        )

    async def send(self, response: web.StreamResponse) -> None:
        for index, (header, byte_range) in enumerate(self.parts):
            if header:
                await self._write(response, header)
            if self._file is not None and self._client is not None:
                await self._sendfile(self._client, self._file, byte_range)
            elif self._file is not None:  # no socket to write to (TLS): plain reads
                await self._stream(byte_range, response)
            elif index == 0 and self._first_relay is not None:
                await self._relay(self._first_relay)
                # Its connection now serves the next range (and with one allowed, must).
                self._first_relay.close()
            elif index == 0 and self._first is not None:
                await self._write(response, self._first_chunk)
                await self._copy(self._first, response)
            else:
                await self._stream(byte_range, response)
        if self.closing:
            await self._write(response, self.closing)

    async def _sendfile(self, client: ClientSocket, fh: BinaryIO, byte_range: ByteRange) -> None:
        fd = await client.writable(self.send_timeout)
        try:
            await send_file(fd, fh.fileno(), byte_range.start, byte_range.length, self.send_timeout)
        except FileEnded as exc:
            # Never in place: writes replace a file by renaming another onto it.
            raise StorageError(f"{self.info.key}: {exc}") from exc

    async def _relay(self, relay: BodyRelay) -> None:
        assert self._client is not None  # a relay is only opened with a client socket
        fd = await self._client.writable(self.send_timeout)
        await relay.send_to(fd, send_timeout=self.send_timeout)

    async def _stream(self, byte_range: ByteRange, response: web.StreamResponse) -> None:
        relay = await self._open_relay(byte_range)
        if relay is not None:
            try:
                await self._relay(relay)
            finally:
                relay.close()
            return
        chunks = self._read(byte_range)
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            await self._copy(chunks, response)

    async def _copy(self, chunks: AsyncIterator[bytes], response: web.StreamResponse) -> None:
        async for chunk in chunks:
            await self._write(response, chunk)

    async def _write(self, response: web.StreamResponse, data: bytes) -> None:
        # Timed per write of at most one read chunk (256 KiB from S3): a client still
        # taking bytes, but slower than a chunk per send_timeout, is cut off too.
        try:
            async with asyncio.timeout(self.send_timeout):
                await response.write(data)
        except TimeoutError:
            assert self.send_timeout is not None
            raise ClientStalled(self.send_timeout) from None
