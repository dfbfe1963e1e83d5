"""server.body_timeout: a body that stops arriving is aborted with 408 on both
backends, for PUT, POST and tus, and leaves what a client that went away would."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from dataclasses import replace
from typing import Any

import pytest

from proxy.config import ByteSize, Config
from tests.conftest import Backend, MiB, wait_until
from tests.web.served import Answer, assert_json_error, closed_within, read_answer, request_on, served

TIMEOUT = 1.5  # server.body_timeout in these tests
# More than one S3 part (6 MiB), so that a multipart upload is under way when it stalls.
SENT = 7 * MiB + 11


def timed(backend: Backend, seconds: float = TIMEOUT) -> Config:
    return replace(backend.config, server=replace(backend.config.server, body_timeout=seconds))


async def stall(
    port: int, head: bytes, body: bytes, *more: bytes
) -> tuple[Answer, float, asyncio.StreamReader]:
    """Send ``head`` and ``body`` (then each of ``more`` a moment apart) and then
    nothing: the answer, the seconds it took after the last byte, and the reader."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body)
    await writer.drain()
    for piece in more:
        await asyncio.sleep(0.3)
        writer.write(piece)
        await writer.drain()
    sent_at = time.monotonic()
    async with asyncio.timeout(TIMEOUT + 20):
        answer = await read_answer(reader)
    return answer, time.monotonic() - sent_at, reader


def chunked(data: bytes) -> bytes:
    return b"".join(
        b"%x\r\n%s\r\n" % (len(data[i : i + MiB]), data[i : i + MiB]) for i in range(0, len(data), MiB)
    )


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_stalled_put_is_aborted_with_408(backend: Backend, framing: str) -> None:
    await check_stalled_put(backend, framing)


@pytest.mark.real_s3
async def test_a_stalled_put_is_aborted_with_408_real_s3(real_backend: Backend) -> None:
    await check_stalled_put(real_backend, "content-length")


async def check_stalled_put(backend: Backend, framing: str) -> None:
    data = os.urandom(SENT)
    length = "Transfer-Encoding: chunked" if framing == "chunked" else f"Content-Length: {20 * MiB}"
    head = f"PUT /files/stalled.mp4 HTTP/1.1\r\nHost: x\r\n{length}\r\n\r\n".encode()
    async with served(timed(backend)) as port:  # as stream-proxy serve runs
        answer, waited, reader = await stall(port, head, chunked(data) if framing == "chunked" else data)
        assert_json_error(answer, 408, "body_timeout")
        assert waited >= TIMEOUT - 0.2
        # Closed at once: aiohttp does not linger for the rest of a body that stopped.
        assert await closed_within(reader, 3) == b""
        await wait_until(lambda: backend.view.leftovers() == [])
        assert backend.view.keys() == []
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await request_on(reader, writer, "PUT", "/files/after.bin", b"still serving")).status == 201
        writer.close()
    assert backend.view.keys() == ["after.bin"]


