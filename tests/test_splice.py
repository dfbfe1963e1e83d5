"""splice.py on real TCP connections over loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest

from proxy.splice import SourceError, send_all, splice_exactly, wait_ready
from tests.net import receive, tcp_pair

MiB = 1024 * 1024
TIMEOUT = 10.0


def pattern(size: int) -> bytes:
    return (bytes(range(251)) * (size // 251 + 1))[:size]


@pytest.mark.parametrize("slowly", [False, True], ids=["fast-reader", "slow-reader"])
async def test_moves_exactly_the_count_and_leaves_the_rest(slowly: bool) -> None:
    body, after = pattern(5 * MiB + 3), b"NEXT RESPONSE"
    loop = asyncio.get_running_loop()
    async with tcp_pair() as (upstream, src), tcp_pair() as (dst, client):
        writing = asyncio.ensure_future(loop.sock_sendall(upstream, body + after))
        reading = asyncio.ensure_future(receive(client, len(body), slowly=slowly))
        async with asyncio.timeout(TIMEOUT):
            await splice_exactly(src.fileno(), dst.fileno(), len(body), read_timeout=5)
            assert await reading == body
            await writing
            assert await receive(src, len(after)) == after  # still on the source


async def test_zero_bytes_is_nothing_to_do() -> None:
    async with tcp_pair() as (_, src), tcp_pair() as (dst, client):
        await splice_exactly(src.fileno(), dst.fileno(), 0, read_timeout=5)
        with pytest.raises(BlockingIOError):
            client.recv(1)


async def test_source_ending_early_is_a_source_error() -> None:
    async with tcp_pair() as (upstream, src), tcp_pair() as (dst, client):
        upstream.sendall(b"x" * 1000)
        upstream.shutdown(socket.SHUT_WR)
        with pytest.raises(SourceError, match="ended 24 bytes short"):
            await splice_exactly(src.fileno(), dst.fileno(), 1024, read_timeout=5)
        assert await receive(client, 1000) == b"x" * 1000


async def test_silent_source_times_out() -> None:
    async with tcp_pair() as (upstream, src), tcp_pair() as (dst, _):
        upstream.sendall(b"x" * 10)
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(SourceError, match=r"no data for 0\.2 s"):
                await splice_exactly(src.fileno(), dst.fileno(), 100, read_timeout=0.2)


def reset(sock: socket.socket) -> None:
    """Close with RST, as a browser tab that goes away."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def test_destination_gone_is_a_connection_error() -> None:
    loop = asyncio.get_running_loop()
    async with tcp_pair() as (upstream, src), tcp_pair() as (dst, client):
        writing = asyncio.ensure_future(loop.sock_sendall(upstream, pattern(64 * MiB)))
        splicing = asyncio.ensure_future(splice_exactly(src.fileno(), dst.fileno(), 64 * MiB, read_timeout=5))
        async with asyncio.timeout(TIMEOUT):
            await receive(client, MiB)
            reset(client)
            with pytest.raises(ConnectionError):
                await splicing
        writing.cancel()


async def test_send_all_waits_for_a_slow_reader() -> None:
    data = pattern(8 * MiB)
    async with tcp_pair() as (dst, client):
        reading = asyncio.ensure_future(receive(client, len(data), slowly=True))
        async with asyncio.timeout(TIMEOUT):
            await send_all(dst.fileno(), data)
            assert await reading == data


async def test_send_all_to_a_gone_client_is_a_connection_error() -> None:
    async with tcp_pair() as (dst, client):
        reset(client)
        await asyncio.sleep(0.05)
        with pytest.raises(ConnectionError):
            await send_all(dst.fileno(), b"x" * MiB)


async def test_wait_ready_on_a_duplicate_descriptor() -> None:
    # The client socket's own descriptor belongs to aiohttp's transport: relays wait
    # on a duplicate of it, which the loop must accept as another descriptor.
    async with tcp_pair() as (a, b):
        dup = os.dup(a.fileno())
        try:
            b.sendall(b"hi")
            async with asyncio.timeout(TIMEOUT):
                await wait_ready(dup, writing=False)
                await wait_ready(dup, writing=True)
        finally:
            os.close(dup)
        assert a.recv(2) == b"hi"


async def test_wait_ready_unregisters_when_cancelled() -> None:
    loop = asyncio.get_running_loop()
    async with tcp_pair() as (a, _):
        waiting = asyncio.ensure_future(wait_ready(a.fileno(), writing=False))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not loop.remove_reader(a.fileno())  # nothing left registered
