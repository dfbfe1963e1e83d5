"""Access control on /uploads (proxy/web/auth.py): the issue's table for the tus
routes on both backends; uploads that belong to who created them; tuspy with a
bearer token and with signed URLs; X-HTTP-Method-Override checked as its method;
the limits a signed upload URL sets."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from tusclient.exceptions import TusCommunicationError

from proxy.config import VideoConfig
from proxy.rules.grants import Action
from proxy.web.settings import UPLOADS
from tests.conftest import Backend, MiB, S3Endpoint, backend_for
from tests.s3_interposer import S3Interposer
from tests.web.auth_support import KINDS, OCTET, TUS, answer, auth_config, b64, bearer, snapshot, token_for
from tests.web.tus_support import tuspy_upload

METADATA = f"filename {b64('movie.mp4')},filetype {b64('video/mp4')}"
COLUMNS = list(KINDS)
U, T, F = "401 unauthorized", "401 invalid_token", "403 forbidden"
E, B = "403 signature_expired", "403 bad_signature"


def row(*cells: str) -> dict[str, str]:
    return dict(zip(COLUMNS, cells, strict=True))


# The upload each row acts on was created by the token "full": a signature, even for
# its key, is another identity. Columns as in test_auth.py: none, unknown token, no
# grant, other prefix, token, signed, expired, tampered, other key, prefix outside, read
# signed. A creation's URL names no key: a signature for one key names the upload's
# key, so "other key" creates one there. DELETE needs delete, which no signature grants.
TABLE: dict[str, tuple[str, dict[str, str]]] = {
    "create": ("POST", row(U, T, F, F, "201", "201", E, B, "201", B, F)),
    "HEAD": ("HEAD", row("401", "401", "403", "403", "200", "403", "403", "403", "403", "403", "403")),
    "PATCH": ("PATCH", row(U, T, F, F, "204", F, E, B, B, B, F)),
    "DELETE": ("DELETE", row(U, T, F, F, "204", F, E, B, F, F, F)),
    "OPTIONS": ("OPTIONS", row("204", T, "204", "204", "204", "204", E, B, "204", "204", "204")),
}


async def create(client: Any, headers: dict[str, str], path: str = "/uploads/", length: int = 10) -> Any:
    sent = {**TUS, "Upload-Length": str(length), "Upload-Metadata": METADATA, **headers}
    return await client.post(path, headers=sent)


async def created(client: Any, token: str = "full", length: int = 10) -> tuple[str, str]:
    """A new upload's path and key."""
    response = await create(client, bearer(token), length=length)
    assert response.status == 201, await response.text()
    location: str = response.headers["Location"]
    return location, f"videos/{location.rsplit('/', 1)[1]}/movie.mp4"


@pytest.mark.parametrize("route", list(TABLE))
async def test_every_credential_kind(backend: Backend, proxy_client: Any, route: str) -> None:
    method, expected = TABLE[route]
    client = await proxy_client(auth_config(backend.config))
    got: dict[str, str] = {}
    for kind, make in KINDS.items():
        location, key = await created(client)
        if route in ("create", "OPTIONS"):
            credential, path = make(Action.WRITE, "videos/movie.mp4", False), "/uploads/"
        else:
            credential, path = make(Action.WRITE, key, False), location
        before = snapshot(backend.view)
        headers = dict(credential.headers)
        if route == "create":
            response = await create(client, headers, credential.path(path))
        elif route == "PATCH":
            headers.update({**OCTET, "Upload-Offset": "0"})
            response = await client.patch(credential.path(path), data=b"01234", headers=headers)
        else:
            response = await client.request(method, credential.path(path), headers={**TUS, **headers})
        got[kind] = await answer(response)
        if response.status >= 400:
            assert snapshot(backend.view) == before, f"{route} with {kind} changed what is stored"
            head = await client.head(location, headers={**TUS, **bearer("full")})
            assert head.status == 200 and head.headers["Upload-Offset"] == "0", kind
            assert response.headers["Tus-Resumable"] == "1.0.0"
    assert got == expected


async def test_tuspy_with_a_bearer_token_and_another_tokens_patch(
    backend: Backend, proxy_client: Any
) -> None:
    client = await proxy_client(auth_config(backend.config))
    base = f"http://{client.host}:{client.port}"
    data = os.urandom(3 * MiB + 7)
    url = await asyncio.to_thread(tuspy_upload, base + "/uploads/", data, MiB, None, bearer("full"))
    key = f"videos/{url.rsplit('/', 1)[1]}/movie.mp4"
    assert backend.view.get(key) == data
    assert backend.view.metadata(key)["sha256"] == hashlib.sha256(data).hexdigest()
    # Without the token tuspy is refused at once, and stores nothing.
    with pytest.raises(TusCommunicationError) as refused:
        await asyncio.to_thread(tuspy_upload, base + "/uploads/", data, MiB)
    assert refused.value.status_code == 401
    # Another token, that may write everything, cannot feed or cancel this upload.
    location, _ = await created(client, "full", length=4)
    other = {**OCTET, **bearer("writer"), "Upload-Offset": "0"}
    assert await answer(await client.patch(location, data=b"evil", headers=other)) == F
    deleter = {**TUS, "Authorization": bearer("full")["Authorization"]}
    mine, _ = await created(client, "writer", length=4)
    assert await answer(await client.delete(mine, headers=deleter)) == F
    assert (await client.head(mine, headers={**TUS, **bearer("writer")})).status == 200
    assert sorted(backend.view.keys()) == [key]