def form_head(boundary: str, length: int) -> bytes:
    return (
        f"POST /files/up/ HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()


def file_part(boundary: str, filename: str, data: bytes) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode() + data


@pytest.mark.parametrize("where", ["in a part", "in a part's head"])
async def test_a_stalled_post_is_aborted_with_408(backend: Backend, proxy_client: Any, where: str) -> None:
    client = await proxy_client(timed(backend))
    first = os.urandom(1000)
    # aiohttp reads past a part's end before it ends the part: the next part's head
    # comes a moment later, so that the first part is seen complete.
    more = b"\r\n" + file_part("b0und", "second.mp4", os.urandom(SENT))
    if where == "in a part's head":
        more = b'\r\n--b0und\r\nContent-Disposition: form-data; name="file"; filen'
    answer, waited, _ = await stall(
        client.port, form_head("b0und", 30 * MiB), file_part("b0und", "first.mp4", first), more
    )
    assert_json_error(answer, 408, "body_timeout")
    assert answer.json()["stored"] == ["up/first.mp4"]  # the files before it are complete and stay
    assert waited >= TIMEOUT - 0.2
    await wait_until(lambda: backend.view.leftovers() == [])
    assert backend.view.keys() == ["up/first.mp4"]
    assert backend.view.get("up/first.mp4") == first


TUS = "Tus-Resumable: 1.0.0\r\n"


async def test_a_stalled_tus_patch_keeps_what_arrived(backend: Backend, proxy_client: Any) -> None:
    await check_stalled_patch(backend, await proxy_client(timed(backend)))


@pytest.mark.real_s3
async def test_a_stalled_tus_patch_keeps_what_arrived_real_s3(
    real_backend: Backend, proxy_client: Any
) -> None:
    await check_stalled_patch(real_backend, await proxy_client(timed(real_backend)))


async def check_stalled_patch(backend: Backend, client: Any) -> None:
    data = os.urandom(10 * MiB + 5)
    created = await client.post(
        "/uploads/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(len(data))}
    )
    assert created.status == 201
    location = created.headers["Location"]
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\n{TUS}Content-Type: application/offset+octet-stream\r\n"
        f"Upload-Offset: 0\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    answer, waited, _ = await stall(client.port, head, data[:SENT])
    assert_json_error(answer, 408, "body_timeout")
    assert answer.headers["Tus-Resumable"] == "1.0.0"
    assert waited >= TIMEOUT - 0.2
    # What arrived was kept, as when the client goes away; the rest completes the upload.
    state = await client.head(location, headers={"Tus-Resumable": "1.0.0"})
    assert state.status == 200
    assert int(state.headers["Upload-Offset"]) == SENT
    rest = await client.patch(
        location,
        data=data[SENT:],
        headers={
            "Tus-Resumable": "1.0.0",
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": str(SENT),
        },
    )
    assert rest.status == 204, await rest.text()
    key = rest.headers["Object-Location"].removeprefix("/files/")
    assert hashlib.sha256(backend.view.get(key)).digest() == hashlib.sha256(data).digest()
    assert backend.view.metadata(key)["sha256"] == hashlib.sha256(data).hexdigest()


async def test_a_stalled_tus_creation_with_upload_is_408(http_backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(timed(http_backend), http_backend.app_backend)
    name = base64.b64encode(b"clip.mp4").decode()
    head = (
        f"POST /uploads/ HTTP/1.1\r\nHost: x\r\n{TUS}Upload-Length: 5000\r\n"
        f"Upload-Metadata: filename {name}\r\n"
        "Content-Type: application/offset+octet-stream\r\nContent-Length: 5000\r\n\r\n"
    ).encode()
    answer, waited, _ = await stall(client.port, head, b"x" * 1000)
    assert_json_error(answer, 408, "body_timeout")
    assert answer.headers["Tus-Resumable"] == "1.0.0"
    assert waited >= TIMEOUT - 0.2
    assert http_backend.view.keys() == []
    response = await client.put("/files/after.bin", data=b"still serving")
    assert response.status == 201


async def test_a_slow_body_that_keeps_coming_is_not_cut_off(http_backend: Backend, proxy_client: Any) -> None:
    # The stall timeout alone: 2.5 bytes a second is below any minimum rate (test_body_pace.py).
    config = timed(http_backend, 1.0)
    config = replace(config, server=replace(config.server, body_min_rate=ByteSize(0)))
    client = await proxy_client(config, http_backend.app_backend)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"PUT /files/slow.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
    for byte in b"slowbody":  # 3.2 s in all, never a second without a byte
        await asyncio.sleep(0.4)
        writer.write(bytes([byte]))
    async with asyncio.timeout(10):
        answer = await read_answer(reader)
    writer.close()
    assert answer.status == 201, answer
    assert http_backend.view.get("slow.bin") == b"slowbody"
