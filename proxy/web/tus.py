"""Resumable uploads at /uploads/: the tus 1.0.0 protocol over a ResumableStore.

Header rules are pure functions in proxy.rules.tus; bytes, state and locking are
the store's; who may do what is auth.py's, which checks every request before it
comes here and, for a creation, picks the upload's id (and with a signed URL for
one key, its key) and owner. This module decides statuses and headers, and nothing
here keeps an upload's state between requests: any process sharing the backend can
answer.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from urllib.parse import quote

from aiohttp import web

from proxy.rules.conditions import format_http_date
from proxy.rules.content_types import content_type_for
from proxy.rules.tus import (
    CHECKSUM_ALGORITHMS,
    EXTENSIONS,
    OFFSET_CONTENT_TYPE,
    SUPPORTED_VERSIONS,
    TUS_VERSION,
    Concat,
    TusHeaderError,
    metadata_text,
    object_key_for,
    parse_checksum,
    parse_concat,
    parse_defer_length,
    parse_metadata,
    parse_uint,
    upload_location,
)
from proxy.storage.base import ObjectInfo
from proxy.storage.resumable import UPLOAD_ID, UploadBody, UploadNotFound, UploadState
from proxy.web.auth import Creation, check_partial, upload_creation, url_credential
from proxy.web.errors import ApiError, Handler, to_api_error
from proxy.web.requests import request_chunks
from proxy.web.settings import TUS, UPLOADS, VIDEOS, TusSettings

BASE = "/uploads"


def tus_endpoint(handler: Handler) -> Handler:
    """Checks Tus-Resumable and puts it on every answer, errors included."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            if request.method != "OPTIONS":
                _check_version(request)
            response = await handler(request)
        except Exception as exc:
            raise _with_tus_headers(exc) from exc
        response.headers["Tus-Resumable"] = TUS_VERSION
        return response

    return wrapped


def check_body(request: web.Request) -> None:
    """What a request that carries bytes of an upload must pass before they are sent:
    for a creation, all it asks for; for a chunk, its headers and the largest size."""
    try:
        _check_version(request)
        if "upload_id" not in request.match_info:
            # The key's length does not depend on which id the upload gets.
            _new_upload(request, "0" * 32, upload_creation(request).key)
            return
        _check_content_type(request, required=True)
        _offset(request)
        _check_chunk_size(request, request.app[TUS].max_size or None)
    except Exception as exc:
        raise _with_tus_headers(exc) from exc


def _offset(request: web.Request) -> int:
    offset = parse_uint(request.headers.get("Upload-Offset"), "Upload-Offset")
    if offset is None:
        raise TusHeaderError("PATCH needs Upload-Offset")
    return offset


def _check_version(request: web.Request) -> None:
    version = request.headers.get("Tus-Resumable")
    if version not in SUPPORTED_VERSIONS:
        raise ApiError(
            412,
            "unsupported_version",
            f"Tus-Resumable must be one of {', '.join(SUPPORTED_VERSIONS)}, got {version!r}",
            headers={"Tus-Version": ",".join(SUPPORTED_VERSIONS)},
        )


def _with_tus_headers(exc: Exception) -> Exception:
    api = to_api_error(exc)
    if api is None:
        return exc
    api.headers["Tus-Resumable"] = TUS_VERSION
    return api


def _upload_id(request: web.Request) -> str:
    upload_id = request.match_info["upload_id"]
    if not UPLOAD_ID.fullmatch(upload_id):
        raise UploadNotFound(upload_id)
    return upload_id


def _check_live(state: UploadState) -> None:
    if state.expired():
        raise ApiError(410, "expired", f"upload {state.id} has expired")


def _state_headers(state: UploadState) -> dict[str, str]:
    headers = {
        "Upload-Offset": str(state.offset),
        "Upload-Expires": format_http_date(datetime.fromtimestamp(state.expires, UTC)),
    }
    if state.done and not state.partial:  # a partial's bytes are no object
        headers["Object-Location"] = "/files/" + quote(state.key)
    return headers


def _check_size(length: int, settings: TusSettings) -> None:
    if settings.max_size and length > settings.max_size:
        raise ApiError(413, "too_large", f"the upload is larger than the limit of {settings.max_size} bytes")


