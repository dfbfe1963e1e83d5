"""DELETE /files/{prefix}/ (proxy/web/folders.py): every object under a folder, the
count in the answer, the empty prefix only with ?all=true, bad prefixes refused,
access control asking for ``delete`` on the whole folder; and on the local disk, a
huge folder that does not hold up the requests served meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from proxy.config import Config, ServerConfig, StorageConfig, TokenConfig
from proxy.rules.grants import Action
from proxy.rules.tokens import hash_secret
from tests.conftest import Backend, S3Endpoint, S3View, backend_for, s3_config
from tests.s3_interposer import S3Interposer, Seen
from tests.web.auth_support import auth_config, bearer, token_for

INSIDE = ["a/x.mp4", "a/b/y.mp4", "a/b/c/z.mp4"]
OUTSIDE = ["ab/x.mp4", "a-b/x.mp4", "a0", "b/a/x.mp4"]
OVERRIDE = {"X-HTTP-Method-Override": "DELETE"}
PART_SECRET = "secret-of-part-0123456789abcdef"


async def put_all(client: Any, keys: list[str], headers: dict[str, str] | None = None) -> None:
    for key in keys:
        response = await client.put(f"/files/{key}", data=key.encode(), headers=headers)
        assert response.status == 201, await response.text()


async def error_of(response: Any, status: int) -> str:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["message"] and body["request_id"] == response.headers["X-Request-ID"]
    return str(body["error"])


async def test_a_folder_goes_and_the_answer_counts_it(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    await put_all(client, INSIDE + OUTSIDE)
    response = await client.delete("/files/a/b/")
    assert response.status == 200
    assert await response.json() == {"deleted": 2, "prefix": "a/b/"}
    response = await client.delete("/files/a/")
    assert await response.json() == {"deleted": 1, "prefix": "a/"}
    assert backend.view.keys() == sorted(OUTSIDE)
    for key in OUTSIDE:
        assert backend.view.get(key) == key.encode()
    assert (await client.get("/files/a/x.mp4")).status == 404
    # Nothing left there: still a 200, counting none.
    response = await client.delete("/files/a/")
    assert (response.status, await response.json()) == (200, {"deleted": 0, "prefix": "a/"})
    # One object's DELETE is as it was.
    assert (await client.delete("/files/a0")).status == 204
    assert backend.view.keys() == sorted(OUTSIDE[:2] + OUTSIDE[3:])


async def test_everything_needs_all_true(http_backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(http_backend.config, http_backend.app_backend)
    await put_all(client, INSIDE + OUTSIDE)
    for path in ("/files/", "/files/?all=false", "/files/?all=1", "/files/?prefix=a/"):
        assert await error_of(await client.delete(path), 400) == "prefix_required"
    assert await error_of(await client.post("/files/", headers=OVERRIDE), 400) == "prefix_required"
    # /files (no slash) is the listing: no DELETE there.
    assert await error_of(await client.delete("/files?all=true"), 405) == "method_not_allowed"
    assert http_backend.view.keys() == sorted(INSIDE + OUTSIDE)
    response = await client.delete("/files/?all=true")
    assert (response.status, await response.json()) == (200, {"deleted": 7, "prefix": ""})
    assert http_backend.view.keys() == []


async def test_method_override(http_backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(http_backend.config, http_backend.app_backend)
    await put_all(client, INSIDE + OUTSIDE)
    response = await client.post("/files/a/", headers={"X-HTTP-Method-Override": "delete"})
    assert (response.status, await response.json()) == (200, {"deleted": 3, "prefix": "a/"})
    assert http_backend.view.keys() == sorted(OUTSIDE)


@pytest.mark.parametrize(
    "path",
    [
        "/files/a/%2e%2e/",
        "/files/%2e%2e/",
        "/files/%2e/",
        "/files/a//",
        "/files/a%2F%2F/",  # encoded slashes: empty segments all the same
        "/files/%2F/",
        "/files/a%00/",
        "/files/a%0A/",
        "/files/a%5Cb/",
        "/files/.stream-proxy/",
        "/files/.stream-proxy/meta/",
        "/files/" + "x" * 256 + "/",
        "/files/a%2F",  # no folder: one key, "a/", which is no key
    ],
)
async def test_a_bad_prefix_is_refused(http_backend: Backend, proxy_client: Any, path: str) -> None:
    client = await proxy_client(http_backend.config, http_backend.app_backend)
    await put_all(client, INSIDE + OUTSIDE)
    # A raw request: HTTP client libraries would normalise the dot segments away.
    status, body = await raw_request(client.server.host, client.server.port, "DELETE", path)
    assert status == 400, body
    assert body["error"] == "invalid_key" and body["message"] and body["request_id"]
    assert http_backend.view.keys() == sorted(INSIDE + OUTSIDE)


async def raw_request(host: str, port: int, method: str, path: str) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


async def test_a_cross_site_page_may_not(http_backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(http_backend.config, http_backend.app_backend)
    await put_all(client, INSIDE)
    response = await client.delete("/files/a/", headers={"Origin": "https://elsewhere.example"})
    assert await error_of(response, 403) == "cross_origin_refused"
    assert http_backend.view.keys() == sorted(INSIDE)


# -- access control -----------------------------------------------------------------------

# Tokens (auth_support): "narrow" may do everything under other/ only; "deleter" may
# only delete, everywhere; "reader" read and list; "writer" only write.
NARROW = ["other/x.mp4", "other/b/y.mp4", "other/b/z.mp4"]


@pytest.mark.parametrize(
    ("path", "headers", "method", "expected"),
    [
        ("/files/other/b/", {}, "DELETE", "401 unauthorized"),
        ("/files/other/b/", {"Authorization": "Bearer not-a-token-we-know"}, "DELETE", "401 invalid_token"),
        ("/files/other/b/", bearer("reader"), "DELETE", "403 forbidden"),
        ("/files/other/b/", bearer("writer"), "DELETE", "403 forbidden"),
        # A write grant is no delete grant, however the DELETE is spelt.
        ("/files/other/b/", {**bearer("writer"), **OVERRIDE}, "POST", "403 forbidden"),
        # A grant on other/ covers other/b/ but neither a/ nor the whole.
        ("/files/other/b/", bearer("narrow"), "DELETE", "200 2"),
        ("/files/other/b/", {**bearer("narrow"), **OVERRIDE}, "POST", "200 2"),
        ("/files/a/", bearer("narrow"), "DELETE", "403 forbidden"),
        ("/files/?all=true", bearer("narrow"), "DELETE", "403 forbidden"),
        # Delete alone is enough: the count tells nothing a reader would not know of
        # what was there, since it is all gone.
        ("/files/other/", bearer("deleter"), "DELETE", "200 3"),
        ("/files/?all=true", bearer("deleter"), "DELETE", "200 6"),
        ("/files/?all=true", bearer("full"), "DELETE", "200 6"),
    ],
)
async def test_the_delete_grant_on_the_whole_folder(
    http_backend: Backend, proxy_client: Any, path: str, headers: dict[str, str], method: str, expected: str
) -> None:
    client = await proxy_client(auth_config(http_backend.config), http_backend.app_backend)
    await put_all(client, NARROW + INSIDE, bearer("full"))
    response = await client.request(method, path, headers=headers)
    body = await response.json()
    got = f"{response.status} {body.get('error', body.get('deleted'))}"
    assert got == expected
    if response.status == 401:
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="stream-proxy"')
    left = http_backend.view.keys()
    if response.status == 200:
        assert len(left) == len(NARROW + INSIDE) - body["deleted"]
        assert not [k for k in left if k.startswith(body["prefix"])]
    else:
        assert left == sorted(NARROW + INSIDE)


async def test_a_grant_on_part_of_the_folder_is_refused_the_whole(
    http_backend: Backend, proxy_client: Any
) -> None:
    config = auth_config(http_backend.config)
    # A token that may delete under other/b/ only (and nothing else).
    part = TokenConfig(name="part", sha256=hash_secret(PART_SECRET), grants=("delete:other/b/",))
    assert config.auth is not None
    config = replace(config, auth=replace(config.auth, tokens=(*config.auth.tokens, part)))
    client = await proxy_client(config, http_backend.app_backend)
    await put_all(client, NARROW + INSIDE, bearer("full"))
    headers = {"Authorization": f"Bearer {PART_SECRET}"}
    for path in ("/files/other/", "/files/?all=true"):
        assert await error_of(await client.delete(path, headers=headers), 403) == "forbidden"
    assert http_backend.view.keys() == sorted(NARROW + INSIDE)
    response = await client.delete("/files/other/b/", headers=headers)
    assert (response.status, await response.json()) == (200, {"deleted": 2, "prefix": "other/b/"})
    assert http_backend.view.keys() == sorted(["other/x.mp4", *INSIDE])


async def test_no_signature_grants_a_folder_delete(http_backend: Backend, proxy_client: Any) -> None:
    """Signed URLs grant read or write: a write signature for the folder is no delete."""
    client = await proxy_client(auth_config(http_backend.config), http_backend.app_backend)
    await put_all(client, NARROW, bearer("full"))
    signed = token_for(Action.WRITE, "other/", prefix=True)
    response = await client.delete(f"/s/{signed}/files/other/")
    assert await error_of(response, 403) == "forbidden"
    assert http_backend.view.keys() == sorted(NARROW)


# -- S3 failing part-way ------------------------------------------------------------------


class RefusingInterposer(S3Interposer):
    """Answers the first ``refused`` DeleteObjects calls itself, as S3 does when it
    may delete none of the keys: 200, an Error (AccessDenied) for each key."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.refused = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and "delete" in request.query and self.refused > 0:
            self.refused -= 1
            keys = re.findall(r"<Key>(.*?)</Key>", (await request.read()).decode())
            errors = "".join(
                f"<Error><Key>{key}</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
                for key in keys
            )
            xml = f'<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{errors}</DeleteResult>'
            return web.Response(text=xml, content_type="application/xml")
        return await super().handle(request)


