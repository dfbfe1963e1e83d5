"""PUT/POST/DELETE /files against both backends, checked against what is stored."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy.config import ByteSize
from tests.conftest import Backend, MiB, wait_until

PART = 6 * MiB
SIZES = [0, 1, PART - 1, PART, PART + 1, 3 * PART + 7, 50 * MiB + 3]


def payload(size: int) -> bytes:
    # Random but cheap: a random block repeated with a varying prefix per MiB.
    block = os.urandom(MiB)
    return b"".join(i.to_bytes(8, "big") + block[8:] for i in range(size // MiB + 1))[:size]


async def chunks_of(data: bytes, size: int = 100_003) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def form(files: list[tuple[str, bytes, str]], fields: dict[str, str] | None = None) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value in (fields or {}).items():
        data.add_field(name, value)
    for filename, content, ctype in files:
        data.add_field("file", content, filename=filename, content_type=ctype)
    return data


@pytest.mark.parametrize("size", SIZES)
async def test_put_round_trip(backend: Backend, proxy_client: Any, size: int) -> None:
    client = await proxy_client(backend.config)
    data = payload(size)
    response = await client.put(f"/files/videos/clip-{size}.mp4", data=data)
    body = await response.json()
    assert response.status == 201, body
    digest = hashlib.sha256(data).hexdigest()
    assert body["key"] == f"videos/clip-{size}.mp4"
    assert body["size"] == size
    assert body["sha256"] == digest
    assert body["content_type"] == "video/mp4"
    assert body["etag"].startswith('"') and body["etag"].endswith('"')
    assert hashlib.sha256(backend.view.get(body["key"])).hexdigest() == digest
    meta = backend.view.metadata(body["key"])
    assert meta["sha256"] == digest
    assert meta["content_type"] == "video/mp4"
    assert backend.view.leftovers() == []


@pytest.mark.parametrize("size", SIZES)
async def test_post_round_trip(backend: Backend, proxy_client: Any, size: int) -> None:
    client = await proxy_client(backend.config)
    data = payload(size)
    response = await client.post(
        "/files/uploads/", data=form([(f"movie {size}.webm", data, "video/webm")], {"title": "ignored"})
    )
    body = await response.json()
    assert response.status == 201, body
    [stored] = body["files"]
    digest = hashlib.sha256(data).hexdigest()
    assert stored["key"] == f"uploads/movie {size}.webm"
    assert (stored["size"], stored["sha256"], stored["content_type"]) == (size, digest, "video/webm")
    assert hashlib.sha256(backend.view.get(stored["key"])).hexdigest() == digest
    assert backend.view.metadata(stored["key"])["sha256"] == digest
    assert backend.view.keys() == [stored["key"]]
    assert backend.view.leftovers() == []


async def test_put_chunked_body(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    data = payload(2 * PART + 5)
    response = await client.put("/files/stream.bin", data=chunks_of(data))
    body = await response.json()
    assert response.status == 201, body
    assert body["size"] == len(data)
    assert backend.view.get("stream.bin") == data


async def test_post_several_files_in_one_body(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    files = [("a.mp4", payload(PART + 1), "video/mp4"), ("b.txt", b"hello", "text/plain"), ("c", b"", "")]
    response = await client.post("/files", data=form(files))
    body = await response.json()
    assert response.status == 201, body
    assert [f["key"] for f in body["files"]] == ["a.mp4", "b.txt", "c"]
    for (name, content, _), stored in zip(files, body["files"], strict=True):
        assert backend.view.get(name) == content
        assert stored["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["files"][2]["content_type"] == "application/octet-stream"


async def test_post_keeps_only_the_basename(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    response = await client.post(
        "/files/in/", data=form([("C:\\Users\\me\\..\\clip.mp4", b"x", "video/mp4")])
    )
    body = await response.json()
    assert response.status == 201, body
    assert body["files"][0]["key"] == "in/clip.mp4"
    assert backend.view.keys() == ["in/clip.mp4"]


async def test_overwrite_replaces_whole_object(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    first, second = payload(PART + 10), payload(100)
    assert (await client.put("/files/k", data=first)).status == 201
    assert (await client.put("/files/k", data=second)).status == 201
    assert backend.view.get("k") == second
    assert backend.view.metadata("k")["sha256"] == hashlib.sha256(second).hexdigest()


async def test_concurrent_uploads(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    bodies = {f"many/{i}.bin": payload(i * 1_500_000 + 1) for i in range(12)}

    async def put(key: str, data: bytes) -> dict[str, Any]:
        response = await client.put(f"/files/{key}", data=chunks_of(data, 65_536))
        assert response.status == 201
        result: dict[str, Any] = await response.json()
        return result

    results = await asyncio.gather(*(put(k, v) for k, v in bodies.items()))
    for result in results:
        assert result["sha256"] == hashlib.sha256(bodies[result["key"]]).hexdigest()
        assert backend.view.get(result["key"]) == bodies[result["key"]]
    assert backend.view.keys() == sorted(bodies)
    assert backend.view.leftovers() == []


async def test_delete(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    assert (await client.put("/files/dir/x.bin", data=b"abc")).status == 201
    response = await client.delete("/files/dir/x.bin")
    assert response.status == 204
    assert backend.view.keys() == []
    response = await client.delete("/files/dir/x.bin")
    assert response.status == 404
    assert (await response.json())["error"] == "not_found"


# -- bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/files/a//b",
        "/files/a/./b",
        "/files/a/%2e%2e/b",
        "/files/%2e%2e/%2e%2e/etc/passwd",
        "/files/a%5Cb",
        "/files/a%00b",
        "/files/a%0Ab",
        "/files/" + "x" * 1025,
        "/files/a/",
    ],
)
async def test_put_bad_key(http_backend: Backend, proxy_client: Any, path: str) -> None:
    client = await proxy_client(http_backend.config, http_backend.app_backend)
    # A raw request: HTTP client libraries would normalise the dot segments away.
    status, body = await raw_request(client.server.host, client.server.port, "PUT", path, b"data")
    assert status == 400, body
    assert body["error"] == "invalid_key" and body["message"]
    assert http_backend.view.keys() == []


async def raw_request(host: str, port: int, method: str, path: str, body: bytes) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    response = await reader.read()
    writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


async def test_post_not_multipart(http_backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(http_backend.config, http_backend.app_backend)
    response = await client.post("/files", data=b"{}", headers={"Content-Type": "application/json"})
    assert response.status == 415
    assert (await response.json())["error"] == "unsupported_media_type"


@pytest.mark.parametrize(
    "body",
    [
        b"no boundary at all",
        b"--XYZ\r\nContent-Disposition: form-data; name=file; filename=a.bin\r\n\r\nhalf a part",
        b"--XYZ\r\nbroken header line without colon\r\n\r\nx\r\n--XYZ--\r\n",
    ],
    ids=["garbage", "unterminated", "bad-part-header"],
)
async def test_post_malformed_multipart(http_backend: Backend, proxy_client: Any, body: bytes) -> None:
    client = await proxy_client(http_backend.config, http_backend.app_backend)
    response = await client.post(
        "/files/", data=body, headers={"Content-Type": "multipart/form-data; boundary=XYZ"}
    )
    result = await response.json()
    assert response.status == 400, result
    assert result["error"] in ("bad_multipart", "no_files")
    assert http_backend.view.keys() == []
    assert http_backend.view.leftovers() == []


async def test_post_without_file_parts(http_backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(http_backend.config, http_backend.app_backend)
    response = await client.post("/files", data=form([], {"a": "b"}))
    assert response.status == 400
    assert (await response.json())["error"] == "no_files"


async def test_post_bad_filename(http_backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(http_backend.config, http_backend.app_backend)
    response = await client.post("/files", data=form([("..", b"x", "text/plain")]))
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_key"
    assert http_backend.view.keys() == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_put_over_max_upload_bytes(backend: Backend, proxy_client: Any, chunked: bool) -> None:
    from dataclasses import replace

    config = replace(
        backend.config, server=replace(backend.config.server, max_upload_bytes=ByteSize(PART + 100))
    )
    client = await proxy_client(config)
    data = payload(2 * PART)
    response = await client.put("/files/big.bin", data=chunks_of(data) if chunked else data)
    body = await response.json()
    assert response.status == 413, body
    assert body["error"] == "too_large"
    await wait_until(lambda: backend.view.leftovers() == [])
    assert backend.view.keys() == []
    # At the limit exactly is fine.
    response = await client.put("/files/ok.bin", data=data[: PART + 100])
    assert response.status == 201


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_post_over_max_upload_bytes(backend: Backend, proxy_client: Any, chunked: bool) -> None:
    from dataclasses import replace

    config = replace(backend.config, server=replace(backend.config.server, max_upload_bytes=ByteSize(PART)))
    client = await proxy_client(config)
    response = await client.post(
        "/files", data=form([("a", payload(PART // 2), ""), ("b", payload(PART), "")]), chunked=chunked
    )
    body = await response.json()
    assert response.status == 413, body
    if chunked:
        # Found out part-way: the files before the one that went over stay.
        assert body["stored"] == ["a"]
    else:
        # An announced length over the limit is refused before any byte is read.
        assert "stored" not in body
    await wait_until(lambda: backend.view.leftovers() == [])
    assert backend.view.keys() == (["a"] if chunked else [])


async def test_unknown_route_and_method_are_json(http_backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(http_backend.config, http_backend.app_backend)
    response = await client.get("/nothing-here")
    assert response.status == 404
    assert (await response.json())["error"] == "not_found"
    response = await client.patch("/files/x")
    assert response.status == 405
    assert "PUT" in response.headers["Allow"]
    assert (await response.json())["error"] == "method_not_allowed"


# -- clients that go away --------------------------------------------------------


async def send_and_hang_up(host: str, port: int, head: bytes, body: bytes) -> None:
    _, writer = await asyncio.open_connection(host, port)
    writer.write(head + body)
    await writer.drain()
    await asyncio.sleep(0.3)  # let the server start storing what it got
    writer.transport.abort()


def put_head(key: str, length: int) -> bytes:
    return (
        f"PUT /files/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: video/mp4\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def post_head(boundary: str, length: int, filename: str) -> tuple[bytes, bytes]:
    part_head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    head = (
        f"POST /files HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    return head, part_head


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_client_disconnect_mid_upload(backend: Backend, proxy_client: Any, method: str) -> None:
    client = await proxy_client(backend.config)
    host, port = client.server.host, client.server.port
    sent = payload(3 * PART + 123)
    if method == "PUT":
        await send_and_hang_up(host, port, put_head("cut.mp4", 10 * PART), sent)
    else:
        head, part_head = post_head("b0undary", 10 * PART, "cut.mp4")
        await send_and_hang_up(host, port, head, part_head + sent)
    await wait_until(lambda: backend.view.leftovers() == [])
    assert backend.view.keys() == []
    # The server is still serving.
    response = await client.put("/files/after.bin", data=b"still here")
    assert response.status == 201
    assert backend.view.keys() == ["after.bin"]


async def test_disconnect_keeps_previous_version(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    original = payload(PART + 3)
    assert (await client.put("/files/v.mp4", data=original)).status == 201
    await send_and_hang_up(
        client.server.host, client.server.port, put_head("v.mp4", 5 * PART), payload(2 * PART)
    )
    await wait_until(lambda: backend.view.leftovers() == [])
    assert backend.view.get("v.mp4") == original
