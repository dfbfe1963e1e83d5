"""The access log: one line per request, naming who made it (a token's name, a
signing key's id, ``anonymous``; never a secret) and its request id.

A signed URL is a credential for as long as it lasts, so its signature is left out
of the logged request line (``/s/-/files/...``, ``?sig=-``): whoever reads the log
must not be able to replay it. The caller column says which key signed it.
"""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from proxy.rules.signatures import QUERY_PARAMETER, SIGNED_PATH
from proxy.web.auth import caller
from proxy.web.common_headers import request_id

_SIGNED_PATH = re.compile(re.escape(SIGNED_PATH) + r"[^/?]*")
_SIGNED_QUERY = re.compile(rf"([?&]{QUERY_PARAMETER}=)[^&#]*")


def redacted(path: str) -> str:
    """``path`` (with its query) without the signature it may carry."""
    if path.startswith(SIGNED_PATH):
        path = _SIGNED_PATH.sub(SIGNED_PATH + "-", path, count=1)
    return _SIGNED_QUERY.sub(r"\1-", path)


class AccessLogger(AbstractAccessLogger):
    """``remote "METHOD path HTTP/x.y" status bytes seconds caller [request id]``;
    the format string aiohttp passes is not used."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        version = f"{request.version.major}.{request.version.minor}"
        self.logger.info(
            '%s "%s %s HTTP/%s" %d %d %.6fs %s [%s]',
            request.remote or "-",
            request.method,
            redacted(request.raw_path),
            version,
            response.status,
            response.body_length,
            time,
            caller(request),
            request_id(request),
        )
