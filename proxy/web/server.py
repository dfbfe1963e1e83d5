"""The HTTP server around the application: aiohttp's, with the answers it makes on
its own (a request it cannot parse: a bad request line, a head too long, too many
headers, broken chunked framing) given as the same JSON errors as every other, with
the same common headers, and logged as one line instead of a traceback each; and
with the limits on its connections (connections.py) applied.

Stopping: ``finish_requests`` lets the requests in flight end before ``cleanup()``
cancels what is left. aiohttp's own shutdown cannot: from its first step it drops
every byte a connection receives (``RequestHandler.close()`` and ``shutdown()`` make
``data_received`` return at once), so an upload in flight, its body not all in, could
only stall until cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web

from proxy.config import Config
from proxy.web.common_headers import common_headers, request_id
from proxy.web.connections import ConnectionLimits
from proxy.web.errors import json_error
from proxy.web.settings import ConnectionSettings

log = logging.getLogger(__name__)

_MESSAGES = {
    400: "the request could not be parsed as HTTP/1.1",
    413: "the request is too large",
    431: "the request's head is too large",
    500: "the server failed",
    504: "the request took too long",
}


# What aiohttp buffers of a request body before it stops reading the connection:
# twice this, plus the socket read that went past it (aiohttp's default, 256 KiB,
# lets each connection hold over 512 KiB). A read(n) of more than this raises both
# marks to n and 2n (request_chunks never does). What the client sends meanwhile
# waits in the kernel's socket buffer, not in the process.
READ_BUFSIZE = 16 * 1024
# asyncio reads a connection up to 256 KiB at a time (its transports' max_size, which
# nothing public sets), and aiohttp keeps what one read brought until the handler has
# taken it: with READ_BUFSIZE small, that read is most of what an uploading connection
# holds. Smaller reads bound it, at a cost in CPU per byte (for a local PUT, about a
# third more with this size than with 256 KiB; 64 KiB: 60% more); the rest waits in
# the kernel's socket buffer.
RECV_SIZE = 128 * 1024


class ProxyRunner(web.AppRunner):
    """An AppRunner whose connections answer their own errors in JSON and are bounded
    by ``connections`` (by default, the defaults of the configuration)."""

    def __init__(
        self, app: web.Application, *, connections: ConnectionSettings | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("read_bufsize", READ_BUFSIZE)
        super().__init__(app, **kwargs)
        self._limits = ConnectionLimits(connections or ConnectionSettings.of(Config()))
        self._in_flight = _InFlight()

    async def finish_requests(self, seconds: float) -> None:
        """Stop listening, close the idle connections, and give the requests in flight
        up to ``seconds`` to end (their connections are closed by their answers
        or by cleanup()). Then ``cleanup()`` cancels what still runs."""
        for site in list(self.sites):
            await site.stop()
        if self.server is None:
            return
        for handler in self.server.connections:
            if handler not in self._in_flight.handlers:
                handler.close()
        if self._in_flight.handlers:
            log.info("waiting up to %g s for %d requests in flight", seconds, len(self._in_flight.handlers))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._in_flight.none()

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp offers no hook for the answers its protocol makes before the
        # application sees a request, nor for a connection's events: the server and
        # each connection's handler are given subclasses that add no state and
        # override what they must; the state is the limits'.
        server.__class__ = _ProxyServer
        assert isinstance(server, _ProxyServer)
        server.limits = self._limits
        server.handler_class = _handler_class(self._limits)
        server.request_handler = _reporting(self._limits, self._in_flight, server.request_handler)
        return server


class _ProxyServer(web.Server):
    limits: ConnectionLimits
    handler_class: type[web.RequestHandler]

    def __call__(self) -> web.RequestHandler:
        handler = super().__call__()
        handler.__class__ = self.handler_class
        return handler

    def connection_made(self, handler: web.RequestHandler, transport: Any) -> None:
        super().connection_made(handler, transport)
        if isinstance(getattr(transport, "max_size", None), int):  # a plain socket's
            transport.max_size = RECV_SIZE  # this connection's, over the class's default
        self.limits.opened(handler, transport)

    def connection_lost(self, handler: web.RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self.limits.closed(handler)


RequestHandlerFunction = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class _InFlight:
    """The connections with a request in progress."""

    def __init__(self) -> None:
        self.handlers: set[web.RequestHandler] = set()
        self._emptied = asyncio.Event()

    def started(self, handler: web.RequestHandler) -> None:
        self.handlers.add(handler)
        self._emptied.clear()

    def ended(self, handler: web.RequestHandler) -> None:
        self.handlers.discard(handler)
        if not self.handlers:
            self._emptied.set()

    async def none(self) -> None:
        while self.handlers:
            await self._emptied.wait()


def _reporting(
    limits: ConnectionLimits, in_flight: _InFlight, handle: RequestHandlerFunction
) -> RequestHandlerFunction:
    """``handle``, telling ``limits`` and ``in_flight`` when each request starts and ends."""

    async def reporting(request: web.BaseRequest) -> web.StreamResponse:
        limits.request_started(request.protocol)
        in_flight.started(request.protocol)
        try:
            return await handle(request)
        finally:
            in_flight.ended(request.protocol)
            limits.request_ended(request.protocol)

    return reporting


def _handler_class(limits: ConnectionLimits) -> type[web.RequestHandler]:
    class _LimitedHandler(_JsonErrorHandler):
        __slots__ = ()

        def data_received(self, data: bytes) -> None:
            limits.received(self)
            super().data_received(data)

    return _LimitedHandler


class _JsonErrorHandler(web.RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the answer has started: no error can be sent any more")
        rid = request_id(request)
        if status >= 500:
            log.error("%s failed [%s]", request.remote, rid, exc_info=exc)
        else:
            # Malformed requests are what the open internet sends all day: one line each.
            first_line = str(exc).strip().splitlines()[:1]
            log.info("%s sent a malformed request [%s]: %s", request.remote, rid, first_line)
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        error = phrase.lower().replace(" ", "_").replace("-", "_")
        response = json_error(status, error, _MESSAGES.get(status, phrase), request_id=rid)
        response.headers.update(common_headers(request))
        response.force_close()
        return response