def _is_delete_objects(seen: Seen) -> bool:
    return seen.method == "POST" and "delete" in seen.query


@pytest.mark.parametrize("failure", ["refused keys", "failing call"])
async def test_s3_failing_part_way_says_how_many_went(
    moto_endpoint: S3Endpoint, moto_bucket: str, proxy_client: Any, failure: str
) -> None:
    """1,500 objects, two DeleteObjects calls. Keys refused in the first call's answer
    stay and the second call's go; a second call that fails (500, after botocore's
    retries) leaves its keys. Either way: 502 with the count deleted, then a retry
    deletes the rest."""
    names = [f"many/{i:05d}" for i in range(1500)]
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for key in names:
        backend.put_object(moto_bucket, key, key.encode())
    layer = RefusingInterposer(moto_endpoint.url)
    if failure == "refused keys":
        layer.refused = 1
    else:
        calls = iter(range(100))
        layer.fault = lambda seen: 500 if _is_delete_objects(seen) and next(calls) > 0 else None
    server = TestServer(layer.app(), host="127.0.0.1")
    await server.start_server()
    try:
        endpoint = replace(moto_endpoint, url=str(server.make_url("")).rstrip("/"))
        storage = StorageConfig(backend="s3", s3=s3_config(endpoint, moto_bucket))
        client = await proxy_client(Config(ServerConfig(), storage))
        response = await client.delete("/files/many/")
        text = await response.text()
        assert await error_of(response, 502) == "upstream_error"
        body = json.loads(text)
        went = 500 if failure == "refused keys" else 1000
        assert (body["deleted"], body["prefix"]) == (went, "many/")
        assert moto_bucket not in text and "127.0.0.1" not in text and "AccessDenied" not in text
        view = S3View(moto_endpoint, moto_bucket)
        left = [k for k in view.all_keys() if k.startswith("many/")]
        assert len(left) == 1500 - went
        layer.fault = None
        response = await client.delete("/files/many/")
        assert (response.status, await response.json()) == (200, {"deleted": 1500 - went, "prefix": "many/"})
        assert [k for k in view.all_keys() if k.startswith("many/")] == []
    finally:
        await server.close()


