"""S3Storage.open_relay (proxy/storage/s3_relay.py) against moto and the real RGW.

A TCP tap between the storage and the server shows the requests as sent and the
connections they use.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiobotocore.credentials import AioRefreshableCredentials
from aiohttp.test_utils import TestServer
from botocore.exceptions import CredentialRetrievalError

from proxy.storage.base import BodyRelay, ObjectNotFound, UpstreamError
from proxy.storage.s3.objects import S3Storage
from proxy.storage.s3.plain_http import PlainEndpoint
from proxy.storage.s3.relay import USER_AGENT, S3Relay
from tests.conftest import MiB, S3Endpoint, S3View, make_bucket, s3_config, wait_until
from tests.net import TcpTap, receive, tcp_pair
from tests.s3_interposer import S3Interposer

TIMEOUT = 10.0


@pytest.fixture(params=["moto", pytest.param("real", marks=pytest.mark.real_s3)])
def server_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def endpoint(request: pytest.FixtureRequest, server_name: str) -> S3Endpoint:
    server: S3Endpoint = request.getfixturevalue("moto_endpoint" if server_name == "moto" else "real_s3")
    return server


@pytest.fixture
def bucket(endpoint: S3Endpoint) -> Iterator[str]:
    yield from make_bucket(endpoint)


@dataclass
class Tapped:
    tap: TcpTap
    storage: S3Storage
    view: S3View
    keeps_alive: bool  # moto's server closes each connection after one answer; RGW keeps them

    def put(self, key: str, data: bytes) -> str:
        self.view.client.put_object(Bucket=self.view.bucket, Key=key, Body=data)
        etag: str = self.view.client.head_object(Bucket=self.view.bucket, Key=key)["ETag"]
        return etag

    def relay_connections(self) -> list[Any]:
        return [c for c in self.tap.connections if USER_AGENT.encode() in c.sent]


@pytest.fixture
async def tapped(endpoint: S3Endpoint, bucket: str, server_name: str) -> AsyncIterator[Tapped]:
    tap = TcpTap(endpoint.url)
    await tap.start()
    storage = S3Storage(s3_config(replace(endpoint, url=tap.url), bucket, max_pool_connections=2))
    await storage.start()
    try:
        yield Tapped(tap, storage, S3View(endpoint, bucket), keeps_alive=server_name == "real")
    finally:
        await storage.close()
        await tap.close()


def payload(size: int) -> bytes:
    return hashlib.sha256(str(size).encode()).digest() * (size // 32) + b"!" * (size % 32)


async def relayed(relay: BodyRelay | None, length: int) -> bytes:
    """What the relay sends a client socket."""
    assert relay is not None, "the read was not relayed"
    async with tcp_pair() as (ours, client):
        reading = asyncio.ensure_future(receive(client, length))
        try:
            async with asyncio.timeout(TIMEOUT):
                await relay.send_to(ours.fileno(), send_timeout=None)
                return await reading
        finally:
            relay.close()


KEY = "dir/a b+ü~%é.mp4"  # every character botocore must escape, and ours too


async def test_reads_are_relayed_on_one_kept_alive_connection(tapped: Tapped) -> None:
    data = payload(3 * MiB + 5)
    etag = await asyncio.to_thread(tapped.put, KEY, data)
    size = len(data)
    reads = [
        (0, 9, "bytes=0-9"),
        (10, None, "bytes=10-"),
        (5, 2 * MiB, f"bytes=5-{2 * MiB}"),
        (0, None, None),
    ]
    for start, end, _ in reads:
        relay = await tapped.storage.open_relay(KEY, start, end, etag=etag, size=size)
        stop = size if end is None else end + 1
        assert await relayed(relay, stop - start) == data[start:stop]
    connections = tapped.relay_connections()
    assert len(connections) == (1 if tapped.keeps_alive else len(reads))
    requests = [r for c in connections for r in c.sent.split(b"\r\n\r\n") if r]
    assert len(requests) == len(reads)
    for request, (_, _, sent_range) in zip(requests, reads, strict=True):
        lines = request.decode().split("\r\n")
        assert lines[0] == "GET /" + tapped.view.bucket + "/dir/a%20b%2B%C3%BC~%25%C3%A9.mp4 HTTP/1.1"
        assert f"If-Match: {etag}" in lines
        ranges = [line for line in lines if line.startswith("Range: ")]
        assert ranges == ([f"Range: {sent_range}"] if sent_range else [])


async def test_a_small_body_is_read_whole_and_its_connection_kept(tapped: Tapped) -> None:
    data = payload(3 * MiB)
    etag = await asyncio.to_thread(tapped.put, KEY, data)
    small = await tapped.storage.open_relay(KEY, 100, 100 + 64 * 1024 - 1, etag=etag, size=len(data))
    assert small is not None
    assert await small.read_whole(64 * 1024) == data[100 : 100 + 64 * 1024]
    assert await small.read_whole(64 * 1024) is None  # read once
    small.close()
    # A body over the limit is left on the socket, to be relayed.
    large = await tapped.storage.open_relay(KEY, 0, 2 * MiB - 1, etag=etag, size=len(data))
    assert large is not None
    assert await large.read_whole(2 * MiB - 1) is None
    assert await relayed(large, 2 * MiB) == data[: 2 * MiB]
    # The small body's connection served the next read.
    assert len(tapped.relay_connections()) == (1 if tapped.keeps_alive else 2)


async def test_another_version_is_object_not_found(tapped: Tapped) -> None:
    data = payload(1000)
    etag = await asyncio.to_thread(tapped.put, "v.bin", data)
    with pytest.raises(ObjectNotFound):
        await tapped.storage.open_relay("v.bin", 0, 9, etag='"0123456789abcdef0123456789abcdef"', size=1000)
    # Not this path's to report: botocore tells a missing key from a missing bucket.
    assert await tapped.storage.open_relay("gone.bin", 0, 9, etag=etag, size=1000) is None
    relay = await tapped.storage.open_relay("v.bin", 0, 9, etag=etag, size=1000)
    assert await relayed(relay, 10) == data[:10]


@pytest.mark.parametrize(
    ("start", "end", "announced"),
    [(0, None, 1001), (0, 9, 1001), (990, None, 999)],
    ids=["whole-length", "range-total", "range-end"],
)
async def test_answers_unlike_the_announced_object_are_not_relayed(
    tapped: Tapped, start: int, end: int | None, announced: int
) -> None:
    # The caller has already sent headers for ``announced`` bytes: a body of another
    # length must not be relayed as if it fitted. The caller reads through botocore.
    etag = await asyncio.to_thread(tapped.put, "n.bin", payload(1000))
    assert await tapped.storage.open_relay("n.bin", start, end, etag=etag, size=announced) is None
    await wait_until(lambda: not any(c.open for c in tapped.relay_connections()), TIMEOUT)


async def test_error_answers_are_not_relayed(endpoint: S3Endpoint, bucket: str) -> None:
    layer = S3Interposer(endpoint.url)
    layer.fault = lambda seen: 503 if seen.method == "GET" else None
    server = TestServer(layer.app(), host="127.0.0.1")
    await server.start_server()
    storage = S3Storage(s3_config(replace(endpoint, url=str(server.make_url("")).rstrip("/")), bucket))
    await storage.start()
    try:
        view = S3View(endpoint, bucket)
        await asyncio.to_thread(view.client.put_object, Bucket=bucket, Key="e.bin", Body=b"0123456789")
        etag = view.client.head_object(Bucket=bucket, Key="e.bin")["ETag"]
        assert await storage.open_relay("e.bin", 0, 4, etag=etag, size=10) is None
        assert layer.operations().count("GET object") == 1  # botocore does the retrying
    finally:
        await storage.close()
        await server.close()


async def test_a_connection_the_server_closed_while_idle_is_replaced(tapped: Tapped) -> None:
    data = payload(1000)
    etag = await asyncio.to_thread(tapped.put, "i.bin", data)
    assert (
        await relayed(await tapped.storage.open_relay("i.bin", 0, 9, etag=etag, size=1000), 10) == data[:10]
    )
    await tapped.tap.drop_connections()
    await asyncio.sleep(0.05)  # let the FIN arrive
    assert (
        await relayed(await tapped.storage.open_relay("i.bin", 5, 9, etag=etag, size=1000), 5) == data[5:10]
    )
    if tapped.keeps_alive:
        assert len(tapped.relay_connections()) == 2


async def test_a_body_not_read_to_its_end_closes_its_connection_at_once(tapped: Tapped) -> None:
    size = 32 * MiB
    data = payload(size)
    etag = await asyncio.to_thread(tapped.put, "big.bin", data)
    relay = await tapped.storage.open_relay("big.bin", 0, None, etag=etag, size=size)
    assert relay is not None
    relay.close()
    [first] = tapped.relay_connections()
    await wait_until(lambda: not first.open, TIMEOUT)
    assert first.bytes_down < size // 2
    # The next read has a connection of its own.
    assert (
        await relayed(await tapped.storage.open_relay("big.bin", 1, 2, etag=etag, size=size), 2) == data[1:3]
    )
    assert len(tapped.relay_connections()) == 2


async def test_at_most_max_pool_connections_at_once(tapped: Tapped) -> None:
    data = payload(1000)
    etag = await asyncio.to_thread(tapped.put, "c.bin", data)
    first, second = [await tapped.storage.open_relay("c.bin", 0, 9, etag=etag, size=1000) for _ in range(2)]
    assert first is not None and second is not None
    third = asyncio.ensure_future(tapped.storage.open_relay("c.bin", 0, 9, etag=etag, size=1000))
    await asyncio.sleep(0.2)
    assert not third.done()
    first.close()
    async with asyncio.timeout(TIMEOUT):
        assert await relayed(await third, 10) == data[:10]
    second.close()


async def test_https_endpoints_are_never_relayed(bucket: str) -> None:
    storage = S3Storage(
        s3_config(S3Endpoint("https://127.0.0.1:9", "testaccesskey", "testsecretkey"), bucket)
    )
    await storage.start()
    try:
        assert await storage.open_relay("x.bin", 0, 9, etag='"abc"', size=10) is None
    finally:
        await storage.close()


async def test_credentials_that_cannot_be_refreshed_leave_the_read_to_botocore() -> None:
    async def refresh() -> dict[str, str]:
        raise CredentialRetrievalError(provider="test", error_msg="the role endpoint is down")

    expired = {
        "access_key": "a",
        "secret_key": "s",
        "token": "t",
        "expiry_time": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
    }
    credentials = AioRefreshableCredentials.create_from_metadata(expired, refresh, "test")
    relay = S3Relay(
        PlainEndpoint.of("http://127.0.0.1:9/bucket/", credentials, "us-east-1"),
        max_connections=1,
        connect_timeout=1,
        read_timeout=1,
    )
    assert await relay.open("x.bin", 0, 9, etag='"abc"', size=10) is None


async def test_a_small_body_cut_short_is_an_upstream_error() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nContent-Range: bytes 0-9/100\r\n\r\n"
        writer.write(head + b"01234")  # half the body, then the connection ends
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fresh = {"access_key": "a", "secret_key": "s", "token": "t", "expiry_time": "2999-01-01T00:00:00+00:00"}

    async def refresh() -> dict[str, str]:
        return fresh

    credentials = AioRefreshableCredentials.create_from_metadata(fresh, refresh, "test")
    relay = S3Relay(
        PlainEndpoint.of(f"http://127.0.0.1:{port}/bucket/", credentials, "us-east-1"),
        max_connections=1,
        connect_timeout=5,
        read_timeout=5,
    )
    try:
        opened = await relay.open("k.bin", 0, 9, etag='"abc"', size=100)
        assert opened is not None
        with pytest.raises(UpstreamError, match="5 bytes short"):
            await opened.read_whole(1024)
        opened.close()
    finally:
        relay.close()
        server.close()
        await server.wait_closed()
