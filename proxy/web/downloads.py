"""GET and HEAD /files/{key}: objects with HTTP Range and conditional requests.

The protocol decisions are pure functions (rules.conditions, rules.ranges); this
module gathers what they need and decides the answer's status and headers; the body
goes out through response_body.
"""

from __future__ import annotations

from typing import BinaryIO

from aiohttp import web

from proxy.rules.conditions import evaluate_preconditions, format_http_date, if_range_allows_partial
from proxy.rules.content_types import safety_headers, served_content_type
from proxy.rules.ranges import (
    ByteRange,
    PartialBody,
    RangeResult,
    Unsatisfiable,
    WholeBody,
    make_boundary,
    multipart_byteranges,
    parse_range,
)
from proxy.storage.base import ObjectInfo, ObjectNotFound, Storage, as_file_backed
from proxy.web.errors import ApiError
from proxy.web.requests import object_key
from proxy.web.response_body import Body, send_body
from proxy.web.settings import DOWNLOADS, STORAGE, DownloadSettings


def validators(info: ObjectInfo, settings: DownloadSettings) -> dict[str, str]:
    headers = {"ETag": info.etag, "Last-Modified": format_http_date(info.last_modified)}
    if settings.cache_control:
        headers["Cache-Control"] = settings.cache_control
    return headers


# Headers whose answer depends on the object's current validators.
CONDITIONAL_HEADERS = ("If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since")


async def get_file(request: web.Request) -> web.StreamResponse:
    key = object_key(request)
    storage = request.app[STORAGE]
    files = as_file_backed(storage)
    if files is not None:
        # Opened and described in one step (one thread hop): the version whose
        # validators decide the answer is the one whose bytes are sent.
        info, file = await files.open_object(key)
        try:
            return await answer(request, storage, info, verified=True, file=file)
        finally:
            # Inline: closing a read-only file does not block, and a thread hop could
            # be cancelled before it ran (client gone, pool busy), leaking the descriptor.
            file.close()
    # A plain GET may use recently seen validators and save a round trip to S3: the
    # body is read with IfMatch on them, so a stale entry fails before anything is
    # sent, and we look again.
    quick = request.method == "GET" and not any(h in request.headers for h in CONDITIONAL_HEADERS)
    info = await storage.stat(key, recent=quick)
    try:
        return await answer(request, storage, info, verified=not quick)
    except (ObjectNotFound, Unverified):
        if not quick:
            raise
        return await answer(request, storage, await storage.stat(key), verified=True)


class Unverified(Exception):
    """An answer from recently seen validators that no read would check (a 416, an
    empty body): it must be decided again on fresh ones."""


async def answer(
    request: web.Request,
    storage: Storage,
    info: ObjectInfo,
    *,
    verified: bool,
    file: BinaryIO | None = None,
) -> web.StreamResponse:
    settings = request.app[DOWNLOADS]
    headers = validators(info, settings)
    failed = evaluate_preconditions(request.method, request.headers, info.etag, info.last_modified)
    if failed == 304:
        return web.Response(status=304, headers=headers)
    if failed == 412:
        raise ApiError(412, "precondition_failed", "a precondition of the request does not hold")

    decision: RangeResult = WholeBody()
    range_header = request.headers.get("Range")
    # Range only means something for GET (RFC 9110 §14.2), and HEAD answers with the
    # head GET would have (§9.3.2); If-Range can veto it.
    if range_header is not None and if_range_allows_partial(
        request.headers.get("If-Range"), info.etag, info.last_modified
    ):
        decision = parse_range(range_header, info.size, max_ranges=settings.max_ranges)
    if isinstance(decision, Unsatisfiable):
        if not verified:
            raise Unverified
        raise ApiError(
            416,
            "range_not_satisfiable",
            f"no requested range overlaps the object's {info.size} bytes",
            headers={"Content-Range": decision.content_range(info.size)},
        )

    headers["Accept-Ranges"] = "bytes"
    content_type = served_content_type(info.content_type, info.key)
    headers.update(safety_headers(content_type, info.key, settings.inline_prefixes))
    status = 200
    parts: list[tuple[bytes, ByteRange]]
    closing = b""
    if isinstance(decision, PartialBody) and len(decision.ranges) > 1:
        boundary = make_boundary()
        parts, closing, length = multipart_byteranges(decision.ranges, info.size, content_type, boundary)
        status = 206
        headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
    elif isinstance(decision, PartialBody):
        [only] = decision.ranges
        parts, length = [(b"", only)], only.length
        status = 206
        headers["Content-Range"] = only.content_range(info.size)
        headers["Content-Type"] = content_type
    else:
        parts = [(b"", ByteRange(0, info.size - 1))] if info.size else []
        length = info.size
        headers["Content-Type"] = content_type
    if request.method == "HEAD":
        response = _streamed(status, headers, length)
        await response.prepare(request)
        return response

    if not parts and not verified:
        raise Unverified
    body = Body(
        storage,
        info,
        parts,
        closing,
        whole=isinstance(decision, WholeBody),
        send_timeout=settings.send_timeout,
        file=file,
    )
    try:
        await body.open(request.transport)  # may still fail cleanly: nothing has been sent
        if body.held is not None:
            # Small: the head and the body go out in one write.
            return web.Response(status=status, headers=headers, body=body.held)
        response = _streamed(status, headers, length)
        await send_body(request, response, body)
    finally:
        await body.close()
    return response


def _streamed(status: int, headers: dict[str, str], length: int) -> web.StreamResponse:
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = length
    return response
