"""Every URL the server answers, and the handler behind it: the one place that
knows the routes, so that handlers never import each other."""

from __future__ import annotations

from aiohttp import web

from proxy.web import downloads, files, listing, tus
from proxy.web.admission import expect_continue

# [\s\S] rather than '.', so that keys with control characters reach validate_key
# and get a clear 400 instead of a 404.
KEY_ROUTE = r"/files/{key:[\s\S]+}"
PREFIX_ROUTE = r"/files/{prefix:[\s\S]+/}"


def add_routes(app: web.Application) -> None:
    router = app.router
    # A body is asked for (Expect: 100-continue) only once what can be checked
    # without it has been.
    put_checks = expect_continue(files.check_put)
    post_checks = expect_continue(files.check_post)
    router.add_put(KEY_ROUTE, files.put_file, expect_handler=put_checks)
    router.add_delete(KEY_ROUTE, files.delete_file)
    router.add_post("/files", files.post_files, expect_handler=post_checks)
    router.add_post("/files/", files.post_files, expect_handler=post_checks)
    router.add_post(PREFIX_ROUTE, files.post_files, expect_handler=post_checks)
    router.add_get(KEY_ROUTE, downloads.get_file)  # and HEAD
    router.add_get("/files", listing.list_files)
    _add_tus_routes(router)


def _add_tus_routes(router: web.UrlDispatcher) -> None:
    endpoint = tus.tus_endpoint
    body_checks = expect_continue(tus.check_body)
    upload = tus.BASE + "/{upload_id}"
    for path in (tus.BASE, tus.BASE + "/"):
        router.add_route("OPTIONS", path, endpoint(tus.options))
        router.add_post(path, endpoint(tus.create), expect_handler=body_checks)
    router.add_route("OPTIONS", upload, endpoint(tus.options))
    router.add_head(upload, endpoint(tus.head))
    router.add_patch(upload, endpoint(tus.patch), expect_handler=body_checks)
    router.add_delete(upload, endpoint(tus.terminate))
    router.add_post(upload, endpoint(tus.method_override), expect_handler=body_checks)
