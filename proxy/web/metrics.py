"""Requests measured for Prometheus (proxy/metrics/), and ``GET /metrics``.

A request is counted once its answer is out: aiohttp calls its access logger then,
and only then are the status, the bytes sent and the duration known, so the access
logger calls ``record`` whether or not it writes a line. The middleware, first of
all, notes what the request is (its route, once per route and method, with the
metrics' children made then) and counts uploads and downloads in flight.

Bytes sent: downloads go out past aiohttp (sendfile, splice), so for them the
kernel's count of what was written to the connection is read before and after
(one getsockopt each); other answers are counted by aiohttp's writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import NamedTuple

from aiohttp import web
from prometheus_client.metrics import Counter, Gauge, Histogram

from proxy.metrics import definitions as m
from proxy.metrics.exposition import CONTENT_TYPE, latest
from proxy.metrics.processes import multiprocess_directory
from proxy.streaming.budget import MemoryBudget
from proxy.web.admission import ExpectHandler
from proxy.web.errors import Handler
from proxy.web.settings import RESOURCES, STORAGE, Resource

METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "none"  # the route label of requests no route took (404, unparsable)
# How often a worker refreshes its budget gauges for the others' /metrics answers.
BUDGET_REFRESH = 1.0

_UPLOADS = {
    (Resource.OBJECT, "PUT"),
    (Resource.FILES, "POST"),
    (Resource.UPLOADS, "POST"),
    (Resource.UPLOAD, "PATCH"),
    (Resource.UPLOAD, "POST"),  # X-HTTP-Method-Override: PATCH, mostly
}
_DOWNLOADS = {(Resource.OBJECT, "GET")}


@dataclass(eq=False)
class _Route:
    """One route pattern and method: its metrics' children, made once."""

    method: str
    route: str
    kind: Resource | None
    duration: Histogram
    received: Counter
    sent: Counter
    in_flight: Gauge | None  # uploads' or downloads' gauge, or None
    download: bool  # its body may go out past aiohttp
    by_status: dict[int, Counter] = field(default_factory=dict)

    @classmethod
    def make(cls, method: str, route: str, kind: Resource | None) -> _Route:
        download = (kind, method) in _DOWNLOADS
        in_flight = m.DOWNLOADS_IN_FLIGHT if download else None
        if (kind, method) in _UPLOADS:
            in_flight = m.UPLOADS_IN_FLIGHT
        duration = m.HTTP_DURATION.labels(method, route)
        received, sent = m.HTTP_RECEIVED.labels(route), m.HTTP_SENT.labels(route)
        return cls(method, route, kind, duration, received, sent, in_flight, download)

    def requests(self, status: int) -> Counter:
        counter = self.by_status.get(status)
        if counter is None:
            counter = self.by_status[status] = m.HTTP_REQUESTS.labels(self.method, self.route, str(status))
        return counter


_ROUTES: web.AppKey[dict[tuple[web.AbstractResource, str], _Route]] = web.AppKey("metrics_routes", dict)
_UNMATCHED: dict[str, _Route] = {}  # by method; for requests refused before routing too
_ROUTE = web.RequestKey("metrics_route", _Route)
_WRITTEN_BEFORE = web.RequestKey("written_before", int)


def _route_of(app: web.Application, resource: web.AbstractResource | None, method: str) -> _Route:
    method = method if method in METHODS else "other"  # no label a client makes up
    if resource is None:
        return _unmatched(method)
    routes = app[_ROUTES]
    route = routes.get((resource, method))
    if route is None:
        kind = app.get(RESOURCES, {}).get(resource)
        route = routes[(resource, method)] = _Route.make(method, resource.canonical, kind)
    return route


def _unmatched(method: str) -> _Route:
    method = method if method in METHODS else "other"
    route = _UNMATCHED.get(method)
    if route is None:
        route = _UNMATCHED[method] = _Route.make(method, UNMATCHED, None)
    return route


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = _route_of(request.app, request.match_info.route.resource, request.method)
    request[_ROUTE] = route
    gauge = route.in_flight
    if gauge is None:
        return await handler(request)
    if route.download:
        written = _written(request.transport)
        if written is not None:
            request[_WRITTEN_BEFORE] = written
    gauge.inc()
    try:
        return await handler(request)
    finally:
        gauge.dec()


def noting_route(expect: ExpectHandler) -> ExpectHandler:
    """``expect``, a route's Expect handler, after the request's route is noted: it
    runs before any middleware, and an answer it makes (a refusal before the body)
    is counted under the route too."""

    async def handle(request: web.Request) -> web.StreamResponse | None:
        request[_ROUTE] = _route_of(request.app, request.match_info.route.resource, request.method)
        return await expect(request)

    return handle


