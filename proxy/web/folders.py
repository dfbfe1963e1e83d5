"""DELETE /files/{prefix}/: every object under a key prefix, at once.

The prefix is a folder as POST takes one (empty, or a valid key and '/'); its
objects are those whose keys start with it, so ``a/`` never touches ``ab/x``. The
empty prefix is every object, which one mistyped URL should not remove: it needs
``?all=true`` as well. Access control asks for ``delete`` on every key under the
prefix (auth.py): a caller allowed part of it is refused the whole, rather than
told a count of some objects while others silently stay.

The answer is ``200 {"deleted": N, "prefix": "..."}``; when the storage fails
part-way, the error answer carries ``deleted`` too, as what went is gone.
"""

from __future__ import annotations

from aiohttp import web

from proxy.rules.keys import validate_prefix
from proxy.storage.base import DeleteIncomplete
from proxy.web.errors import ApiError
from proxy.web.settings import STORAGE

ALL = "all"


def folder_prefix(request: web.Request) -> str:
    """The folder a DELETE names, checked: ApiError for a bad one, or for the empty
    prefix without ``?all=true``."""
    prefix = validate_prefix(request.match_info.get("prefix", ""))
    if not prefix and request.query.get(ALL) != "true":
        raise ApiError(
            400,
            "prefix_required",
            "deleting every object needs ?all=true; name a folder (DELETE /files/<prefix>/) otherwise",
        )
    return prefix


async def delete_folder(request: web.Request) -> web.Response:
    prefix = folder_prefix(request)
    # Videos' derived files (K.video/) are under the folder too, so they go with it;
    # the job records of keys under it are removed when next looked at (GET /videos/
    # and the job runner remove a job whose source is gone), not listed here.
    try:
        deleted = await request.app[STORAGE].delete_prefix(prefix)
    except DeleteIncomplete as exc:
        # What went is gone: say how much; the log has why the rest stayed.
        api = ApiError(
            502,
            "upstream_error",
            "the storage failed before every object under the prefix was deleted",
            deleted=exc.deleted,
            prefix=prefix,
        )
        api.detail = str(exc)
        raise api from exc
    return web.json_response({"deleted": deleted, "prefix": prefix})
