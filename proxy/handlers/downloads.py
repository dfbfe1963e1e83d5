"""GET and HEAD /files/{key}: objects with HTTP Range and conditional requests.

The protocol decisions are pure functions (http_conditions, http_ranges); this module
only gathers what they need and writes the answer. Every range becomes one read from
the backend: one ranged GetObject on S3, sendfile on a local file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import BinaryIO

from aiohttp import web

from proxy.errors import ApiError
from proxy.handlers.files import STORAGE, object_key
from proxy.http_conditions import evaluate_preconditions, format_http_date, if_range_allows_partial
from proxy.http_ranges import (
    ByteRange,
    PartialBody,
    RangeResult,
    Unsatisfiable,
    WholeBody,
    make_boundary,
    multipart_byteranges,
    parse_range,
)
from proxy.storage.base import FileBacked, ObjectInfo, Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadSettings:
    cache_control: str
    max_ranges: int


DOWNLOADS: web.AppKey[DownloadSettings] = web.AppKey("downloads", DownloadSettings)


def content_type_of(info: ObjectInfo) -> str:
    return info.content_type or mimetypes.guess_type(info.key)[0] or "application/octet-stream"


def validators(info: ObjectInfo, settings: DownloadSettings) -> dict[str, str]:
    headers = {"ETag": info.etag, "Last-Modified": format_http_date(info.last_modified)}
    if settings.cache_control:
        headers["Cache-Control"] = settings.cache_control
    return headers


async def get_file(request: web.Request) -> web.StreamResponse:
    key = object_key(request)
    storage = request.app[STORAGE]
    settings = request.app[DOWNLOADS]
    info = await storage.stat(key)
    headers = validators(info, settings)
    failed = evaluate_preconditions(request.method, request.headers, info.etag, info.last_modified)
    if failed == 304:
        return web.Response(status=304, headers=headers)
    if failed == 412:
        raise ApiError(412, "precondition_failed", "a precondition of the request does not hold")

    decision: RangeResult = WholeBody()
    range_header = request.headers.get("Range")
    # Range only means something for GET (RFC 9110 §14.2); If-Range can veto it.
    if (
        request.method == "GET"
        and range_header is not None
        and if_range_allows_partial(request.headers.get("If-Range"), info.etag, info.last_modified)
    ):
        decision = parse_range(range_header, info.size, max_ranges=settings.max_ranges)
    if isinstance(decision, Unsatisfiable):
        raise ApiError(
            416,
            "range_not_satisfiable",
            f"no requested range overlaps the object's {info.size} bytes",
            headers={"Content-Range": decision.content_range(info.size)},
        )

    headers["Accept-Ranges"] = "bytes"
    content_type = content_type_of(info)
    response = web.StreamResponse(headers=headers)
    prelude: list[tuple[bytes, ByteRange]]
    closing = b""
    if isinstance(decision, PartialBody) and len(decision.ranges) > 1:
        boundary = make_boundary()
        prelude, closing, length = multipart_byteranges(decision.ranges, info.size, content_type, boundary)
        response.set_status(206)
        response.content_type = "multipart/byteranges"
        response.headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
    elif isinstance(decision, PartialBody):
        [only] = decision.ranges
        prelude, length = [(b"", only)], only.length
        response.set_status(206)
        response.headers["Content-Range"] = only.content_range(info.size)
        response.headers["Content-Type"] = content_type
    else:
        prelude = [(b"", ByteRange(0, info.size - 1))] if info.size else []
        length = info.size
        response.headers["Content-Type"] = content_type
    response.content_length = length
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    try:
        await BodySender(request, response, storage, info).send(prelude, closing)
        await response.write_eof()
    except ConnectionError:
        # Browsers cancel range requests they no longer need (every seek does): the
        # headers are out, so there is nothing to answer and nothing went wrong here.
        log.debug("client went away during GET %s", key)
    return response


class BodySender:
    """Writes the ranges of one object, by sendfile when the backend has files."""

    def __init__(
        self, request: web.Request, response: web.StreamResponse, storage: Storage, info: ObjectInfo
    ) -> None:
        self.request = request
        self.response = response
        self.storage = storage
        self.info = info

    async def send(self, parts: list[tuple[bytes, ByteRange]], closing: bytes) -> None:
        if isinstance(self.storage, FileBacked):
            fh = await self.storage.open_file(self.info.key, etag=self.info.etag)
            try:
                for header, byte_range in parts:
                    await self._write(header)
                    await self._sendfile(fh, byte_range)
            finally:
                await asyncio.to_thread(fh.close)
        else:
            for header, byte_range in parts:
                await self._write(header)
                await self._stream(byte_range)
        await self._write(closing)

    async def _write(self, data: bytes) -> None:
        if data:
            await self.response.write(data)

    async def _sendfile(self, fh: BinaryIO, byte_range: ByteRange) -> None:
        transport = self.request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        # asyncio's sendfile first waits for what write() queued on the transport.
        try:
            await asyncio.get_running_loop().sendfile(transport, fh, byte_range.start, byte_range.length)
        except NotImplementedError:  # e.g. TLS transports: fall back to reads
            await self._stream(byte_range)

    async def _stream(self, byte_range: ByteRange) -> None:
        chunks: AsyncIterator[bytes] = self.storage.read(
            self.info.key, byte_range.start, byte_range.end, etag=self.info.etag
        )
        # aclose() releases the S3 response at once when the client goes away.
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            async for chunk in chunks:
                await self.response.write(chunk)