class Measured(NamedTuple):
    received: int  # request body bytes
    sent: int  # response bytes, head included
    kind: Resource | None  # what the route is to access control (None: no route)


def record(request: web.BaseRequest, response: web.StreamResponse, duration: float) -> Measured:
    """Count ``request``, answered; return what was measured, for its log line."""
    route = request.get(_ROUTE)
    if route is None:  # refused before routing (unparsable), or no middleware
        route = _unmatched(request.method)
    received: int = getattr(request.content, "total_bytes", 0)
    sent = _bytes_sent(request, response) if route.download else response.body_length
    status = response.status
    route.requests(status).inc()
    route.duration.observe(duration)
    if received:
        route.received.inc(received)
    if sent:
        route.sent.inc(sent)
    if route.kind is Resource.UPLOADS or route.kind is Resource.UPLOAD:
        _count_tus(request, response, route.kind)
    return Measured(received, sent, route.kind)


def _count_tus(request: web.BaseRequest, response: web.StreamResponse, kind: Resource) -> None:
    method = request.method
    if method == "POST" and kind is Resource.UPLOAD:
        method = request.headers.get("X-HTTP-Method-Override", "").upper()
    status = response.status
    if kind is Resource.UPLOADS and method == "POST" and status == 201:
        m.TUS_CREATED.inc()
    elif kind is Resource.UPLOAD and method == "DELETE" and status == 204:
        m.TUS_TERMINATED.inc()
        return
    # The answer that stored the last byte names the object (a HEAD does too: not counted).
    if method in ("POST", "PATCH") and status in (201, 204) and "Object-Location" in response.headers:
        m.TUS_FINISHED.inc()


def _bytes_sent(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """Bytes written to the client for a download, head included: aiohttp's own
    count (response.body_length) misses what went out past it."""
    before: int | None = request.get(_WRITTEN_BEFORE)
    if before is not None:
        after = _written(request.transport)
        if after is not None:
            return max(0, after - before)
    return response.body_length


# struct tcp_info (linux/tcp.h): tcpi_notsent_bytes at 144, tcpi_bytes_sent and
# tcpi_bytes_retrans at 200 and 208 (Linux 4.19 and later).
_TCP_INFO_SIZE = 216
_NOTSENT = struct.Struct("=I")
_SENT_RETRANS = struct.Struct("=QQ")


def _written(transport: asyncio.BaseTransport | None) -> int | None:
    """Bytes the process has written to the connection so far: sent once (resent
    ones not again) and still queued in the kernel, plus what asyncio still holds.
    None where the kernel does not say (not TCP, an older kernel)."""
    if transport is None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _TCP_INFO_SIZE:
        return None
    sent, resent = _SENT_RETRANS.unpack_from(info, 200)
    buffered = transport.get_write_buffer_size() if isinstance(transport, asyncio.WriteTransport) else 0
    notsent: int = _NOTSENT.unpack_from(info, 144)[0]
    return int(sent - resent + notsent + buffered)


async def metrics(request: web.Request) -> web.Response:
    _refresh_budget(request.app)
    body = await asyncio.to_thread(latest)  # with several processes, it reads their files
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    response.headers["Cache-Control"] = "no-store"
    return response


def _budget(app: web.Application) -> MemoryBudget | None:
    budget = getattr(app[STORAGE], "budget", None)  # S3's: the local backend has none
    return budget if isinstance(budget, MemoryBudget) else None


def _refresh_budget(app: web.Application) -> None:
    budget = _budget(app)
    if budget is not None:
        m.BUDGET_BUFFERED.set(budget.in_use)
        m.BUDGET_CHARGED.set(budget.charged)


async def _budget_gauges(app: web.Application) -> AsyncIterator[None]:
    """The budget's limit; with several processes, its use refreshed every second
    for whichever process answers /metrics (one process reads its own at once)."""
    budget = _budget(app)
    if budget is None:
        yield
        return
    m.MEMORY_BUDGET_LIMIT.set(budget.total)
    refresher = None
    if multiprocess_directory() is not None:
        refresher = asyncio.create_task(_refresh_forever(app))
    try:
        yield
    finally:
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher


async def _refresh_forever(app: web.Application) -> None:
    while True:
        _refresh_budget(app)
        await asyncio.sleep(BUDGET_REFRESH)


def install(app: web.Application) -> None:
    """The budget gauges of ``app``'s backend. Requests are counted whether or not
    /metrics is served (server.metrics decides only the route, in routes.py)."""
    app[_ROUTES] = {}
    app.cleanup_ctx.append(_budget_gauges)
