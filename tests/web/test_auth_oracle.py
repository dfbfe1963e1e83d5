"""No 404-vs-403 oracle (proxy/web/auth.py): a caller who may not read a key cannot
find out from the answers whether it exists.

- Without credentials, with a wrong token or with a forged signature, every route
  answers the same (status, error, WWW-Authenticate) for a present and a missing
  object, folder or upload, and changes nothing.
- ``delete`` without ``read``: DELETE answers 204 whether the key was there or not (as
  S3 answers every DELETE); a caller who may read gets 404 for a missing key.
- ``write`` without ``read``: PUT, POST and tus store whether the key exists or not,
  and answer alike. (PUT has no conditional form today. S3's ``If-None-Match: *``
  answers 412 where the key exists: should the proxy add it, that would tell a writer
  what exists, but only one who may overwrite the key anyway and whose probe of a
  missing key creates it, which is acceptable.)
- tus uploads are known by ids of 128 random bits: a caller with ``write`` or
  ``delete`` somewhere gets 404 for an id that does not exist and 403 for another's
  upload, which tells nothing that could be guessed.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest

from proxy.rules.grants import Action
from tests.conftest import Backend
from tests.web.auth_support import (
    OCTET,
    TUS,
    answer,
    auth_config,
    b64,
    bearer,
    snapshot,
    tampered,
    token_for,
)

KEY, MISSING = "videos/clip.mp4", "videos/missing.mp4"
DATA = b"0123456789" * 100
METADATA = f"filename {b64('movie.mp4')}"


def form() -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("file", DATA, filename="clip.mp4", content_type="video/mp4")
    return data


async def seeded(backend: Backend, proxy_client: Any) -> tuple[Any, str]:
    """A client of a server holding KEY and an upload made by ``full``; the upload's path."""
    client = await proxy_client(auth_config(backend.config))
    assert (await client.put(f"/files/{KEY}", data=DATA, headers=bearer("full"))).status == 201
    created = await client.post(
        "/uploads/", headers={**TUS, **bearer("full"), "Upload-Length": "10", "Upload-Metadata": METADATA}
    )
    assert created.status == 201
    location: str = created.headers["Location"]
    return client, location


def requests_for(upload: str) -> dict[str, tuple[str, str, str, dict[str, Any]]]:
    """Route: (method, path of something present, path of something missing, request arguments)."""
    missing_upload = f"/uploads/{uuid.uuid4().hex}"
    patch = {"headers": {**OCTET, "Upload-Offset": "0"}, "data": b"01234"}
    return {
        "GET": ("GET", f"/files/{KEY}", f"/files/{MISSING}", {}),
        "HEAD": ("HEAD", f"/files/{KEY}", f"/files/{MISSING}", {}),
        "DELETE": ("DELETE", f"/files/{KEY}", f"/files/{MISSING}", {}),
        "PUT if none": (
            "PUT",
            f"/files/{KEY}",
            f"/files/{MISSING}",
            {"data": DATA, "headers": {"If-None-Match": "*"}},
        ),
        "POST": ("POST", "/files/videos/", "/files/elsewhere/", {"data": "form"}),
        "listing": ("GET", "/files?prefix=videos/", "/files?prefix=elsewhere/", {}),
        "tus HEAD": ("HEAD", upload, missing_upload, {"headers": TUS}),
        "tus PATCH": ("PATCH", upload, missing_upload, patch),
        "tus DELETE": ("DELETE", upload, missing_upload, {"headers": TUS}),
        "tus override": (
            "POST",
            upload,
            missing_upload,
            {"headers": {**TUS, "X-HTTP-Method-Override": "DELETE"}},
        ),
    }


async def exchange(
    client: Any, method: str, path: str, credentials: dict[str, str], args: dict[str, Any]
) -> tuple[str, str | None]:
    args = dict(args)
    headers = {**args.pop("headers", {}), **credentials}
    if args.get("data") == "form":
        args["data"] = form()
    response = await client.request(method, path, headers=headers, **args)
    return await answer(response), response.headers.get("WWW-Authenticate")


CREDENTIALS = {
    "none": {},
    "wrong token": {"Authorization": "Bearer not-a-token-we-know"},
}


@pytest.mark.parametrize("credentials", [*CREDENTIALS, "forged signature"])
async def test_no_credentials_tell_nothing_of_what_exists(
    backend: Backend, proxy_client: Any, credentials: str
) -> None:
    client, upload = await seeded(backend, proxy_client)
    before = snapshot(backend.view)
    for route, (method, present, missing, args) in requests_for(upload).items():
        if credentials == "forged signature":
            sig = tampered(token_for(Action.READ, KEY))
            answers = [
                await exchange(client, method, f"/s/{sig}{path}", {}, args) for path in (present, missing)
            ]
        else:
            answers = [
                await exchange(client, method, path, CREDENTIALS[credentials], args)
                for path in (present, missing)
            ]
        assert answers[0] == answers[1], (route, answers)
        assert answers[0][0].startswith("401" if credentials != "forged signature" else "403"), (
            route,
            answers,
        )
        assert snapshot(backend.view) == before, route


async def test_delete_without_read_answers_204_present_or_not(backend: Backend, proxy_client: Any) -> None:
    client, _ = await seeded(backend, proxy_client)
    missing = await client.delete(f"/files/{MISSING}", headers=bearer("deleter"))
    present = await client.delete(f"/files/{KEY}", headers=bearer("deleter"))
    assert (missing.status, await missing.read()) == (present.status, await present.read()) == (204, b"")
    assert backend.view.keys() == []
    # Again, now that it is gone: the same.
    assert (await client.delete(f"/files/{KEY}", headers=bearer("deleter"))).status == 204
    # Who may read the key is told it is not there.
    assert await answer(await client.delete(f"/files/{MISSING}", headers=bearer("full"))) == "404 not_found"
    narrow = await client.delete("/files/other/missing", headers=bearer("narrow"))
    assert await answer(narrow) == "404 not_found"
    # Delete is still needed: a reader may not delete.
    assert await answer(await client.delete(f"/files/{MISSING}", headers=bearer("reader"))) == "403 forbidden"


async def test_a_writer_learns_nothing_from_a_put(backend: Backend, proxy_client: Any) -> None:
    """PUT has no conditional form (``If-None-Match: *`` is not looked at): it stores
    whether the key was there or not. Should one come, as on S3, it would tell a writer
    what exists; see the module's docstring."""
    client, _ = await seeded(backend, proxy_client)
    for key in (KEY, MISSING):
        put = await client.put(
            f"/files/{key}", data=b"new", headers={**bearer("writer"), "If-None-Match": "*"}
        )
        assert put.status == 201 and backend.view.get(key) == b"new"
