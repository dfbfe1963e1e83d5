"""``GET /livez`` and ``GET /readyz``: the probes of load balancers and orchestrators.

Live: the process answers. Ready: not draining (a SIGTERM was received: the load
balancer should stop sending) and the storage reachable, as one cheap look tells (S3:
a HeadBucket; local: the root is a writable directory). That look is made at most
once a second, whatever the number of probers, and probes that come while it runs
wait for it rather than start their own. The answer names no endpoint, bucket or
path; a change of readiness is logged once, with the reason, not at every probe.
"""

from __future__ import annotations

from aiohttp import web

from proxy.web.settings import LIFECYCLE, READINESS

_HEADERS = {"Cache-Control": "no-store"}


async def livez(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"}, headers=_HEADERS)


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    if app[LIFECYCLE].draining:
        return web.json_response({"status": "draining"}, status=503, headers=_HEADERS)
    problem = await app[READINESS].storage_problem()
    if problem is not None:
        return web.json_response({"status": problem}, status=503, headers=_HEADERS)
    return web.json_response({"status": "ok"}, headers=_HEADERS)