async def test_unknown_uploads(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(auth_config(backend.config))
    missing = "/uploads/" + "0" * 32
    # Without any grant that could touch an upload, the id is not even looked up.
    for headers, expected in (({}, U), (bearer("reader"), F), (bearer("writer"), "404 not_found")):
        response = await client.head(missing, headers={**TUS, **headers})
        assert response.status == int(expected[:3]) and response.headers["Tus-Resumable"] == "1.0.0"
        patch = await client.patch(missing, data=b"x", headers={**OCTET, **headers, "Upload-Offset": "0"})
        assert await answer(patch) == expected
    bad_metadata = await create(client, {**bearer("writer"), "Upload-Metadata": "filename !!"})
    assert await answer(bad_metadata) == "400 invalid_header"
    assert bad_metadata.headers["Tus-Resumable"] == "1.0.0"


async def test_method_override_is_checked_as_the_method(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(auth_config(backend.config))
    location, _ = await created(client, "writer", length=4)
    # The writer may PATCH its upload by override, but not terminate it: no delete grant.
    post = {**TUS, **bearer("writer")}
    refused = await client.post(location, headers={**post, "X-HTTP-Method-Override": "delete"})
    assert await answer(refused) == F
    patched = await client.post(
        location,
        data=b"abcd",
        headers={**post, **OCTET, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"},
    )
    assert patched.status == 204
    assert (await client.head(location, headers=post)).headers["Upload-Offset"] == "4"
    # A reader's override to HEAD is a write-side request: refused.
    reader = {**TUS, **bearer("reader"), "X-HTTP-Method-Override": "HEAD"}
    assert await answer(await client.post(location, headers=reader)) == F
    # An unknown override still needs write, then the handler refuses it.
    unknown = await client.post(
        location, headers={**TUS, **bearer("reader"), "X-HTTP-Method-Override": "PUT"}
    )
    assert await answer(unknown) == F


@pytest.mark.parametrize("in_query", [False, True], ids=["path", "query"])
@pytest.mark.parametrize("prefix", [False, True], ids=["key", "prefix"])
async def test_a_signed_write_url_creates_and_finishes_a_tus_upload(
    backend: Backend, proxy_client: Any, in_query: bool, prefix: bool
) -> None:
    client = await proxy_client(auth_config(backend.config))
    token = token_for(Action.WRITE, "videos/" if prefix else "videos/signed.mp4", prefix=prefix)
    base = f"http://{client.host}:{client.port}"
    endpoint = f"{base}/uploads/?sig={token}" if in_query else f"{base}/s/{token}/uploads/"
    data = os.urandom(2 * MiB + 3)
    url = await asyncio.to_thread(tuspy_upload, endpoint, data, MiB)
    # The upload's URL carries the signature, and the upload belongs to it alone.
    assert token in url
    key = f"videos/{url.split('/uploads/')[1][:32]}/movie.mp4" if prefix else "videos/signed.mp4"
    assert backend.view.keys() == [key] and backend.view.get(key) == data
    state = await client.app[UPLOADS].get(url.split("/uploads/")[1][:32])
    assert state.owner is not None and state.owner.startswith("signature:")
    # Another URL signed for the same key or prefix is another identity.
    other = token_for(
        Action.WRITE, "videos/" if prefix else "videos/signed.mp4", prefix=prefix, expires_in=900
    )
    assert other != token
    path = url[len(base) :].replace(token, other)
    assert (await client.head(path, headers=TUS)).status == 403


async def test_signed_upload_limits(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(auth_config(backend.config))
    limited = token_for(Action.WRITE, "videos/", prefix=True, max_size=100, content_type="video/mp4")
    signed = f"/s/{limited}"
    mp4 = {"Content-Type": "video/mp4"}
    assert (await client.put(f"{signed}/files/videos/a.mp4", data=b"x" * 100, headers=mp4)).status == 201
    too_big = await client.put(f"{signed}/files/videos/b.mp4", data=b"x" * 101, headers=mp4)
    assert await answer(too_big) == "413 too_large"

    async def chunked() -> Any:
        yield b"x"

    unannounced = await client.put(f"{signed}/files/videos/c.mp4", data=chunked(), headers=mp4)
    assert await answer(unannounced) == "411 length_required"
    wrong_type = await client.put(
        f"{signed}/files/videos/d.png", data=b"x", headers={"Content-Type": "image/png"}
    )
    assert await answer(wrong_type) == F
    guessed = await client.put(f"{signed}/files/videos/e.mp4", data=b"x")  # type from the extension
    assert guessed.status == 201
    # POST parts' types are known only as the body is read: refused up front.
    form = aiohttp.FormData()
    form.add_field("file", b"x", filename="f.mp4", content_type="video/mp4")
    assert await answer(await client.post(f"{signed}/files/videos/", data=form)) == F
    # tus: Upload-Length within the limit, announced, and the filetype the one allowed.
    assert (await create(client, {}, f"{signed}/uploads/", length=100)).status == 201
    assert await answer(await create(client, {}, f"{signed}/uploads/", length=101)) == "413 too_large"
    deferred = {**TUS, "Upload-Defer-Length": "1", "Upload-Metadata": METADATA}
    assert await answer(await client.post(f"{signed}/uploads/", headers=deferred)) == "411 length_required"
    png = {"Upload-Metadata": f"filename {b64('a.png')},filetype {b64('image/png')}"}
    assert await answer(await create(client, png, f"{signed}/uploads/")) == F
    assert sorted(backend.view.keys()) == ["videos/a.mp4", "videos/e.mp4"]


async def test_uploads_without_an_owner_stay_usable(backend: Backend, proxy_client: Any) -> None:
    """An upload stored before access control was on (no owner) is open to any caller
    with the grant on its key."""
    client = await proxy_client(auth_config(backend.config))
    location, _ = await created(client, "full", length=4)
    store = client.app[UPLOADS]
    upload_id = location.rsplit("/", 1)[1]
    async with store.lock(upload_id) as state:
        await store.save(dataclasses.replace(state, owner=None))
    patch = {**OCTET, **bearer("writer"), "Upload-Offset": "0"}
    assert (await client.patch(location, data=b"abcd", headers=patch)).status == 204


@pytest.mark.real_s3
async def test_owned_uploads_on_real_s3(real_backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(auth_config(real_backend.config))
    token = token_for(Action.WRITE, "videos/", prefix=True)
    endpoint = f"http://{client.host}:{client.port}/s/{token}/uploads/"
    data = os.urandom(6 * MiB + 1)
    url = await asyncio.to_thread(tuspy_upload, endpoint, data, 5 * MiB + 3)
    key = f"videos/{url.split('/uploads/')[1][:32]}/movie.mp4"
    assert real_backend.view.get(key) == data
    location, _ = await created(client, "full", length=4)
    other = {**OCTET, **bearer("writer"), "Upload-Offset": "0"}
    assert await answer(await client.patch(location, data=b"evil", headers=other)) == F
    assert real_backend.view.keys() == [key]


async def test_each_patch_after_the_first_reads_the_state_once(
    tmp_path: Any, proxy_client: Any, moto_endpoint: S3Endpoint, moto_bucket: str
) -> None:
    """The check needs an upload's owner and key, which never change: once read, they
    are remembered, so that a PATCH, HEAD or DELETE on S3 reads the upload's state only
    under its lock, as with access control off."""
    layer = S3Interposer(moto_endpoint.url)
    interposer = TestServer(layer.app(), host="127.0.0.1")
    await interposer.start_server()
    through = dataclasses.replace(moto_endpoint, url=str(interposer.make_url("")).rstrip("/"))
    s3 = backend_for("s3", tmp_path, through, moto_bucket)
    # No video jobs: their job loop's and upload hooks' calls are not what is counted here.
    s3 = dataclasses.replace(s3, config=dataclasses.replace(s3.config, video=VideoConfig(enabled=False)))
    chunk = b"x" * 1000
    reads: dict[str, list[int]] = {}
    try:
        for name, config, headers in (
            ("off", s3.config, {}),
            ("on", auth_config(s3.config), bearer("full")),
        ):
            client = await proxy_client(config)
            response = await create(client, headers, length=3 * len(chunk))
            assert response.status == 201, await response.text()
            location = response.headers["Location"]
            reads[name] = []
            for i in range(3):
                layer.seen.clear()
                sent = {**OCTET, **headers, "Upload-Offset": str(i * len(chunk))}
                assert (await client.patch(location, data=chunk, headers=sent)).status == 204
                reads[name].append(layer.operations().count("GET object"))
            layer.seen.clear()
            assert (await client.head(location, headers={**TUS, **headers})).status == 200
            reads[name].append(layer.operations().count("GET object"))
    finally:
        await interposer.close()
    # With access control on, the first PATCH reads the state for the check too.
    assert reads["on"] == [reads["off"][0] + 1, *reads["off"][1:]], reads
