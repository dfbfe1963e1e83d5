"""Every URL the server answers, and the handler behind it: the one place that
knows the routes, so that handlers never import each other."""

from __future__ import annotations

from aiohttp import web

from proxy.web import downloads, files, listing, tus

# [\s\S] rather than '.', so that keys with control characters reach validate_key
# and get a clear 400 instead of a 404.
KEY_ROUTE = r"/files/{key:[\s\S]+}"
PREFIX_ROUTE = r"/files/{prefix:[\s\S]+/}"


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_put(KEY_ROUTE, files.put_file)
    router.add_delete(KEY_ROUTE, files.delete_file)
    router.add_post("/files", files.post_files)
    router.add_post("/files/", files.post_files)
    router.add_post(PREFIX_ROUTE, files.post_files)
    router.add_get(KEY_ROUTE, downloads.get_file)  # and HEAD
    router.add_get("/files", listing.list_files)
    _add_tus_routes(router)


def _add_tus_routes(router: web.UrlDispatcher) -> None:
    endpoint = tus.tus_endpoint
    upload = tus.BASE + "/{upload_id}"
    for path in (tus.BASE, tus.BASE + "/"):
        router.add_route("OPTIONS", path, endpoint(tus.options))
        router.add_post(path, endpoint(tus.create))
    router.add_route("OPTIONS", upload, endpoint(tus.options))
    router.add_head(upload, endpoint(tus.head))
    router.add_patch(upload, endpoint(tus.patch))
    router.add_delete(upload, endpoint(tus.terminate))
    router.add_post(upload, endpoint(tus.method_override))
