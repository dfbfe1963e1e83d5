"""server.body_min_rate: a body that trickles in (a byte now and then, never quite
stalling) is cut off with 408 and leaves what a client that went away would; a slow
body above the rate, and one held back by the storage, are not; and a crowd of
trickling and stalled bodies does not slow the real uploads beside it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.config import ByteSize, Config
from tests.conftest import Backend, MiB, S3Endpoint, S3View, s3_config, wait_until
from tests.s3_interposer import S3Interposer
from tests.web.served import Answer, assert_json_error, read_answer, served
from tests.web.test_body_timeout import TUS as TUS_LINE
from tests.web.test_body_timeout import file_part, form_head
from tests.web.test_tus import OCTET, TUS, create, object_key, offset_of, patch

WINDOW = 1.0  # server.body_timeout, and so the pace's window, in the single-body tests
RATE = 256  # server.body_min_rate there: 256 bytes per window
EVERY = 0.2  # a trickle's byte every 0.2 s: 5 bytes a window, never a second without one
BURST = 7 * MiB  # more than an S3 part (6 MiB): a multipart upload is under way
GIVE_UP = 20.0  # a trickle not cut off by then never will be


def paced(backend: Backend, window: float = WINDOW, rate: int = RATE) -> Config:
    server = replace(backend.config.server, body_timeout=window, body_min_rate=ByteSize(rate))
    return replace(backend.config, server=server)


@dataclass
class Trickled:
    answer: Answer  # status 0: none before GIVE_UP
    seconds: float  # from the end of the head (and burst) to the answer
    pieces: int  # trickled pieces written


async def trickle(port: int, head: bytes, pieces: Iterable[bytes], every: float = EVERY) -> Trickled:
    """Send ``head`` at once, then one of ``pieces`` every ``every`` seconds until the
    server answers (or GIVE_UP)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        started = time.monotonic()
        answer = asyncio.ensure_future(read_answer(reader))
        written = 0
        for piece in pieces:
            if answer.done() or time.monotonic() - started > GIVE_UP:
                break
            try:
                writer.write(piece)
                await writer.drain()
            except ConnectionError:
                break  # closed after its answer
            written += 1
            await asyncio.wait([answer], timeout=every)
        await asyncio.wait([answer], timeout=max(0.0, GIVE_UP - (time.monotonic() - started)))
        if not answer.done():
            answer.cancel()
            return Trickled(Answer(0), time.monotonic() - started, written)
        return Trickled(answer.result(), time.monotonic() - started, written)
    finally:
        writer.close()


def assert_cut_for_pace(trickled: Trickled, window: float) -> None:
    """A 408 for the rate, not the stall timeout, after a window of trickling at
    least and within a few."""
    assert_json_error(trickled.answer, 408, "body_timeout")
    assert "slower than" in trickled.answer.json()["message"], trickled.answer
    assert window - 0.2 <= trickled.seconds <= 3 * window + 5, trickled


def put_head(key: str, length: int) -> bytes:
    return f"PUT /files/{key} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()


CHUNKED_PUT = b"PUT /files/chunked.bin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
ONE_BYTE_CHUNK = b"1\r\nx\r\n"


def second_part_head(boundary: str, filename: str) -> bytes:
    return b"\r\n" + file_part(boundary, filename, b"")


# aiohttp's multipart reader waits for as many bytes as the boundary (+2) before it
# returns a part's bytes: pieces that long, so that every piece ends a wait and the
# stall timeout (one wait) does not cut the trickle before the rate does.
PART_PIECE = b"y" * 16


# -- one trickle at a time


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_trickling_put_is_cut_off_and_leaves_nothing(backend: Backend, framing: str) -> None:
    await check_trickling_put(backend, framing)


@pytest.mark.real_s3
async def test_a_trickling_put_is_cut_off_and_leaves_nothing_real_s3(real_backend: Backend) -> None:
    await check_trickling_put(real_backend, "content-length")


async def check_trickling_put(backend: Backend, framing: str) -> None:
    async with served(paced(backend)) as port:
        if framing == "chunked":  # trickled from the first byte: cut after one window
            trickled = await trickle(port, CHUNKED_PUT, itertools.repeat(ONE_BYTE_CHUNK))
            assert_cut_for_pace(trickled, WINDOW)
        else:  # a burst (a multipart upload on S3), then the trickle: its window meets the quota
            head = put_head("trickled.bin", 20 * MiB) + os.urandom(BURST)
            trickled = await trickle(port, head, itertools.repeat(b"x"))
            assert_cut_for_pace(trickled, WINDOW)
        # No object, no temporary file, no multipart upload.
        await wait_until(lambda: backend.view.leftovers() == [])
        assert backend.view.keys() == []


