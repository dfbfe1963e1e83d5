"""What every request must pass before a handler runs, and before its client is told
to send the body it announced with ``Expect: 100-continue``.

The middleware runs the checks every request gets, access control (auth.py) last.
A route whose body may be large also names checks of its own (key, size, content
type: those its handler makes first); its ``Expect`` handler runs both before
answering 100 Continue, so a client never sends a body that will be refused. Checks
raise the errors the error module turns into JSON.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import HttpVersion10, HttpVersion11, web

from proxy.rules.origins import write_allowed
from proxy.web.auth import authorize, run_checked
from proxy.web.errors import ApiError, Handler, error_response
from proxy.web.settings import ALLOWED_ORIGINS

Check = Callable[[web.Request], None]
ExpectHandler = Callable[[web.Request], Awaitable[web.StreamResponse | None]]
_ADMITTED = web.RequestKey("admitted", bool)


def admit(request: web.Request) -> None:
    """The checks every request gets; each runs once per request."""
    if request.get(_ADMITTED):
        return
    if request.version not in (HttpVersion10, HttpVersion11):
        raise ApiError(
            505, "http_version_not_supported", "this server speaks HTTP/1.0 and HTTP/1.1", close=True
        )
    own_origin = f"{request.scheme}://{request.host}"
    if not write_allowed(
        request.method,
        request.headers.get("Origin"),
        request.headers.get("Sec-Fetch-Site"),
        own_origin=own_origin,
        allowed=request.app[ALLOWED_ORIGINS],
    ):
        raise ApiError(
            403,
            "cross_origin_refused",
            "a page of another site may not change what is stored here (see server.allowed_origins)",
        )
    request[_ADMITTED] = True


@web.middleware
async def admission_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    admit(request)
    return await run_checked(request, handler)


def expect_continue(*checks: Check) -> ExpectHandler:
    """An ``Expect`` handler that runs admit() and ``checks`` before the client may
    send its body; a failure is answered at once, and the connection is closed (the
    client may send the body anyway)."""

    async def handle(request: web.Request) -> web.StreamResponse | None:
        try:
            admit(request)
            await authorize(request)
            for check in checks:
                check(request)
            # HTTP/1.0 has no 100 Continue: there the body just comes.
            if request.version == HttpVersion11 and request.headers["Expect"].lower() != "100-continue":
                raise ApiError(417, "expectation_failed", "the only expectation known is 100-continue")
        except Exception as exc:
            response = error_response(request, exc)
            if response is None:
                raise
            response.force_close()
            return response
        if request.version == HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            # What was written is no part of the answer: aiohttp counts answers by it.
            request.writer.output_size = 0
        return None

    return handle
