"""S3 bodies relayed with splice(2) on the proxy's own connection, and the reads that
go through botocore instead: refused by S3, or to a TLS client."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from proxy.config import Config, ServerConfig, StorageConfig
from tests.conftest import Backend, S3Endpoint, backend_for, s3_config
from tests.net import TcpTap
from tests.web.downloads_support import (
    TIMEOUT,
    N,
    RecordingInterposer,
    S3Recorded,
    assert_framed,
    body_of,
    expected_body_of,
    module_loop,
    object_bytes,
    parse_byteranges,
    raw,
    self_signed_context,
    start_client,
    upload,
)


@module_loop
async def test_s3_reads_are_relayed(s3_recorded: S3Recorded) -> None:
    data = s3_recorded.data
    r = await raw(s3_recorded.client, "GET", "/files/rec.mp4")
    assert r.status == 200 and r.body == data
    r = await raw(s3_recorded.client, "GET", "/files/rec.mp4", {"Range": "bytes=500-509,0-9,-5"})
    assert [part for _, part in parse_byteranges(r)] == [data[500:510], data[0:10], data[995:]]
    assert [c.relayed for c in s3_recorded.get_objects()] == [True] * 4


@module_loop
@pytest.mark.parametrize(
    ("header", "refused"),
    [
        ({}, {""}),
        ({"Range": "bytes=10-19"}, {"bytes=10-19"}),
        ({"Range": "bytes=0-9,100-199,-5"}, {"bytes=0-9"}),
        ({"Range": "bytes=0-9,100-199,-5"}, {"bytes=100-199"}),
        ({"Range": "bytes=0-9,100-199,-5"}, {"bytes=0-9", "bytes=995-999"}),
    ],
    ids=["whole", "range", "first-part", "middle-part", "first-and-last-parts"],
)
async def test_s3_reads_the_relay_cannot_make_go_through_botocore(
    s3_recorded: S3Recorded, header: dict[str, str], refused: set[str]
) -> None:
    # An answer the relay does not expect is read again through botocore; relayed and
    # botocore parts of one multipart body follow each other in order.
    s3_recorded.layer.refuse_relayed = refused
    r = await raw(s3_recorded.client, "GET", "/files/rec.mp4", header)
    assert_framed(r)
    assert body_of(r) == expected_body_of(header, s3_recorded.data)
    gets = s3_recorded.get_objects()
    for sent_range in refused:
        refused_at = [(c.range or "", c.relayed) for c in gets].index((sent_range, True))
        retry = gets[refused_at + 1]
        assert (retry.range or "", retry.relayed, retry.if_match) == (sent_range, False, s3_recorded.etag)
    assert sum(c.relayed for c in gets) == len(gets) - len(refused)


@module_loop
async def test_s3_relayed_responses_keep_the_client_connection_alive(s3_recorded: S3Recorded) -> None:
    data = s3_recorded.data
    tap = TcpTap(str(s3_recorded.client.make_url("")))  # counts the client's connections
    await tap.start()
    try:
        async with aiohttp.ClientSession(tap.url, connector=aiohttp.TCPConnector(limit=1)) as session:
            ranges = [(i * 37 % N, min(N - 1, i * 37 % N + i)) for i in range(40)]
            async with asyncio.timeout(TIMEOUT):
                for start, end in ranges:
                    headers = {"Range": f"bytes={start}-{end}"}
                    async with session.get("/files/rec.mp4", headers=headers) as response:
                        assert response.status == 206
                        assert await response.read() == data[start : end + 1]
                async with session.get("/files/rec.mp4") as response:
                    assert await response.read() == data
    finally:
        await tap.close()
    assert len(tap.connections) == 1
    assert all(c.relayed for c in s3_recorded.get_objects())


@pytest.mark.parametrize("server", ["moto", pytest.param("real", marks=pytest.mark.real_s3)])
async def test_s3_ranges_of_one_answer_take_turns_on_one_allowed_connection(
    request: pytest.FixtureRequest, tmp_path: Path, server: str
) -> None:
    if server == "real":
        backend: Backend = request.getfixturevalue("real_backend")
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        backend = backend_for("s3", tmp_path, endpoint, request.getfixturevalue("moto_bucket"))
    s3 = replace(backend.config.storage.s3, max_pool_connections=1)
    client = await start_client(replace(backend.config, storage=replace(backend.config.storage, s3=s3)))
    try:
        data = object_bytes(N)
        await upload(client, "one.mp4", data)
        r = await raw(client, "GET", "/files/one.mp4", {"Range": "bytes=0-9,100-199,-5"})
        assert [part for _, part in parse_byteranges(r)] == [data[0:10], data[100:200], data[995:]]
    finally:
        await client.close()


async def test_s3_bodies_to_tls_clients_go_through_the_transport(
    tmp_path: Path, moto_endpoint: S3Endpoint, moto_bucket: str
) -> None:
    # Bytes written to the socket under a TLS transport would skip the encryption.
    layer = RecordingInterposer(moto_endpoint.url)
    s3_server = TestServer(layer.app(), host="127.0.0.1")
    await s3_server.start_server()
    endpoint = replace(moto_endpoint, url=str(s3_server.make_url("")).rstrip("/"))
    config = Config(ServerConfig(), StorageConfig(backend="s3", s3=s3_config(endpoint, moto_bucket)))
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server(ssl=self_signed_context(tmp_path))
    try:
        data = object_bytes(300_000)
        url = f"https://127.0.0.1:{server.port}/files/tls.bin"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session:
            async with session.put(url, data=data) as response:
                assert response.status == 201
            async with session.get(url, headers={"Range": "bytes=5-200004"}) as response:
                assert response.status == 206 and await response.read() == data[5:200005]
        gets = [c for c in layer.calls if c.method == "GET" and c.path.endswith("/tls.bin")]
        assert gets and not any(c.relayed for c in gets)
    finally:
        await server.close()
        await s3_server.close()
