"""tus concatenation at /uploads/ (Upload-Concat: partial and final), on both backends:
the flow tus-js-client's parallelUploads makes, and every refusal as JSON."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from dataclasses import replace
from typing import Any

import pytest

from proxy.storage.expiry import sweep
from proxy.web.settings import UPLOADS
from tests.conftest import Backend, MiB
from tests.web.auth_support import auth_config, bearer

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = {**TUS, "Content-Type": "application/offset+octet-stream"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def data_of(size: int, seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"x" * (size % 32)


async def partial(
    client: Any, data: bytes, send: int | None = None, headers: dict[str, str] | None = None
) -> str:
    """A partial upload of ``data`` (of it, only ``send`` bytes are sent); its path."""
    headers = headers or {}
    sent = {**TUS, "Upload-Concat": "partial", "Upload-Length": str(len(data)), **headers}
    response = await client.post("/uploads/", headers=sent)
    assert response.status == 201, await response.text()
    location: str = response.headers["Location"]
    body = data if send is None else data[:send]
    patched = await client.patch(location, data=body, headers={**OCTET, "Upload-Offset": "0", **headers})
    assert patched.status == 204, await patched.text()
    assert "Object-Location" not in patched.headers  # a partial's bytes are no object
    return location


async def final(client: Any, urls: list[str], name: str = "whole.mp4", **headers: str) -> Any:
    sent = {
        **TUS,
        "Upload-Concat": "final;" + " ".join(urls),
        "Upload-Metadata": f"filename {b64(name)},filetype {b64('video/mp4')}",
        **headers,
    }
    return await client.post("/uploads/", headers=sent)


async def refused(response: Any, status: int, error: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.headers["Tus-Resumable"] == "1.0.0"
    if response.method == "HEAD":
        return {}  # no body to say it in
    body: dict[str, Any] = await response.json()
    assert body["error"] == error and body["request_id"] and body["message"]
    return body


async def test_parallel_uploads_become_one_object(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    options = await client.options("/uploads/")
    assert "concatenation" in options.headers["Tus-Extension"].split(",")
    data = [data_of(size, n) for n, size in enumerate([6 * MiB + 1, 1000, 5 * MiB])]
    paths = [await partial(client, d) for d in data]
    head = await client.head(paths[0], headers=TUS)
    assert head.headers["Upload-Concat"] == "partial"
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(data[0]))
    assert "Object-Location" not in head.headers
    # As tus-js-client names them: absolute URLs; here out of the order they were made.
    order = [2, 0, 1]
    urls = [str(client.make_url(paths[i])) for i in order]
    response = await final(client, urls)
    assert response.status == 201, await response.text()
    whole = b"".join(data[i] for i in order)
    location = response.headers["Location"]
    key = f"{location.rsplit('/', 1)[1]}/whole.mp4"
    assert response.headers["Upload-Offset"] == str(len(whole))
    assert response.headers["Object-Location"] == f"/files/{key}"
    head = await client.head(location, headers=TUS)
    assert head.status == 200
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(whole))
    assert head.headers["Upload-Concat"] == "final;" + " ".join(paths[i] for i in order)
    assert backend.view.get(key) == whole
    meta = backend.view.metadata(key)
    assert (meta["sha256"], meta["content_type"]) == (hashlib.sha256(whole).hexdigest(), "video/mp4")
    # The partials are used up; the final takes no more bytes.
    for path in paths:
        await refused(await client.head(path, headers=TUS), 404, "not_found")
    await refused(await final(client, urls, "again.mp4"), 404, "not_found")
    more = await client.patch(location, data=b"x", headers={**OCTET, "Upload-Offset": str(len(whole))})
    await refused(more, 403, "final_upload")
    # A completed final is terminated as any completed upload is; the object stays.
    assert (await client.delete(location, headers=TUS)).status == 204
    assert backend.view.keys() == [key]
    assert await client.app[UPLOADS].upload_ids() == []


async def test_what_a_final_may_not_name(backend: Backend, proxy_client: Any) -> None:
    config = replace(backend.config, tus=replace(backend.config.tus, expiration=3600))
    client = await proxy_client(config)
    done = await partial(client, b"first")
    unfinished = await partial(client, b"0123456789", send=4)
    body = await refused(await final(client, [done, unfinished]), 400, "partial_unfinished")
    assert unfinished.rsplit("/", 1)[1] in body["message"]
    await refused(await final(client, [done, f"/uploads/{uuid.uuid4().hex}"]), 404, "not_found")
    # An upload that is no partial, and a final, are no partials.
    plain = await client.post("/uploads/", headers={**TUS, "Upload-Length": "0"})
    await refused(await final(client, [done, plain.headers["Location"]]), 400, "not_partial")
    other = await partial(client, b"second")
    made = await final(client, [other])
    assert made.status == 201
    await refused(await final(client, [done, made.headers["Location"]]), 400, "not_partial")
    terminated = await partial(client, b"third")
    assert (await client.delete(terminated, headers=TUS)).status == 204
    await refused(await final(client, [done, terminated]), 404, "not_found")
    # An expired partial is gone for a final as for a PATCH, and the sweep removes it.
    expiring = await partial(client, b"fourth")
    store = client.app[UPLOADS]
    upload_id = expiring.rsplit("/", 1)[1]
    async with store.lock(upload_id) as state:
        await store.save(replace(state, expires=time.time() - 1))
    await refused(await final(client, [done, expiring]), 410, "expired")
    assert await sweep(store) == 1
    await refused(await final(client, [done, expiring]), 404, "not_found")
    # None of the refused finals made anything; the partials named stay usable.
    objects = [plain, made]  # the empty plain upload is an object at once
    keys = sorted(r.headers["Object-Location"].removeprefix("/files/") for r in objects)
    assert backend.view.keys() == keys
    assert (await final(client, [done])).status == 201


@pytest.mark.parametrize(
    "value",
    [
        "",
        "partial; final",
        "final;",
        "final;/uploads/",
        "final;/uploads/../../etc/passwd",
        "final;/uploads/" + "A" * 32,
        "final;javascript:alert(1)",
        "final;/uploads/{0} /uploads/{0}",
        "final;/uploads/{0},/uploads/{0}",
        "final;" + "/uploads/{0} " * 3 + "\u00e9",
        "final;http://[::1/uploads/{0}",
        "final;" + "x" * 5000,
    ],
)
async def test_hostile_upload_concat_values(backend: Backend, proxy_client: Any, value: str) -> None:
    client = await proxy_client(backend.config)
    value = value.replace("{0}", uuid.uuid4().hex)
    response = await client.post("/uploads/", headers={**TUS, "Upload-Concat": value, "Upload-Length": "1"})
    await refused(response, 400, "invalid_header")
    assert backend.view.keys() == []


async def test_a_final_has_no_length_or_body(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    done = await partial(client, b"abc")
    await refused(await final(client, [done], **{"Upload-Length": "3"}), 400, "invalid_header")
    await refused(await final(client, [done], **{"Upload-Defer-Length": "1"}), 400, "invalid_header")
    with_body = await client.post(
        "/uploads/",
        data=b"abc",
        headers={**OCTET, "Upload-Concat": f"final;{done}"},
    )
    await refused(with_body, 400, "invalid_header")
    assert (await final(client, [done])).status == 201


async def test_a_partial_of_someone_else_is_refused(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(auth_config(backend.config))
    mine = await partial(client, b"mine", headers=bearer("full"))
    theirs = await partial(client, b"theirs", headers=bearer("writer"))
    await refused(await final(client, [mine, theirs], **bearer("full")), 403, "forbidden")
    # Not even through a final of one's own: the owner check is the PATCH's.
    await refused(await final(client, [theirs], **bearer("full")), 403, "forbidden")
    await refused(await final(client, [mine], **bearer("reader")), 403, "forbidden")
    response = await final(client, [mine], **bearer("full"))
    assert response.status == 201, await response.text()
    key = response.headers["Object-Location"].removeprefix("/files/")
    assert backend.view.get(key) == b"mine"
    # The refused ones took nothing: "theirs" is still its owner's to use.
    assert (await final(client, [theirs], **bearer("writer"))).status == 201
