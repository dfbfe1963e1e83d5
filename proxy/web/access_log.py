"""The access log: one line per request, naming who made it (a token's name, a
signing key's id, ``anonymous``; never a secret) and its request id.

A signed URL is a credential for as long as it lasts, so its signature is left out
of the logged request line (``/s/-/files/...``, ``?sig=-``): whoever reads the log
must not be able to replay it. The caller column says which key signed it.

aiohttp calls the access logger once a request's answer is out, so it also hands
the request to the metrics (proxy/web/metrics.py), whether or not a line is written.
With ``log.format`` json (proxy/logs.py) a line is one JSON object: ``time`` (ISO
8601, UTC), ``request_id``, ``client`` (after trusted proxies), ``method``, ``path``,
``status``, ``bytes_in`` (request body), ``bytes_out`` (answer, head included),
``duration`` (seconds) and ``identity``. It is made by hand (not by logging's
formatter, nor json.dumps of a dict) and written straight to the log's stream, past
logging's records and handlers: a line per request is worth a few microseconds.
Health probes' lines are debug, so that a probe every second does not bury the rest.
"""

from __future__ import annotations

import logging
import re
import time
from json.encoder import encode_basestring

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from proxy.logs import access_writer, json_lines
from proxy.rules.signatures import QUERY_PARAMETER, SIGNED_PATH
from proxy.web.auth import caller
from proxy.web.common_headers import request_id
from proxy.web.forwarded import client_address
from proxy.web.metrics import record
from proxy.web.settings import Resource

_SIGNED_PATH = re.compile(re.escape(SIGNED_PATH) + r"[^/?]*")
_SIGNED_QUERY = re.compile(rf"([?&]{QUERY_PARAMETER}=)[^&#]*")


_QUERY_MARK = QUERY_PARAMETER + "="


def redacted(path: str) -> str:
    """``path`` (with its query) without the signature it may carry."""
    if _QUERY_MARK not in path and not path.startswith(SIGNED_PATH):
        return path  # most paths: no regular expression run
    if path.startswith(SIGNED_PATH):
        path = _SIGNED_PATH.sub(SIGNED_PATH + "-", path, count=1)
    return _SIGNED_QUERY.sub(r"\1-", path)


class _Clock:
    """ISO 8601 UTC times, the date and second formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


_clock = _Clock()


def json_line(
    request: web.BaseRequest, status: int, received: int, sent: int, duration: float, identity: str
) -> str:
    client = client_address(request)
    return (
        f'{{"time":"{_clock.now()}","request_id":{encode_basestring(request_id(request))},'
        f'"client":{"null" if client is None else encode_basestring(client)},'
        f'"method":{encode_basestring(request.method)},"path":{encode_basestring(redacted(request.raw_path))},'
        f'"status":{status},"bytes_in":{received},"bytes_out":{sent},"duration":{duration:.6f},'
        f'"identity":{encode_basestring(identity)}}}'
    )


class AccessLogger(AbstractAccessLogger):
    """Text: ``client "METHOD path HTTP/x.y" status bytes_out seconds caller [request
    id]``; or JSON (above). The format string aiohttp passes is not used."""

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        # Made per connection: what configure() chose.
        self._json = json_lines()
        self._write = access_writer() if self._json else None

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        measured = record(request, response, time)
        level = logging.DEBUG if measured.kind is Resource.HEALTH else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        if self._json:
            status, who = response.status, caller(request)
            line = json_line(request, status, measured.received, measured.sent, time, who)
            if self._write is not None:
                self._write(line + "\n")
            else:
                self.logger.log(level, line)
            return
        version = f"{request.version.major}.{request.version.minor}"
        self.logger.log(
            level,
            '%s "%s %s HTTP/%s" %d %d %.6fs %s [%s]',
            client_address(request) or "-",
            request.method,
            redacted(request.raw_path),
            version,
            response.status,
            measured.sent,
            time,
            caller(request),
            request_id(request),
        )
