"""Every error leaves the proxy as JSON: {"error": "...", "message": "..."}."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxy.rules.keys import InvalidKey
from proxy.rules.tus import TusHeaderError
from proxy.storage.base import KeyConflict, ObjectNotFound, ObjectTooLarge, UpstreamError
from proxy.storage.resumable import ChecksumMismatch, UploadLocked, UploadNotFound
from proxy.streaming.bodies import BodyTooLarge

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(
        self, status: int, error: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or {}
        self.extra = extra


def json_error(
    status: int, error: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    body = {"error": error, "message": message, **extra}
    return web.json_response(body, status=status, headers=headers)


# Exceptions the storage layer, body helpers and protocol rules raise on purpose, and
# their answers: status, error, and the message with the exception's text as {}.
_MAPPED: list[tuple[type[Exception], int, str, str]] = [
    (InvalidKey, 400, "invalid_key", "{}"),
    (TusHeaderError, 400, "invalid_header", "{}"),
    (ObjectNotFound, 404, "not_found", "no object at {}"),
    (UploadNotFound, 404, "not_found", "no upload {}"),
    (KeyConflict, 409, "key_conflict", "{}"),
    (BodyTooLarge, 413, "too_large", "{}"),
    (ObjectTooLarge, 413, "too_large", "{}"),
    (UploadLocked, 423, "locked", "{}"),
    # tus's status for a chunk that does not match its Upload-Checksum.
    (ChecksumMismatch, 460, "checksum_mismatch", "{}"),
    (UpstreamError, 502, "upstream_error", "{}"),
    # The client went away mid-body: nobody reads the answer, but it is no server error.
    (ConnectionResetError, 400, "client_disconnected", "{}"),
]


def to_api_error(exc: Exception) -> ApiError | None:
    if isinstance(exc, ApiError):
        return exc
    for cls, status, error, message in _MAPPED:
        if isinstance(exc, cls):
            return ApiError(status, error, message.format(exc))
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = json_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:
        api = to_api_error(exc)
        if api is None:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return json_error(500, "internal_error", "the server failed; see its log")
        if api.status >= 500:
            log.warning("%s %s: %s", request.method, request.path, api.message)
        return json_error(api.status, api.error, api.message, headers=api.headers, **api.extra)
