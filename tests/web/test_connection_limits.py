"""Limits on connections, through the server as ``stream-proxy serve`` runs it:
how long a head may take, how long a connection may idle, how many one process
serves. Pure HTTP behaviour: the in-memory storage serves."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from proxy.config import Config
from tests.conftest import Backend
from tests.web.served import assert_json_error, closed_within, read_answer, request_on, served

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def limited(backend: Backend, **settings: Any) -> Config:
    return replace(backend.config, server=replace(backend.config.server, **settings))


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[Stream]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_trickled_head_is_cut_off_while_others_are_served(http_backend: Backend) -> None:
    config = limited(http_backend, head_timeout=3.0)
    async with served(config, http_backend.app_backend) as port, connection(port) as (reader, writer):
        started = time.monotonic()
        writer.write(b"GET /files/a.bin HTTP/1.1\r\n")

        async def trickle() -> None:
            for n in range(30):  # would take 30 s
                await asyncio.sleep(1.0)
                writer.write(f"X-Line-{n}: {n}\r\n".encode())
                with contextlib.suppress(ConnectionError):
                    await writer.drain()

        trickling = asyncio.create_task(trickle())
        try:
            await asyncio.sleep(1.5)
            # Meanwhile another connection is answered at once.
            async with connection(port) as (other_reader, other_writer):
                other = await request_on(other_reader, other_writer, "GET", "/files/missing.bin")
                assert other.status == 404
            sent = await closed_within(reader, 10)
            elapsed = time.monotonic() - started
        finally:
            trickling.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await trickling
    assert sent is not None, "the trickling client was never cut off"
    assert 2.5 <= elapsed <= 8, elapsed
    answer = await read_answer(_reader_of(sent))
    assert_json_error(answer, 408, "head_timeout")


def _reader_of(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_a_whole_head_in_pieces_within_the_timeout_is_answered(http_backend: Backend) -> None:
    config = limited(http_backend, head_timeout=3.0)
    async with served(config, http_backend.app_backend) as port, connection(port) as (reader, writer):
        for line in (b"GET /files/a.bin HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n", b"\r\n"):
            writer.write(line)
            await asyncio.sleep(0.5)
        async with asyncio.timeout(10):
            assert (await read_answer(reader)).status == 404


async def test_idle_connections_are_closed_after_the_keepalive_timeout(http_backend: Backend) -> None:
    config = limited(http_backend, keepalive_timeout=2.0, head_timeout=30.0)
    async with (
        served(config, http_backend.app_backend) as port,
        connection(port) as (silent, _),
        connection(port) as (reader, writer),
    ):
        started = time.monotonic()
        # A connection in use is kept: a request every second for 4 s, more than
        # twice the timeout, all on one connection.
        for _ in range(4):
            assert (await request_on(reader, writer, "GET", "/files/missing.bin")).status == 404
            await asyncio.sleep(1.0)
        # One that sent nothing since it connected was closed, without an answer.
        assert await closed_within(silent, 0.1) == b""
        # This one, once it idles, is closed too, silently.
        idle_from = time.monotonic()
        assert await closed_within(reader, 10) == b""
        idled = time.monotonic() - idle_from
        assert idle_from - started > 3.5
        assert 0.5 <= idled <= 5, idled


async def test_a_request_in_progress_outlasts_the_head_and_keepalive_timeouts(http_backend: Backend) -> None:
    config = limited(http_backend, head_timeout=1.0, keepalive_timeout=1.0, body_timeout=5.0)
    async with served(config, http_backend.app_backend) as port, connection(port) as (reader, writer):
        writer.write(b"PUT /files/slow.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
        for byte in b"slowbody":  # 8 bytes over 3.2 s, more than three times both timeouts
            await asyncio.sleep(0.4)
            writer.write(bytes([byte]))
        async with asyncio.timeout(10):
            answer = await read_answer(reader)
        assert answer.status == 201, answer
        assert answer.json()["size"] == 8
    assert http_backend.view.get("slow.bin") == b"slowbody"


async def test_past_max_connections_new_ones_get_503_at_once(http_backend: Backend) -> None:
    config = limited(http_backend, max_connections=3)
    async with served(config, http_backend.app_backend) as port, contextlib.AsyncExitStack() as stack:
        kept = [await stack.enter_async_context(connection(port)) for _ in range(3)]
        for reader, writer in kept:
            assert (await request_on(reader, writer, "GET", "/files/missing.bin")).status == 404
        for attempt in range(5):
            async with connection(port) as (reader, writer):
                started = time.monotonic()
                if attempt % 2:  # with a request sent, or none: the same answer
                    writer.write(b"GET /files/missing.bin HTTP/1.1\r\nHost: x\r\n\r\n")
                async with asyncio.timeout(5):
                    answer = await read_answer(reader)
                assert time.monotonic() - started < 1.5
                assert_json_error(answer, 503, "too_many_connections")
                assert int(answer.headers["Retry-After"]) >= 1
                assert await closed_within(reader, 5) == b"", "the refused connection stays open"
        # The kept ones are still served...
        reader, writer = kept[0]
        assert (await request_on(reader, writer, "GET", "/files/missing.bin")).status == 404
        # ...and when one leaves, a new connection is served again (refused ones did not count).
        writer.close()
        await asyncio.sleep(0.3)
        async with connection(port) as (reader, writer):
            assert (await request_on(reader, writer, "GET", "/files/missing.bin")).status == 404