async def test_a_trickling_post_keeps_the_files_before_it(backend: Backend) -> None:
    first = os.urandom(1000)
    body = file_part("b0und", "first.mp4", first) + second_part_head("b0und", "second.mp4")
    async with served(paced(backend)) as port:
        trickled = await trickle(port, form_head("b0und", 30 * MiB) + body, itertools.repeat(PART_PIECE))
    assert_cut_for_pace(trickled, WINDOW)
    assert trickled.answer.json()["stored"] == ["up/first.mp4"]
    await wait_until(lambda: backend.view.leftovers() == [])
    assert backend.view.keys() == ["up/first.mp4"]
    assert backend.view.get("up/first.mp4") == first


async def test_a_trickling_tus_patch_keeps_what_arrived(backend: Backend) -> None:
    await check_trickling_patch(backend)


@pytest.mark.real_s3
async def test_a_trickling_tus_patch_keeps_what_arrived_real_s3(real_backend: Backend) -> None:
    await check_trickling_patch(real_backend)


def patch_head(location: str, offset: int, length: int) -> bytes:
    return (
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\n{TUS_LINE}Content-Type: application/offset+octet-stream\r\n"
        f"Upload-Offset: {offset}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def check_trickling_patch(backend: Backend) -> None:
    data = os.urandom(BURST + 1000)
    async with served(paced(backend)) as port, session(port) as http:
        location = await create(http, len(data))
        trickled = await trickle(
            port, patch_head(location, 0, len(data)) + data[:BURST], (bytes([b]) for b in data[BURST:])
        )
        assert_cut_for_pace(trickled, WINDOW)
        assert trickled.answer.headers["Tus-Resumable"] == "1.0.0"
        # What arrived was kept: the burst and some of the trickle (the client writes on
        # until the answer comes, after the kept bytes are saved). The rest completes
        # the upload, so what was kept is exactly the start of the data.
        offset = await offset_of(http, location)
        assert BURST < offset <= BURST + trickled.pieces, (offset, trickled)
        rest = await patch(http, location, offset, data[offset:])
        assert rest.status == 204, await rest.text()
    key = object_key(location)
    assert hashlib.sha256(backend.view.get(key)).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_a_slow_body_above_the_rate_completes(backend: Backend) -> None:
    # 64 bytes every 0.1 s: 640 bytes/s, over the 256 of the rate plus a piece per window.
    data = os.urandom(64 * 30)
    pieces = [data[i : i + 64] for i in range(0, len(data), 64)]
    async with served(paced(backend)) as port:
        sent = await trickle(port, put_head("slow.bin", len(data)), pieces, every=0.1)
    assert sent.answer.status == 201, sent.answer
    assert sent.seconds >= 2.5  # three windows and more: judged and passed
    assert sent.answer.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert backend.view.get("slow.bin") == data


@pytest.mark.slow  # four parts stored 1.5 s apart, through moto
@pytest.mark.alone
async def test_time_the_storage_holds_a_body_back_is_not_the_clients(
    moto_endpoint: S3Endpoint, moto_bucket: str
) -> None:
    # Every part takes 1.5 s to store, one at a time, and the body fills a part in a
    # moment: while one part is full and the one before it still going, the server
    # reads nothing for over a second, and the client, its socket buffers full, sends
    # nothing. The rate asks for more than a part (8 MiB) a window (1 s): counted
    # against the client, the pause after the third part would cut it off.
    layer = S3Interposer(moto_endpoint.url)
    layer.delays["UploadPart"] = 1.5
    interposer = TestServer(layer.app(), host="127.0.0.1")
    await interposer.start_server()
    through = replace(moto_endpoint, url=str(interposer.make_url("")).rstrip("/"))
    config = Config()
    storage = replace(config.storage, backend="s3", s3=s3_config(through, moto_bucket, max_concurrency=1))
    server = replace(config.server, body_timeout=WINDOW, body_min_rate=ByteSize(8 * MiB))
    data = os.urandom(19 * MiB)  # parts of 6, 6, 6 and 1 MiB
    try:
        async with served(replace(config, server=server, storage=storage)) as port, session(port) as http:
            started = time.monotonic()
            async with http.put("/files/held.bin", data=data) as response:
                assert response.status == 201, await response.text()
                assert (await response.json())["sha256"] == hashlib.sha256(data).hexdigest()
            assert time.monotonic() - started >= 4 * 1.5
    finally:
        await interposer.close()
    assert layer.operations().count("UploadPart") == 4
    view = S3View(moto_endpoint, moto_bucket)
    assert hashlib.sha256(view.get("held.bin")).digest() == hashlib.sha256(data).digest()


# -- the crowd (issue 11): stalled and trickling bodies beside real uploads

CROWD = 50
CROWD_WINDOW = 6.0  # body_timeout in the crowd test: longer than the real uploads take
CROWD_RATE = 1024  # 6 KiB a window; a trickler sends 12 bytes (192 into a part) in one
HUGE = 5 * 1024**4  # 5 TiB, S3's largest object
BIG = 50 * MiB
RESUMABLE = 7 * MiB + 3
TUS_CHUNK = 4 * MiB
SLOWEST = 60.0  # "normal speed": seconds a real upload may take beside the crowd


@pytest.mark.slow
@pytest.mark.alone
async def test_a_crowd_of_stalled_and_trickling_bodies_does_not_slow_real_uploads(backend: Backend) -> None:
    await check_crowd(backend)


@pytest.mark.slow
@pytest.mark.alone
@pytest.mark.real_s3
async def test_a_crowd_of_stalled_and_trickling_bodies_does_not_slow_real_uploads_real_s3(
    real_backend: Backend,
) -> None:
    await check_crowd(real_backend)


@dataclass
class Trickler:
    head: bytes
    pieces: Iterable[bytes]
    upload: str | None = None  # a tus PATCH: its upload's location


async def tricklers(http: aiohttp.ClientSession) -> list[Trickler]:
    """CROWD bodies trickling a piece every 0.5 s (a byte, 16 into a multipart part):
    PUTs with Content-Length and chunked, multipart POSTs and tus PATCHes, in turn."""
    crowd = []
    for i in range(CROWD):
        kind = i % 4
        if kind == 0:
            crowd.append(Trickler(put_head(f"trickle/{i}.bin", MiB), itertools.repeat(b"x")))
        elif kind == 1:
            head = CHUNKED_PUT.replace(b"chunked.bin", f"trickle/{i}.bin".encode())
            crowd.append(Trickler(head, itertools.repeat(ONE_BYTE_CHUNK)))
        elif kind == 2:
            head = form_head("b0und", MiB) + file_part("b0und", f"{i}.mp4", b"")
            crowd.append(Trickler(head, itertools.repeat(PART_PIECE)))
        else:
            location = await create(http, MiB)
            crowd.append(Trickler(patch_head(location, 0, MiB), itertools.repeat(b"z"), location))
    return crowd


async def check_crowd(backend: Backend) -> None:
    big, resumable = os.urandom(BIG), os.urandom(RESUMABLE)
    config = paced(backend, CROWD_WINDOW, CROWD_RATE)
    async with served(config) as port, session(port) as http:
        alone = await timed_put(http, "alone.bin", big)  # the same upload without a crowd, for the record
        crowd = await tricklers(http)
        stalled = asyncio.create_task(
            trickle(port, put_head("huge.bin", HUGE) + b"x", [], every=0)  # one byte, then nothing
        )
        trickling = [asyncio.create_task(trickle(port, t.head, t.pieces, every=0.5)) for t in crowd]
        await asyncio.sleep(0.5)  # every one connected and sending
        (crowded, put_answer), (tus_seconds, tus_key) = await asyncio.gather(
            timed_put(http, "crowded.bin", big), timed_tus(http, resumable)
        )
        still_trickling = sum(not t.done() for t in trickling)
        print(
            f"\n{backend.name}: 50 MiB PUT alone {alone[0]:.2f} s, beside the crowd {crowded:.2f} s; "
            f"tus {tus_seconds:.2f} s; tricklers still connected when both were done: {still_trickling}"
        )
        assert crowded < SLOWEST and tus_seconds < SLOWEST
        assert put_answer["sha256"] == hashlib.sha256(big).hexdigest() and put_answer["size"] == BIG
        # Then the stalled and the trickling bodies are cut off by the timeouts.
        stalled_answer = await stalled
        assert_json_error(stalled_answer.answer, 408, "body_timeout")
        assert stalled_answer.seconds <= 2 * CROWD_WINDOW + 10, stalled_answer
        for trickler, task in zip(crowd, trickling, strict=True):
            trickled = await task
            assert_cut_for_pace(trickled, CROWD_WINDOW)
            if trickler.upload is not None:  # kept what arrived, and then terminated
                assert 0 < await offset_of(http, trickler.upload) <= trickled.pieces
                async with http.delete(trickler.upload, headers=TUS) as response:
                    assert response.status == 204
        finished = [f"upload {tus_key.split('/')[0]}"]  # a finished tus upload answers HEAD until it expires
        await wait_until(lambda: backend.view.leftovers() == finished, 30)
    assert backend.view.keys() == sorted(["alone.bin", "crowded.bin", tus_key])
    for key, data in (("crowded.bin", big), (tus_key, resumable)):
        assert hashlib.sha256(backend.view.get(key)).digest() == hashlib.sha256(data).digest(), key


@contextlib.asynccontextmanager
async def session(port: int) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        yield http


async def timed_put(http: aiohttp.ClientSession, key: str, data: bytes) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    async with http.put(f"/files/{key}", data=data) as response:
        assert response.status == 201, await response.text()
        answer: dict[str, Any] = await response.json()
    return time.monotonic() - started, answer


async def timed_tus(http: aiohttp.ClientSession, data: bytes) -> tuple[float, str]:
    """A tus upload of ``data`` in chunks: its seconds and its object's key."""
    started = time.monotonic()
    location = await create(http, len(data))
    for offset in range(0, len(data), TUS_CHUNK):
        headers = {**OCTET, "Upload-Offset": str(offset)}
        async with http.patch(location, data=data[offset : offset + TUS_CHUNK], headers=headers) as response:
            assert response.status == 204, await response.text()
    assert await offset_of(http, location) == len(data)
    return time.monotonic() - started, object_key(location)
