"""What every handler reads off a request: the object key, and the body as chunks
within the upload limit and the body timeout.

Every wait for body bytes is bounded by ``server.body_timeout``: a client that stops
sending mid-body would otherwise hold its connection, a temporary file or a part
buffer for as long as it likes. Only the waits are timed, never the time the server
spends storing what it got, so an upload held back by the storage (TCP backpressure)
is never blamed on its client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from proxy.rules.keys import validate_key
from proxy.streaming.bodies import limited
from proxy.web.errors import ApiError
from proxy.web.settings import BODY_TIMEOUT, MAX_UPLOAD


def object_key(request: web.Request) -> str:
    return validate_key(request.match_info["key"])


async def request_chunks(request: web.Request) -> AsyncIterator[bytes]:
    while True:
        async with body_wait(request):
            chunk = await request.content.readany()
        if not chunk:
            return
        yield chunk


@contextlib.asynccontextmanager
async def body_wait(request: web.Request) -> AsyncIterator[None]:
    """Around one wait for bytes of the request's body: past ``server.body_timeout``
    it fails with a 408 that closes the connection (the rest of the body will not be
    read). The storage takes that like a client gone: nothing partial is published,
    and a tus PATCH keeps what it stored."""
    timeout = request.app[BODY_TIMEOUT]
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            yield
    except TimeoutError:
        if not deadline.expired():
            raise  # not ours: something inside timed out on its own
        # No more of this body will be read. aiohttp is told to read no more off the
        # connection and that the body has ended, so that it closes the connection
        # after the 408 instead of lingering 10 s for the rest of the body.
        request.protocol.close()
        request.content.feed_eof()
        raise ApiError(
            408,
            "body_timeout",
            f"no byte of the request body arrived for {timeout:g} seconds",
            close=True,
        ) from None


def within_upload_limit(request: web.Request, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``body``, failing with BodyTooLarge past ``server.max_upload_bytes`` (0: none)."""
    limit = request.app[MAX_UPLOAD]
    return limited(body, limit) if limit else body
