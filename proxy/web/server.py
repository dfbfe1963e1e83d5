"""The HTTP server around the application: aiohttp's, with the answers it makes on
its own (a request it cannot parse: a bad request line, a head too long, too many
headers, broken chunked framing) given as the same JSON errors as every other, with
the same common headers, and logged as one line instead of a traceback each.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from aiohttp import web

from proxy.web.common_headers import common_headers, request_id
from proxy.web.errors import json_error

log = logging.getLogger(__name__)

_MESSAGES = {
    400: "the request could not be parsed as HTTP/1.1",
    413: "the request is too large",
    431: "the request's head is too large",
    500: "the server failed",
    504: "the request took too long",
}


class ProxyRunner(web.AppRunner):
    """An AppRunner whose connections answer their own errors in JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp offers no hook for the answers its protocol makes before the
        # application sees a request: the server and each connection's handler are
        # given subclasses that add no state and override one method each.
        server.__class__ = _JsonErrorServer
        return server


class _JsonErrorServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        handler = super().__call__()
        handler.__class__ = _JsonErrorHandler
        return handler


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