# -- a huge folder on the local disk ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.alone
async def test_a_huge_local_folder_does_not_hold_up_other_requests(tmp_path: Path, proxy_client: Any) -> None:
    """20,000 files: small GETs made while the delete runs are answered before it ends."""
    backend = backend_for("local", tmp_path, None, None)
    client = await proxy_client(backend.config)
    assert (await client.put("/files/small.txt", data=b"small")).status == 201
    big = tmp_path / "data" / "big"
    await asyncio.to_thread(_plant, big, 100, 200)
    started = time.monotonic()
    deleting = asyncio.create_task(client.delete("/files/big/"))
    # Under way: a first directory emptied and removed.
    async with asyncio.timeout(60):
        while len(await asyncio.to_thread(_names, big)) == 100:
            await asyncio.sleep(0.01)
    waits = []
    for _ in range(5):
        asked = time.monotonic()
        async with asyncio.timeout(30):
            response = await client.get("/files/small.txt")
            assert (response.status, await response.read()) == (200, b"small")
        waits.append(time.monotonic() - asked)
        assert not deleting.done(), f"the delete ended before GET {len(waits)}"
    response = await deleting
    took = time.monotonic() - started
    assert (response.status, await response.json()) == (200, {"deleted": 20_000, "prefix": "big/"})
    assert not big.exists()
    assert backend.view.keys() == ["small.txt"]
    print(f"delete of 20,000 files: {took:.2f} s; GETs meanwhile took at most {max(waits) * 1000:.0f} ms")


def _plant(top: Path, directories: int, files: int) -> None:
    for d in range(directories):
        folder = top / f"d{d:03d}"
        folder.mkdir(parents=True)
        for f in range(files):
            (folder / f"f{f:05d}.bin").write_bytes(b"x" * 16)


def _names(path: Path) -> list[str]:
    return [p.name for p in path.iterdir()] if path.exists() else []
