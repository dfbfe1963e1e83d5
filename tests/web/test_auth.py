"""Access control on /files (proxy/web/auth.py): the issue's table of routes and
credential kinds on both backends, with nothing stored or deleted where the answer
was 4xx; listings that show only what a caller may list; no 404-vs-403 oracle.

The tus routes' table is in test_auth_tus.py; signed URLs' finer points in
test_auth_signed.py.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from proxy.rules.grants import Action
from tests.conftest import Backend
from tests.web.auth_support import KINDS, answer, auth_config, bearer, snapshot, token_for

KEY = "videos/clip.mp4"
DATA = b"0123456789" * 100
COLUMNS = list(KINDS)


def row(*cells: str) -> dict[str, str]:
    assert len(cells) == len(COLUMNS)
    return dict(zip(COLUMNS, cells, strict=True))


U, T, F = "401 unauthorized", "401 invalid_token", "403 forbidden"
E, B = "403 signature_expired", "403 bad_signature"
# route: method, path, what a signature for it grants (action, key or prefix, prefix?), and
# the answers in the order of KINDS: none, unknown token, no grant, other prefix, token,
# signed, expired, tampered, other key, prefix outside, read signed.
ROUTES: dict[str, tuple[str, str, tuple[Action, str, bool], dict[str, str]]] = {
    "PUT": (
        "PUT",
        "/files/videos/new.mp4",
        (Action.WRITE, "videos/new.mp4", False),
        row(U, T, F, F, "201", "201", E, B, B, B, F),
    ),
    "POST": (
        "POST",
        "/files/videos/",
        (Action.WRITE, "videos/", True),
        row(U, T, F, F, "201", "201", E, B, B, B, F),
    ),
    "DELETE": (
        # No signature grants delete: the "signed" one is a read signature for the key.
        "DELETE",
        f"/files/{KEY}",
        (Action.READ, KEY, False),
        row(U, T, F, F, "204", F, E, B, F, F, F),
    ),
    "GET": (
        "GET",
        f"/files/{KEY}",
        (Action.READ, KEY, False),
        row(U, T, F, F, "200", "200", E, B, B, B, "200"),
    ),
    # HEAD answers have no body: the status alone is compared.
    "HEAD": (
        "HEAD",
        f"/files/{KEY}",
        (Action.READ, KEY, False),
        row("401", "401", "403", "403", "200", "200", "403", "403", "403", "403", "200"),
    ),
    "listing": (
        # Signatures grant read or write, never list.
        "GET",
        "/files?prefix=videos/",
        (Action.READ, "videos/", True),
        row(U, T, F, F, "200", F, E, B, F, F, F),
    ),
}


def body_for(method: str) -> dict[str, Any]:
    if method == "PUT":
        return {"data": DATA, "headers": {"Content-Type": "video/mp4"}}
    if method == "POST":
        form = aiohttp.FormData()
        form.add_field("file", DATA, filename="post.mp4", content_type="video/mp4")
        return {"data": form}
    return {}


async def seed(client: Any) -> None:
    response = await client.put(f"/files/{KEY}", data=DATA, headers=bearer("full"))
    assert response.status == 201


@pytest.mark.parametrize("route", list(ROUTES))
async def test_every_credential_kind(backend: Backend, proxy_client: Any, route: str) -> None:
    method, path, (action, target, prefix), expected = ROUTES[route]
    client = await proxy_client(auth_config(backend.config))
    got: dict[str, str] = {}
    for kind, make in KINDS.items():
        await seed(client)
        for key in ("videos/new.mp4", "videos/post.mp4"):
            await client.delete(f"/files/{key}", headers=bearer("full"))
        before = snapshot(backend.view)
        credential = make(action, target, prefix)
        extra = body_for(method)
        headers = {**credential.headers, **extra.pop("headers", {})}
        response = await client.request(method, credential.path(path), headers=headers, **extra)
        got[kind] = await answer(response)
        if response.status >= 400:
            assert snapshot(backend.view) == before, f"{route} with {kind} changed what is stored"
    assert got == expected


async def test_anonymous_grants(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(auth_config(backend.config))
    assert (await client.put("/files/public/a.txt", data=b"hi", headers=bearer("full"))).status == 201
    response = await client.get("/files/public/a.txt")
    assert response.status == 200 and await response.read() == b"hi"
    # read on public/ is no write, delete or list there.
    assert await answer(await client.put("/files/public/b.txt", data=b"x")) == "401 unauthorized"
    assert await answer(await client.delete("/files/public/a.txt")) == "401 unauthorized"
    assert await answer(await client.get("/files?prefix=public/")) == "401 unauthorized"
    assert backend.view.keys() == ["public/a.txt"]


async def test_no_oracle_without_read(backend: Backend, proxy_client: Any) -> None:
    """A caller without read gets the same answer for a present and a missing object."""
    client = await proxy_client(auth_config(backend.config))
    await seed(client)
    for headers in ({}, bearer("writer"), bearer("narrow"), {"Authorization": "Bearer wrong"}):
        for method in ("GET", "HEAD"):
            present = await client.request(method, f"/files/{KEY}", headers=headers)
            missing = await client.request(method, "/files/videos/missing.mp4", headers=headers)
            assert present.status == missing.status and present.status in (401, 403)
            assert await present.read() == (await missing.read()).replace(
                missing.headers["X-Request-ID"].encode(), present.headers["X-Request-ID"].encode()
            )
    signed_elsewhere = token_for(Action.READ, "other/", prefix=True)
    present = await client.get(f"/s/{signed_elsewhere}/files/{KEY}")
    missing = await client.get(f"/s/{signed_elsewhere}/files/videos/missing.mp4")
    assert await answer(present) == await answer(missing) == "403 bad_signature"
    # With read, a missing object is a 404 as always.
    assert (await client.get("/files/videos/missing.mp4", headers=bearer("reader"))).status == 404


LISTED = ["a/1", "a/2", "ab/3", "b/4", "c/5", "c/d/6", "public/7"]


async def listing(client: Any, headers: dict[str, str], **query: str) -> tuple[int, list[str]]:
    keys: list[str] = []
    cursor: str | None = None
    while True:
        params = {**query, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/files", params=params, headers=headers)
        if response.status != 200:
            return response.status, keys
        page = await response.json()
        keys += [o["key"] for o in page["objects"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return 200, keys


async def test_listing_shows_only_listable_prefixes(backend: Backend, proxy_client: Any) -> None:
    config = auth_config(backend.config, anonymous=("read:public/", "list:c/", "list:a/"))
    client = await proxy_client(config)
    for key in LISTED:
        assert (await client.put(f"/files/{key}", data=key.encode(), headers=bearer("full"))).status == 201
    # Anonymous may list a/ and c/: "ab/3" starts with "a" but not with "a/".
    expected = ["a/1", "a/2", "c/5", "c/d/6"]
    for limit in ("1", "2", "3", "1000"):
        assert await listing(client, {}, limit=limit) == (200, expected)
    assert await listing(client, {}, prefix="c/d") == (200, ["c/d/6"])
    assert await listing(client, {}, prefix="a") == (200, ["a/1", "a/2"])
    assert (await listing(client, {}, prefix="b/"))[0] == 401
    # A cursor past some prefixes: the listing goes on from it.
    response = await client.get("/files", params={"cursor": "a/2"})
    assert [o["key"] for o in (await response.json())["objects"]] == ["c/5", "c/d/6"]
    assert (await client.get("/files", params={"cursor": "a/\x00"})).status == 400
    # A token with list on everything sees everything; one with list elsewhere, nothing here.
    assert await listing(client, bearer("reader")) == (200, LISTED)
    assert await listing(client, bearer("narrow"), prefix="b/") == (403, [])
    # The narrow token's own list grant (other/) adds to the anonymous ones.
    assert await listing(client, bearer("narrow")) == (200, expected)


async def test_open_and_unconfigured_servers(backend: Backend, proxy_client: Any) -> None:
    """No [auth]: nothing checked, Authorization ignored, signatures refused (no key).
    auth.open: anyone may do anything, and a bad token is still refused."""
    plain = await proxy_client(backend.config)
    assert (
        await plain.put("/files/x", data=b"1", headers={"Authorization": "Bearer whatever"})
    ).status == 201
    assert (await plain.get("/files/x")).status == 200
    assert await answer(await plain.get(f"/s/{token_for(Action.READ, 'x')}/files/x")) == "403 bad_signature"
    opened = await proxy_client(auth_config(backend.config, open=True))
    assert (await opened.put("/files/y", data=b"2")).status == 201
    assert (await opened.delete("/files/x", headers=bearer("reader"))).status == 204
    assert (
        await answer(await opened.get("/files/y", headers={"Authorization": "Bearer no"}))
        == "401 invalid_token"
    )
    assert backend.view.keys() == ["y"]


async def test_expect_continue_is_refused_before_the_body(backend: Backend, proxy_client: Any) -> None:
    import asyncio

    client = await proxy_client(auth_config(backend.config))
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"PUT /files/videos/x.mp4 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    await writer.drain()
    async with asyncio.timeout(30):
        head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 401 ") and b'WWW-Authenticate: Bearer realm="stream-proxy"' in head
    assert backend.view.keys() == []
