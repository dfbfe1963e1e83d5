"""Signed URLs through the server: any changed byte of the URL is refused, spellings
of one key are one key, relative URLs keep a path signature (HLS), the query form,
read signatures on HEAD with ranges, key rotation and clock skew."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import unquote, urljoin

import pytest
from yarl import URL

from proxy.config import SigningKeyConfig
from proxy.rules.grants import Action
from proxy.rules.signatures import SignedGrant, sign, signed_url
from tests.conftest import Backend
from tests.web.auth_support import SIGNING_SECRET, answer, auth_config, bearer, token_for

KEY = "vidéos/a b+c.mp4"
DATA = b"0123456789" * 10


async def served(config_backend: Backend, proxy_client: Any, **auth: Any) -> Any:
    client = await proxy_client(auth_config(config_backend.config, **auth), config_backend.app_backend)
    response = await client.put(f"/files/{KEY}", data=DATA, headers=bearer("full"))
    assert response.status == 201
    return client


async def get(client: Any, raw_path: str, method: str = "GET", **headers: str) -> Any:
    """A request for ``raw_path`` exactly as written, no re-encoding."""
    return await client.request(method, URL(raw_path, encoded=True), headers=headers)


async def test_any_changed_byte_of_a_signed_url_is_refused(http_backend: Backend, proxy_client: Any) -> None:
    """Every byte of ``/s/<token>/files/<key>``, changed to each printable ASCII byte one
    bit away: the object is served only if the URL still names the same token and
    key (a percent escape's hex digit in lower case does)."""
    client = await served(http_backend, proxy_client)
    path = signed_url(
        "", SignedGrant("k1", Action.READ, KEY, int(time.time()) + 600), SIGNING_SECRET.encode()
    )
    token = path.split("/")[2]
    assert (await (await get(client, path)).read()) == DATA
    served_count = refused = 0
    for position in range(len(path)):
        for bit in range(7):
            flipped_char = chr(ord(path[position]) ^ (1 << bit))
            if not 0x21 <= ord(flipped_char) <= 0x7E:
                continue
            flipped = path[:position] + flipped_char + path[position + 1 :]
            response = await get(client, flipped)
            start = f"/s/{token}/files/"
            same = flipped.startswith(start) and unquote(flipped[len(start) :]) == KEY
            if response.status == 200 and await response.read() == DATA:
                assert same, flipped
                served_count += 1
            elif response.status == 200:
                # "/s/..." flipped into "?s/...": the web page at "/", open to anyone.
                assert response.content_type == "text/html" and not same, flipped
            else:
                assert response.status in (400, 403, 404, 405) and not same, (flipped, response.status)
                refused += 1
    assert refused > 1000 and served_count > 0  # lower-case escapes are the same key


async def test_spellings_of_one_key_are_one_key(http_backend: Backend, proxy_client: Any) -> None:
    client = await served(http_backend, proxy_client)
    token = token_for(Action.READ, KEY)
    # The server decodes the path, %2F included, before it names a key: these are all
    # spellings of the key signed, and are served as that very key.
    spellings = ("vid%C3%A9os/a%20b%2Bc.mp4", "vid%c3%a9os/a%20b+c.mp4", "vid%C3%A9os%2Fa%20b%2bc.mp4")
    for spelling in spellings:
        response = await get(client, f"/s/{token}/files/{spelling}")
        assert response.status == 200 and await response.read() == DATA, spelling
    # No spelling reaches another key: '+' is no space, %00 no end.
    for other in ("vid%C3%A9os/a+b+c.mp4", "vid%C3%A9os/a%20b%2Bc.mp4%00", "vid%C3%A9os/a%20b%2Bc.mp"):
        assert (await get(client, f"/s/{token}/files/{other}")).status in (400, 403), other


async def test_relative_urls_keep_a_path_signature(http_backend: Backend, proxy_client: Any) -> None:
    """An HLS playlist's relative segment URIs resolve under the signed prefix."""
    client = await served(http_backend, proxy_client)
    playlist = b"#EXTM3U\n#EXTINF:4,\nseg0.ts\n#EXTINF:4,\nlow/seg1.ts\n"
    for key, data in (
        ("hls/movie/index.m3u8", playlist),
        ("hls/movie/seg0.ts", b"s0"),
        ("hls/movie/low/seg1.ts", b"s1"),
    ):
        assert (await client.put(f"/files/{key}", data=data, headers=bearer("full"))).status == 201
    grant = SignedGrant("k1", Action.READ, "hls/movie/", int(time.time()) + 600, prefix=True)
    folder = signed_url(f"http://{client.host}:{client.port}", grant, SIGNING_SECRET.encode())
    index = urljoin(folder, "index.m3u8")
    response = await client.get(URL(index).path_qs)
    assert await response.read() == playlist
    for line, data in (("seg0.ts", b"s0"), ("low/seg1.ts", b"s1")):
        segment = URL(urljoin(index, line))
        assert segment.path.startswith("/s/")
        assert await (await client.get(segment.path_qs)).read() == data
    # The same prefix signature reaches nothing outside it.
    outside = URL(urljoin(index, "../other.ts"))
    assert await answer(await client.get(outside.path_qs)) == "403 bad_signature"


async def test_query_form_and_read_on_head_with_ranges(http_backend: Backend, proxy_client: Any) -> None:
    client = await served(http_backend, proxy_client)
    token = token_for(Action.READ, KEY)
    url = f"/files/{KEY}"
    head = await client.head(url, params={"sig": token})
    assert head.status == 200 and head.headers["Content-Length"] == str(len(DATA))
    ranged = await client.get(url, params={"sig": token}, headers={"Range": "bytes=10-19"})
    assert ranged.status == 206 and await ranged.read() == DATA[10:20]
    etag = ranged.headers["ETag"]
    assert (await client.get(url, params={"sig": token}, headers={"If-None-Match": etag})).status == 304
    assert await answer(await client.put(url, params={"sig": token}, data=b"x")) == "403 forbidden"
    assert await answer(await client.get(url, params={"sig": ""})) == "403 bad_signature"
    # The path form wins over a query: a bad path signature is not saved by a good query.
    assert await answer(await client.get(f"/s/x{token}{url}", params={"sig": token})) == "403 bad_signature"


async def test_key_rotation_and_clock_skew(http_backend: Backend, proxy_client: Any) -> None:
    old, new = SIGNING_SECRET.encode(), b"n" * 32
    keys = {"k1": SigningKeyConfig(secret=old.decode()), "k2": SigningKeyConfig(secret=new.decode())}
    client = await served(http_backend, proxy_client, signing_keys=keys, clock_skew=60)
    now = int(time.time())
    by_old = sign(SignedGrant("k1", Action.READ, KEY, now + 60), old)
    by_new = sign(SignedGrant("k2", Action.READ, KEY, now + 60), new)
    for token in (by_old, by_new):
        assert (await client.get(f"/files/{KEY}", params={"sig": token})).status == 200
    # Within the skew an expired URL still works; past it, it is expired.
    recent = sign(SignedGrant("k2", Action.READ, KEY, now - 30), new)
    stale = sign(SignedGrant("k2", Action.READ, KEY, now - 90), new)
    assert (await client.get(f"/files/{KEY}", params={"sig": recent})).status == 200
    assert await answer(await client.get(f"/files/{KEY}", params={"sig": stale})) == "403 signature_expired"
    # k1 retired: its URLs stop working.
    retired = await proxy_client(
        auth_config(http_backend.config, signing_keys={"k2": keys["k2"]}), http_backend.app_backend
    )
    assert await answer(await retired.get(f"/files/{KEY}", params={"sig": by_old})) == "403 bad_signature"


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
async def test_signatures_grant_nothing_beyond_their_action(
    http_backend: Backend, proxy_client: Any, method: str
) -> None:
    client = await served(http_backend, proxy_client)
    write = token_for(Action.WRITE, KEY)
    if method == "PUT":
        assert await answer(await client.get(f"/files/{KEY}", params={"sig": write})) == "403 forbidden"
    response = await client.request(
        method, f"/files/{KEY}", params={"sig": token_for(Action.READ, KEY)}, data=b"x"
    )
    assert await answer(response) == "403 forbidden"
    assert http_backend.view.get(KEY) == DATA