async def options(request: web.Request) -> web.Response:
    settings = request.app[TUS]
    headers = {
        "Tus-Version": ",".join(SUPPORTED_VERSIONS),
        "Tus-Extension": ",".join(EXTENSIONS),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
    }
    if settings.max_size:
        headers["Tus-Max-Size"] = str(settings.max_size)
    return web.Response(status=204, headers=headers)


@dataclass(frozen=True)
class _NewUpload:
    length: int | None
    metadata: str
    key: str
    content_type: str
    concat: Concat | None


def _new_upload(request: web.Request, upload_id: str, key: str | None) -> _NewUpload:
    """What a creation asks for, checked before anything is stored or its body sent;
    the key is ``key``, or else the template's."""
    settings = request.app[TUS]
    concat = parse_concat(request.headers.get("Upload-Concat"))
    length = parse_uint(request.headers.get("Upload-Length"), "Upload-Length")
    deferred = parse_defer_length(request.headers.get("Upload-Defer-Length"))
    if concat is not None and concat.final:
        # Its length is the partials' sum, its bytes theirs.
        if length is not None or deferred or request.body_exists:
            raise TusHeaderError("a final upload has no Upload-Length, Upload-Defer-Length or body")
    elif (length is None) == (not deferred):
        raise TusHeaderError("send either Upload-Length or Upload-Defer-Length: 1")
    if length is not None:
        _check_size(length, settings)
    _check_content_type(request, required=False)
    _check_chunk_size(request, (settings.max_size or None) if length is None else length)
    raw_metadata = request.headers.get("Upload-Metadata", "").strip()
    metadata = parse_metadata(raw_metadata)
    if key is None:
        key = object_key_for(settings.key_template, upload_id, metadata_text(metadata, "filename"))
    content_type = content_type_for(metadata_text(metadata, "filetype"), key)
    return _NewUpload(length, raw_metadata, key, content_type, concat)


def _check_chunk_size(request: web.Request, room: int | None) -> None:
    """A body announced longer than ``room`` (None: no limit) is refused unread."""
    if room is not None and (request.content_length or 0) > room:
        raise ApiError(413, "too_large", f"the chunk goes past the upload's length ({room} bytes left)")


async def create(request: web.Request) -> web.Response:
    settings = request.app[TUS]
    creation = upload_creation(request)
    upload_id = creation.upload_id
    new = _new_upload(request, upload_id, creation.key)
    if new.concat is not None and new.concat.final:
        return await _create_final(request, creation, new, new.concat)
    now = time.time()
    state = await request.app[UPLOADS].create(
        UploadState(
            id=upload_id,
            key=new.key,
            content_type=new.content_type,
            length=new.length,
            metadata=new.metadata,
            created=now,
            expires=now + settings.expiration,
            owner=creation.owner,
            concat=None if new.concat is None else new.concat.header(BASE),
        )
    )
    if request.body_exists or state.complete:
        # creation-with-upload; an empty upload is complete at once.
        state = await _write(request, upload_id, offset=0)
    return _created(request, state)


def _created(request: web.Request, state: UploadState) -> web.Response:
    # A signed URL's upload is reached through that URL: its Location carries it.
    path_prefix, query = url_credential(request)
    location = path_prefix + upload_location(BASE, state.id) + query
    headers = {"Location": location, **_state_headers(state)}
    return web.Response(status=201, headers=headers)


async def _create_final(
    request: web.Request, creation: Creation, new: _NewUpload, concat: Concat
) -> web.Response:
    """tus concatenation: the partials assembled into the object, and only then the
    final upload stored, complete. Each partial is checked as a PATCH of it would be
    (its owner, write on its key) before it is locked, and must be a live, complete
    partial upload; all are held until they are gone, so no other final or PATCH
    can use them meanwhile. Once used, a partial is removed."""
    settings = request.app[TUS]
    store = request.app[UPLOADS]
    async with contextlib.AsyncExitStack() as held:
        partials: list[UploadState] = []
        for upload_id in concat.partials:
            check_partial(request, await store.get(upload_id))
            partials.append(await held.enter_async_context(store.lock(upload_id)))
        for partial in partials:
            _check_live(partial)
            if not partial.partial:
                raise ApiError(
                    400, "not_partial", f"upload {partial.id} is no partial upload (Upload-Concat: partial)"
                )
            if not partial.done:
                raise ApiError(
                    400, "partial_unfinished", f"the partial upload {partial.id} is not complete yet"
                )
        length = sum(partial.offset for partial in partials)
        _check_size(length, settings)
        now = time.time()
        final = UploadState(
            id=creation.upload_id,
            key=new.key,
            content_type=new.content_type,
            length=length,
            metadata=new.metadata,
            created=now,
            expires=now + settings.expiration,
            offset=length,
            done=True,
            owner=creation.owner,
            concat=concat.header(BASE),
        )
        published = await store.concatenate(final, partials)
    videos = request.app[VIDEOS]
    if videos is not None:
        await videos.after_upload(published)  # as a finished upload's, after the locks
    return _created(request, final)


