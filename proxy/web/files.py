"""Uploads and deletes under /files: PUT a raw body, POST multipart/form-data, DELETE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import unquote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import MultipartReader

from proxy.rules.content_types import content_type_for
from proxy.rules.keys import sanitize_filename, validate_key, validate_prefix
from proxy.streaming.bodies import BodyTooLarge, limited
from proxy.web.errors import ApiError, to_api_error
from proxy.web.requests import body_wait, object_key, request_chunks, within_upload_limit
from proxy.web.settings import MAX_UPLOAD, STORAGE, VIDEOS

READ_CHUNK = 256 * 1024
# Parsing a part costs far more than its bytes: thousands of tiny fields must not
# keep a request busy for seconds.
MAX_FORM_PARTS = 1000
# What aiohttp's multipart parser raises on a malformed body.
MULTIPART_ERRORS = (ValueError, AssertionError, KeyError, HttpProcessingError)


def bad_multipart(exc: Exception) -> ApiError:
    return ApiError(400, "bad_multipart", f"malformed multipart body: {exc}".strip())


async def _part_chunks(request: web.Request, part: BodyPartReader) -> AsyncIterator[bytes]:
    while True:
        try:
            async with body_wait(request):
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


def check_put(request: web.Request) -> None:
    """What a PUT must pass before its body is read: key, announced size, content type."""
    key = object_key(request)
    _check_announced_size(request)
    content_type_for(request.headers.get("Content-Type"), key)


def check_post(request: web.Request) -> None:
    """What a POST must pass before its body is read: folder, announced size, body type."""
    validate_prefix(request.match_info.get("prefix", ""))
    _check_announced_size(request)
    if not request.content_type.startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "POST needs a multipart/form-data body")


def _check_announced_size(request: web.Request) -> None:
    limit = request.app[MAX_UPLOAD]
    if limit and request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)


async def put_file(request: web.Request) -> web.Response:
    check_put(request)
    key = object_key(request)
    info = await request.app[STORAGE].write(
        key,
        within_upload_limit(request, request_chunks(request)),
        content_type=content_type_for(request.headers.get("Content-Type"), key),
        size=request.content_length,
    )
    videos = request.app[VIDEOS]
    if videos is not None:
        await videos.after_upload(info)  # a job if it is media; never fails the upload
    return web.json_response(info.as_json(), status=201)


async def post_files(request: web.Request) -> web.Response:
    check_post(request)
    prefix = request.match_info.get("prefix", "")
    try:
        reader = await request.multipart()
    except MULTIPART_ERRORS as exc:
        raise bad_multipart(exc) from None
    storage, videos = request.app[STORAGE], request.app[VIDEOS]
    stored: list[dict[str, object]] = []
    # One limit for all the parts of the body, fields as well as files.
    limit = request.app[MAX_UPLOAD]
    used = 0
    try:
        async for number, part in _parts(request, reader):
            if number > MAX_FORM_PARTS:
                raise ApiError(400, "too_many_parts", f"a POST holds at most {MAX_FORM_PARTS} parts")
            body: AsyncIterator[bytes] = _part_chunks(request, part)
            if limit:
                body = limited(body, limit - used)
            if part.filename is None:
                used += sum([len(chunk) async for chunk in body])  # a field: read past it
                continue
            # Browsers percent-encode '"', CR and LF in filenames, aiohttp's client
            # everything: decoding escapes reads both; a lone '%' stays as it is.
            key = validate_key(prefix + sanitize_filename(unquote(part.filename)))
            info = await storage.write(
                key, body, content_type=content_type_for(part.headers.get("Content-Type"), key)
            )
            used += info.size
            stored.append(info.as_json())
            if videos is not None:
                await videos.after_upload(info)
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


async def _parts(request: web.Request, reader: MultipartReader) -> AsyncIterator[tuple[int, BodyPartReader]]:
    """The parts of the body, numbered from 1."""
    number = 0
    while True:
        try:
            async with body_wait(request):  # a part's head is body bytes too
                part = await reader.next()
        except MULTIPART_ERRORS as exc:
            raise bad_multipart(exc) from None
        if part is None:
            return
        if not isinstance(part, BodyPartReader):
            raise ApiError(400, "bad_multipart", "nested multipart bodies are not supported")
        number += 1
        yield number, part


async def delete_file(request: web.Request) -> web.Response:
    key = object_key(request)
    # ObjectNotFound is answered 404, or 204 to a caller who may not read the key (auth.py).
    await request.app[STORAGE].delete(key)
    videos = request.app[VIDEOS]
    if videos is not None:
        await videos.after_delete(key)  # its job and derived files go too
    return web.Response(status=204)
