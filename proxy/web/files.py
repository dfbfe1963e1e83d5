"""Uploads and deletes under /files: PUT a raw body, POST multipart/form-data, DELETE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import unquote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import MultipartReader

from proxy.rules.content_types import content_type_for
from proxy.rules.keys import InvalidKey, sanitize_filename, validate_key, validate_prefix
from proxy.streaming.bodies import BodyTooLarge, limited
from proxy.web.errors import ApiError, to_api_error
from proxy.web.requests import object_key, request_chunks, within_upload_limit
from proxy.web.settings import MAX_UPLOAD, STORAGE

READ_CHUNK = 256 * 1024
# What aiohttp's multipart parser raises on a malformed body.
MULTIPART_ERRORS = (ValueError, AssertionError, KeyError, HttpProcessingError)


def bad_multipart(exc: Exception) -> ApiError:
    return ApiError(400, "bad_multipart", f"malformed multipart body: {exc}".strip())


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while True:
        try:
            chunk = await part.read_chunk(READ_CHUNK)
        except MULTIPART_ERRORS as exc:
            raise bad_multipart(exc) from None
        if not chunk:
            # aiohttp also returns b"" when the body ends before the part's closing
            # boundary; only at_eof() tells a complete part from a truncated one.
            if not part.at_eof():
                raise ApiError(400, "bad_multipart", "the multipart body ends inside a part")
            return
        yield chunk


async def put_file(request: web.Request) -> web.Response:
    key = object_key(request)
    limit = request.app[MAX_UPLOAD]
    size = request.content_length
    if limit and size is not None and size > limit:
        raise BodyTooLarge(limit)
    declared = request.headers.get("Content-Type")
    info = await request.app[STORAGE].write(
        key,
        within_upload_limit(request, request_chunks(request)),
        content_type=content_type_for(declared, key),
        size=size,
    )
    return web.json_response(info.as_json(), status=201)


async def post_files(request: web.Request) -> web.Response:
    prefix = request.match_info.get("prefix", "")
    try:
        validate_prefix(prefix)
    except InvalidKey as exc:
        raise ApiError(400, "invalid_key", str(exc)) from None
    if not request.content_type.startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "POST needs a multipart/form-data body")
    try:
        reader = await request.multipart()
    except MULTIPART_ERRORS as exc:
        raise bad_multipart(exc) from None
    storage = request.app[STORAGE]
    stored: list[dict[str, object]] = []
    # One limit for the whole request body, however many files it holds.
    remaining = request.app[MAX_UPLOAD]
    try:
        async for part in _parts(reader):
            if part.filename is None:
                await part.release()
                continue
            # Browsers percent-encode '"', CR and LF in filenames, aiohttp's client
            # everything: decoding escapes reads both; a lone '%' stays as it is.
            key = validate_key(prefix + sanitize_filename(unquote(part.filename)))
            body: AsyncIterator[bytes] = _part_chunks(part)
            if remaining:
                body = limited(body, remaining)
            info = await storage.write(
                key, body, content_type=content_type_for(part.headers.get("Content-Type"), key)
            )
            if remaining:
                remaining = max(1, remaining - info.size)
            stored.append(info.as_json())
    except Exception as exc:
        # Files before the failing one are complete objects and stay: say which.
        api = to_api_error(exc)
        if api is None:
            raise
        api.extra.setdefault("stored", [f["key"] for f in stored])
        raise api from exc
    if not stored:
        raise ApiError(400, "no_files", "the multipart body has no file part")
    return web.json_response({"files": stored}, status=201)


async def _parts(reader: MultipartReader) -> AsyncIterator[BodyPartReader]:
    while True:
        try:
            part = await reader.next()
        except MULTIPART_ERRORS as exc:
            raise bad_multipart(exc) from None
        if part is None:
            return
        if not isinstance(part, BodyPartReader):
            raise ApiError(400, "bad_multipart", "nested multipart bodies are not supported")
        yield part


async def delete_file(request: web.Request) -> web.Response:
    await request.app[STORAGE].delete(object_key(request))
    return web.Response(status=204)
