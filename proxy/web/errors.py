"""Every error leaves the proxy as JSON: {"error": "...", "message": "...", "request_id": "..."}.

A client is told what it did wrong, or, when the server or the storage failed, only
that it did: the details (an endpoint, a bucket, an internal key, a traceback) go to
the log, under the request's id, never into the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxy.rules.content_types import InvalidContentType
from proxy.rules.keys import InvalidKey
from proxy.rules.tus import TusHeaderError
from proxy.storage.base import KeyConflict, ObjectNotFound, ObjectTooLarge, UpstreamError
from proxy.storage.resumable import ChecksumMismatch, UploadLocked, UploadNotFound
from proxy.streaming.bodies import BodyTooLarge
from proxy.web import descriptors
from proxy.web.common_headers import request_id

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        close: bool = False,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        # The connection cannot go on after this answer (its framing is not to be trusted).
        self.close = close
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or {}
        self.extra = extra
        # What the log says of a server-side failure; the client sees only ``message``.
        self.detail = message


def json_error(
    status: int, error: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    body = {"error": error, "message": message, **extra}
    return web.json_response(body, status=status, headers=headers)


# Exceptions the storage layer, body helpers and protocol rules raise on purpose, and
# their answers: status, error, and the message with the exception's text as {}.
_MAPPED: list[tuple[type[Exception], int, str, str]] = [
    (InvalidKey, 400, "invalid_key", "{}"),
    (InvalidContentType, 400, "invalid_content_type", "{}"),
    (TusHeaderError, 400, "invalid_header", "{}"),
    (ObjectNotFound, 404, "not_found", "no object at {}"),
    (UploadNotFound, 404, "not_found", "no upload {}"),
    (KeyConflict, 409, "key_conflict", "{}"),
    (BodyTooLarge, 413, "too_large", "{}"),
    (ObjectTooLarge, 413, "too_large", "{}"),
    (UploadLocked, 423, "locked", "{}"),
    # tus's status for a chunk that does not match its Upload-Checksum.
    (ChecksumMismatch, 460, "checksum_mismatch", "{}"),
    (UpstreamError, 502, "upstream_error", "the storage service failed"),
    # The client went away mid-body: nobody reads the answer, but it is no server error.
    (ConnectionResetError, 400, "client_disconnected", "{}"),
]


def to_api_error(exc: Exception) -> ApiError | None:
    if isinstance(exc, ApiError):
        return exc
    if descriptors.out_of_descriptors(exc):
        # A condition of the whole process, logged there once per interval.
        descriptors.report("serving a request")
        return ApiError(
            503,
            "server_busy",
            "the server is too busy to take this request; try again shortly",
            headers={"Retry-After": str(descriptors.RETRY_AFTER)},
        )
    for cls, status, error, message in _MAPPED:
        if isinstance(exc, cls):
            api = ApiError(status, error, message.format(exc))
            api.detail = str(exc)
            return api
    return None


def error_response(request: web.BaseRequest, exc: Exception) -> web.Response | None:
    """The JSON answer to ``exc``, or None if it is no error a client can be told of
    (the caller re-raises it, and the middleware answers 500)."""
    rid = request_id(request)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return None
        response = json_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason, request_id=rid)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    api = to_api_error(exc)
    if api is None:
        return None
    if api.status >= 500 and api.status not in (503, 505):
        log.warning("%s %s [%s]: %s", request.method, request.path, rid, api.detail)
    response = json_error(
        api.status, api.error, api.message, headers=api.headers, request_id=rid, **api.extra
    )
    if api.close:
        response.force_close()
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        response = error_response(request, exc)
        if response is None:
            raise
        return response
    except Exception as exc:
        response = error_response(request, exc)
        if response is None:
            log.exception("unhandled error on %s %s [%s]", request.method, request.path, request_id(request))
            return json_error(500, "internal_error", "the server failed", request_id=request_id(request))
        return response
