"""Limits on the connections of one server: how many it serves at once, how long one
may stay silent, and how long a request head may take.

aiohttp bounds none of these (an idle connection waits an hour, a head can trickle
for as long): the server's hooks report every connection's events here.

A connection that is not in a request is either idle (no byte of a next request yet:
closed silently after ``keepalive_timeout``, counted from its accept or its last
answer) or reading a head (answered 408 ``head_timeout`` and closed once the head
has taken ``head_timeout`` from its first byte). While a request is handled neither
applies; its body and its answer have their own timeouts. Past ``max_connections`` a
new connection is answered 503 ``too_many_connections`` and closed at once, so that
its client learns it at once instead of waiting in the accept queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from aiohttp import web

from proxy.web.common_headers import SERVER
from proxy.web.settings import ConnectionSettings

log = logging.getLogger(__name__)

RETRY_AFTER = 1  # seconds: connections come and go quickly
# Seconds a refused connection may go on sending before its socket is closed: closing
# with its request unread would reset the connection, and a client that is reset
# before it read the answer never learns why.
LINGER = 2.0


@dataclass
class _Connection:
    transport: asyncio.Transport
    timer: asyncio.TimerHandle | None = None
    busy: bool = False  # a request is being handled
    in_head: bool = False  # a byte of the next request's head has arrived


class ConnectionLimits:
    """The connections of one server and the timers that bound them."""

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings
        self._open: dict[web.RequestHandler, _Connection] = {}

    def opened(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        limit = self.settings.max_connections
        if limit and len(self._open) >= limit:
            log.debug("refused a connection: %d connections are open", len(self._open))
            _refuse(handler, transport)
            return
        conn = _Connection(transport)
        self._open[handler] = conn
        self._idle(handler, conn)

    def closed(self, handler: web.RequestHandler) -> None:
        conn = self._open.pop(handler, None)
        if conn is not None and conn.timer is not None:
            conn.timer.cancel()

    def received(self, handler: web.RequestHandler) -> None:
        """Bytes arrived on the connection (before aiohttp parses them)."""
        conn = self._open.get(handler)
        if conn is None or conn.busy or conn.in_head:
            return
        # The first byte of a head: from now on the head timeout runs.
        conn.in_head = True
        self._arm(conn, self.settings.head_timeout, lambda: self._head_timed_out(handler, conn))

    def request_started(self, handler: web.RequestHandler) -> None:
        conn = self._open.get(handler)
        if conn is not None:
            conn.busy, conn.in_head = True, False
            self._arm(conn, None, None)

    def request_ended(self, handler: web.RequestHandler) -> None:
        conn = self._open.get(handler)
        if conn is not None:
            conn.busy = False
            self._idle(handler, conn)

    def _idle(self, handler: web.RequestHandler, conn: _Connection) -> None:
        self._arm(conn, self.settings.keepalive_timeout, lambda: self._idle_timed_out(handler, conn))

    def _arm(self, conn: _Connection, seconds: float | None, then: Callable[[], None] | None) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        if seconds and then is not None:
            conn.timer = asyncio.get_running_loop().call_later(seconds, then)

    def _idle_timed_out(self, handler: web.RequestHandler, conn: _Connection) -> None:
        conn.timer = None
        if not conn.busy and not conn.in_head:
            # Nothing was asked, so nothing is answered: the client sees the close.
            handler.force_close()

    def _head_timed_out(self, handler: web.RequestHandler, conn: _Connection) -> None:
        conn.timer = None
        if conn.busy:
            return
        timeout = self.settings.head_timeout
        log.info("%s: the request head took over %gs, closing", _peer(conn.transport), timeout)
        conn.transport.write(
            raw_error(408, "head_timeout", f"the request head took longer than {timeout:g} seconds")
        )
        # Closed once the answer is out; should the head have just come in whole, its
        # request finds the connection closed and is dropped like a client gone.
        handler.force_close()


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "a client"


def _refuse(handler: web.RequestHandler, transport: asyncio.Transport) -> None:
    """Answer 503 on a new connection and close it: aiohttp is told to ignore its
    bytes (before it has read any), the answer and a FIN go out, and what the client
    still sends is read and dropped until it closes its side or LINGER has passed."""
    handler.close()
    message = "the server has too many connections; try again shortly"
    transport.write(raw_error(503, "too_many_connections", message, retry_after=RETRY_AFTER))
    if transport.can_write_eof():
        transport.write_eof()
    asyncio.get_running_loop().call_later(LINGER, transport.close)


def raw_error(status: int, error: str, message: str, *, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 answer with the JSON error every answer of this server has,
    for connections that have no aiohttp request to answer through."""
    rid = uuid.uuid4().hex
    body = json.dumps({"error": error, "message": message, "request_id": rid}).encode()
    headers = [
        ("Content-Type", "application/json; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        ("Server", SERVER),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Request-ID", rid),
    ]
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (head + "\r\n").encode("latin-1") + body