def _check_content_type(request: web.Request, *, required: bool) -> None:
    """A body must be sent as OFFSET_CONTENT_TYPE; PATCH must say so even without one."""
    if request.content_type != OFFSET_CONTENT_TYPE and (required or request.body_exists):
        raise ApiError(415, "unsupported_media_type", f"the body needs Content-Type: {OFFSET_CONTENT_TYPE}")


async def head(request: web.Request) -> web.Response:
    state = await request.app[UPLOADS].get(_upload_id(request))
    _check_live(state)
    headers = {"Cache-Control": "no-store", **_state_headers(state)}
    if state.length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(state.length)
    if state.metadata:
        headers["Upload-Metadata"] = state.metadata
    if state.concat is not None:
        headers["Upload-Concat"] = state.concat
    return web.Response(status=200, headers=headers)


async def patch(request: web.Request) -> web.Response:
    upload_id = _upload_id(request)
    _check_content_type(request, required=True)
    state = await _write(request, upload_id, offset=_offset(request))
    return web.Response(status=204, headers=_state_headers(state))


async def _write(request: web.Request, upload_id: str, *, offset: int) -> UploadState:
    """Append the request's body at ``offset`` under the upload's lock, and publish
    the object once the last byte is in."""
    settings = request.app[TUS]
    store = request.app[UPLOADS]
    checksum = parse_checksum(request.headers.get("Upload-Checksum"))
    declared = parse_uint(request.headers.get("Upload-Length"), "Upload-Length")
    published: ObjectInfo | None = None
    async with store.lock(upload_id) as state:
        _check_live(state)
        if state.final:
            # Its bytes are the partials': tus refuses any more.
            raise ApiError(403, "final_upload", f"upload {upload_id} is a final upload: it takes no PATCH")
        if offset != state.offset:
            raise ApiError(
                409, "offset_mismatch", f"Upload-Offset is {offset} but the upload is at {state.offset}"
            )
        if declared is not None and declared != state.length:
            if state.length is not None:
                raise TusHeaderError(f"the upload's length is already {state.length}")
            if declared < state.offset:
                raise TusHeaderError(f"Upload-Length {declared} is less than the bytes received")
            _check_size(declared, settings)
            state = replace(state, length=declared)
        if state.length is not None:
            room: int | None = state.length - state.offset
        else:
            room = settings.max_size - state.offset if settings.max_size else None
        _check_chunk_size(request, room)
        state = replace(state, expires=time.time() + settings.expiration)
        if state.done:
            return state
        if request.body_exists:
            body = UploadBody(
                request_chunks(request),
                state=state,
                checksum=checksum,
                limit=room,
                expected=request.content_length,
            )
            state = await store.append(state, body)
        else:
            state = await store.save(state)
        if state.complete and state.partial:
            state = await store.seal(state)  # its bytes wait for a final
        elif state.complete:
            published = await store.finish(state)
            state = replace(state, done=True)
    videos = request.app[VIDEOS]
    if published is not None and videos is not None:
        await videos.after_upload(published)  # after the lock: a job if it is media
    return state


async def terminate(request: web.Request) -> web.Response:
    store = request.app[UPLOADS]
    async with store.lock(_upload_id(request)) as state:
        await store.terminate(state)
    return web.Response(status=204)


async def method_override(request: web.Request) -> web.StreamResponse:
    """POST with X-HTTP-Method-Override, for clients that cannot send PATCH or DELETE."""
    override = request.headers.get("X-HTTP-Method-Override", "").upper()
    handlers = {"PATCH": patch, "DELETE": terminate, "HEAD": head}
    if override not in handlers:
        raise ApiError(405, "method_not_allowed", "POST to an upload needs X-HTTP-Method-Override")
    return await handlers[override](request)
