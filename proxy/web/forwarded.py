"""The client's view of a request that came through a trusted reverse proxy (nginx):
its address, scheme and host, from ``X-Forwarded-For/Proto/Host``, and the proxy's
``X-Request-ID``; from any other peer those headers are ignored.

The middleware runs first and hands everything after it (the error, CORS and
admission middlewares, the handlers) a clone of the request made with the client's
``remote``, ``scheme`` and ``host``, so that the same-origin check compares a
page's Origin with the origin the browser used. aiohttp itself still holds the
request it made, and logs and answers with it: that one gets the request id before
the clone is made, and what handlers noted on the clone (the caller) afterwards, and
``client_address`` is what a log names as the client. The rules are
proxy.rules.forwarded's.

URLs the server hands out stay relative (tus ``Location``, ``Object-Location``): a
client resolves them against the URL it used, which is the proxy's, so they are right
behind any proxy, trusted or not, and no header of a request can point them elsewhere.
"""

from __future__ import annotations

from aiohttp import web

from proxy.rules.forwarded import ClientView, client_view
from proxy.web.common_headers import adopt_request_id, request_id
from proxy.web.errors import Handler
from proxy.web.settings import TRUSTED_PROXIES

_CLIENT = web.RequestKey("forwarded_client", ClientView)


def client_address(request: web.BaseRequest) -> str | None:
    """The client's address, after trusted proxies: what logs name."""
    view: ClientView | None = request.get(_CLIENT)
    return view.address if view is not None else request.remote


def _one(request: web.BaseRequest, name: str) -> str | None:
    """The header's value; several headers of one name are a list, which no single
    value may be (they fail the rules' checks)."""
    values = request.headers.getall(name, [])
    return ",".join(values) if values else None


@web.middleware
async def forwarded_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    trusted = request.app[TRUSTED_PROXIES]
    if not trusted:
        return await handler(request)
    view = client_view(
        request.remote,
        trusted,
        _one(request, "X-Forwarded-For"),
        _one(request, "X-Forwarded-Proto"),
        _one(request, "X-Forwarded-Host"),
    )
    if view is None:
        return await handler(request)
    given = request.headers.get("X-Request-ID")
    if given is not None:
        adopt_request_id(request, given)
    request_id(request)  # made now, so that the clone and the original share it
    request[_CLIENT] = view
    clone = request.clone(
        remote=view.address, scheme=view.scheme or request.scheme, host=view.host or request.host
    )
    try:
        return await handler(clone)
    finally:
        # aiohttp's access log and its answering of a returned response use the
        # request it made: what the handlers noted on the clone (the caller) is its too.
        request.update(clone)
