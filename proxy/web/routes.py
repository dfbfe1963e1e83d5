"""Every URL the server answers, the handler behind it, and what it is to access
control (auth.py): the one place that knows the routes, so that handlers never
import each other.

Every route is also served under ``/s/<signature>``, so that a signed URL's relative
links (an HLS playlist's segments, a tus upload's Location) keep the signature.
"""

from __future__ import annotations

from aiohttp import web

from proxy.web import downloads, files, folders, health, listing, metrics, page, tus, videos
from proxy.web.admission import expect_continue
from proxy.web.auth import SIGNED_BASE, deletes_folder, guard
from proxy.web.metrics import noting_route
from proxy.web.settings import Resource

# [\s\S] rather than '.', so that keys with control characters reach validate_key
# and get a clear 400 instead of a 404.
KEY_ROUTE = r"/files/{key:[\s\S]+}"
PREFIX_ROUTE = r"/files/{prefix:[\s\S]+/}"


def add_routes(
    app: web.Application, *, serve_metrics: bool = True, serve_page: bool = True, serve_videos: bool = True
) -> None:
    for base in ("", SIGNED_BASE):
        _add_file_routes(app, base)
        _add_tus_routes(app, base)
        if serve_videos:
            _add_video_routes(app, base)
        if serve_page:
            _add_page_routes(app, base)
    _add_operator_routes(app, serve_metrics)


def _add_page_routes(app: web.Application, base: str) -> None:
    # The page's own files need no credentials (it asks for a token itself); what it
    # then asks for is checked as anyone's requests are.
    served_by = (("/", page.index), ("/watch", page.player), ("/static/{name:.+}", page.static_file))
    for path, handler in served_by:
        served = app.router.add_resource(base + path)
        served.add_route("GET", handler)
        served.add_route("HEAD", handler)
        guard(app, served, Resource.PAGE)


def _add_operator_routes(app: web.Application, serve_metrics: bool) -> None:
    # Not under /s/<signature>: probes and Prometheus carry no signed URLs.
    for path, handler in (("/livez", health.livez), ("/readyz", health.readyz)):
        probe = app.router.add_resource(path)
        probe.add_route("GET", handler)
        probe.add_route("HEAD", handler)  # some load balancers probe with HEAD
        guard(app, probe, Resource.HEALTH)
    if serve_metrics:
        exported = app.router.add_resource("/metrics")
        exported.add_route("GET", metrics.metrics)
        guard(app, exported, Resource.METRICS)


def _add_file_routes(app: web.Application, base: str) -> None:
    router = app.router
    # A body is asked for (Expect: 100-continue) only once what can be checked
    # without it has been.
    # (noting_route: an answer made there, before any middleware, is counted as this route's.)
    put_checks = noting_route(expect_continue(files.check_put))
    post_checks = noting_route(expect_continue(_check_folder_post))
    # Folders before objects: aiohttp tries them in this order, and a path ending in
    # '/' matches KEY_ROUTE too, where a DELETE would be one (invalid) key's.
    for path in (base + "/files", base + "/files/", base + PREFIX_ROUTE):
        folder = router.add_resource(path)
        folder.add_route("POST", _post_to_folder, expect_handler=post_checks)
        if path.endswith("/files"):
            folder.add_route("HEAD", listing.list_files)
            folder.add_route("GET", listing.list_files)
        else:
            folder.add_route("DELETE", folders.delete_folder)
        guard(app, folder, Resource.FILES)
    obj = router.add_resource(base + KEY_ROUTE)
    obj.add_route("PUT", files.put_file, expect_handler=put_checks)
    obj.add_route("DELETE", files.delete_file)
    obj.add_route("HEAD", downloads.get_file)
    obj.add_route("GET", downloads.get_file)
    guard(app, obj, Resource.OBJECT)


async def _post_to_folder(request: web.Request) -> web.StreamResponse:
    """A POST to a folder uploads, unless it stands for the folder's DELETE."""
    if deletes_folder(request):
        return await folders.delete_folder(request)
    return await files.post_files(request)


def _check_folder_post(request: web.Request) -> None:
    if deletes_folder(request):
        folders.folder_prefix(request)
    else:
        files.check_post(request)


def _add_tus_routes(app: web.Application, base: str) -> None:
    router = app.router
    endpoint = tus.tus_endpoint
    body_checks = noting_route(expect_continue(tus.check_body))
    for path in (base + tus.BASE, base + tus.BASE + "/"):
        uploads = router.add_resource(path)
        uploads.add_route("OPTIONS", endpoint(tus.options))
        uploads.add_route("POST", endpoint(tus.create), expect_handler=body_checks)
        guard(app, uploads, Resource.UPLOADS)
    upload = router.add_resource(base + tus.BASE + "/{upload_id}")
    upload.add_route("OPTIONS", endpoint(tus.options))
    upload.add_route("HEAD", endpoint(tus.head))
    upload.add_route("PATCH", endpoint(tus.patch), expect_handler=body_checks)
    upload.add_route("DELETE", endpoint(tus.terminate))
    upload.add_route("POST", endpoint(tus.method_override), expect_handler=body_checks)
    guard(app, upload, Resource.UPLOAD)


def _add_video_routes(app: web.Application, base: str) -> None:
    # With video off there are none: /videos/ is then 404 JSON as any unknown path, and
    # the page plays the original.
    video = app.router.add_resource(base + videos.BASE + r"/{key:[\s\S]+}")
    video.add_route("GET", videos.get_video)
    video.add_route("POST", videos.post_video)
    video.add_route("DELETE", videos.delete_video)
    guard(app, video, Resource.VIDEO)
