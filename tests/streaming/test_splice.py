"""splice.py on real TCP connections over loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from proxy.streaming.splice import ClientStalled, SourceError, send_all, splice_exactly, wait_writable
from tests.net import receive, tcp_pair

MiB = 1024 * 1024
TIMEOUT = 10.0


@pytest.fixture
def movers() -> Iterator[ThreadPoolExecutor]:
    # One thread: a relay that did not let go of it would stall the next test step.
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield executor


def pattern(size: int) -> bytes:
    return (bytes(range(251)) * (size // 251 + 1))[:size]


@pytest.mark.parametrize("slowly", [False, True], ids=["fast-reader", "slow-reader"])
async def test_moves_exactly_the_count_and_leaves_the_rest(slowly: bool, movers: ThreadPoolExecutor) -> None:
    body, after = pattern(5 * MiB + 3), b"NEXT RESPONSE"
    loop = asyncio.get_running_loop()
    async with tcp_pair() as (upstream, src), tcp_pair() as (dst, client):
        writing = asyncio.ensure_future(loop.sock_sendall(upstream, body + after))
        reading = asyncio.ensure_future(receive(client, len(body), slowly=slowly))
        async with asyncio.timeout(TIMEOUT):
            await splice_exactly(
                src.fileno(), dst.fileno(), len(body), read_timeout=5, send_timeout=None, executor=movers
            )
            assert await reading == body
            await writing
            assert await receive(src, len(after)) == after  # still on the source


async def test_zero_bytes_is_nothing_to_do(movers: ThreadPoolExecutor) -> None:
    async with tcp_pair() as (_, src), tcp_pair() as (dst, client):
        await splice_exactly(
            src.fileno(), dst.fileno(), 0, read_timeout=5, send_timeout=None, executor=movers
        )
        with pytest.raises(BlockingIOError):
            client.recv(1)


async def test_source_ending_early_is_a_source_error(movers: ThreadPoolExecutor) -> None:
    async with tcp_pair() as (upstream, src), tcp_pair() as (dst, client):
        upstream.sendall(b"x" * 1000)
        upstream.shutdown(socket.SHUT_WR)
        with pytest.raises(SourceError, match="ended 24 bytes short"):
            await splice_exactly(
                src.fileno(), dst.fileno(), 1024, read_timeout=5, send_timeout=None, executor=movers
            )
        assert await receive(client, 1000) == b"x" * 1000


async def test_silent_source_times_out(movers: ThreadPoolExecutor) -> None:
    async with tcp_pair() as (upstream, src), tcp_pair() as (dst, _):
        upstream.sendall(b"x" * 10)
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(SourceError, match=r"no data for 0\.2 s"):
                await splice_exactly(
                    src.fileno(), dst.fileno(), 100, read_timeout=0.2, send_timeout=None, executor=movers
                )


def reset(sock: socket.socket) -> None:
    """Close with RST, as a browser tab that goes away."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def start_relaying(
    upstream: socket.socket,
    src: socket.socket,
    dst: socket.socket,
    movers: ThreadPoolExecutor,
    *,
    send_timeout: float | None = None,
) -> tuple[asyncio.Future[None], asyncio.Future[None]]:
    """64 MiB sent into ``upstream`` and spliced from ``src`` to ``dst``: the two tasks."""
    loop = asyncio.get_running_loop()
    writing = asyncio.ensure_future(loop.sock_sendall(upstream, pattern(64 * MiB)))
    splicing = asyncio.ensure_future(
        splice_exactly(
            src.fileno(), dst.fileno(), 64 * MiB, read_timeout=60, send_timeout=send_timeout, executor=movers
        )
    )
    return writing, splicing


async def test_destination_gone_is_a_connection_error(movers: ThreadPoolExecutor) -> None:
    async with tcp_pair() as (upstream, src), tcp_pair() as (dst, client):
        writing, splicing = start_relaying(upstream, src, dst, movers)
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
            await send_all(dst.fileno(), data, send_timeout=None)
            assert await reading == data


async def test_send_all_to_a_gone_client_is_a_connection_error() -> None:
    async with tcp_pair() as (dst, client):
        reset(client)
        await asyncio.sleep(0.05)
        with pytest.raises(ConnectionError):
            await send_all(dst.fileno(), b"x" * MiB, send_timeout=None)


async def test_cancelled_while_waiting_for_the_source_lets_go_of_both(movers: ThreadPoolExecutor) -> None:
    async with tcp_pair() as (upstream, src), tcp_pair() as (dst, client):
        splicing = asyncio.ensure_future(
            splice_exactly(
                src.fileno(), dst.fileno(), 100, read_timeout=60, send_timeout=None, executor=movers
            )
        )
        await asyncio.sleep(0.05)  # the thread now waits for bytes that do not come
        splicing.cancel()
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(asyncio.CancelledError):
                await splicing
            # The thread stopped: it is free, and the next bytes stay on the source.
            assert await asyncio.get_running_loop().run_in_executor(movers, threading.get_ident)
            upstream.sendall(b"after")
            assert await receive(src, 5) == b"after"
        with pytest.raises(BlockingIOError):
            client.recv(1)


async def test_cancelled_while_the_client_stalls_lets_go_of_both(movers: ThreadPoolExecutor) -> None:
    loop = asyncio.get_running_loop()
    async with tcp_pair() as (upstream, src), tcp_pair() as (dst, _):
        writing, splicing = start_relaying(upstream, src, dst, movers)
        await asyncio.sleep(0.2)  # the client reads nothing: the thread waits to write
        assert not splicing.done()
        splicing.cancel()
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(asyncio.CancelledError):
                await splicing
            assert await loop.run_in_executor(movers, threading.get_ident)
        writing.cancel()


async def test_a_client_that_takes_nothing_for_the_send_timeout_is_stalled(
    movers: ThreadPoolExecutor,
) -> None:
    async with tcp_pair() as (upstream, src), tcp_pair() as (dst, _):
        writing, splicing = start_relaying(upstream, src, dst, movers, send_timeout=0.3)
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ClientStalled, match=r"no bytes for 0\.3 s"):
                await splicing
            # The thread is free.
            assert await asyncio.get_running_loop().run_in_executor(movers, threading.get_ident)
        writing.cancel()


async def test_pauses_shorter_than_the_send_timeout_are_waited_for(movers: ThreadPoolExecutor) -> None:
    body = pattern(24 * MiB)
    loop = asyncio.get_running_loop()

    async def pausing_reader(sock: socket.socket) -> bytes:
        received = bytearray()
        while len(received) < len(body):
            received += await receive(sock, min(8 * MiB, len(body) - len(received)))
            await asyncio.sleep(0.3)  # a full socket buffer waits this long
        return bytes(received)

    async with tcp_pair() as (upstream, src), tcp_pair() as (dst, client):
        writing = asyncio.ensure_future(loop.sock_sendall(upstream, body))
        reading = asyncio.ensure_future(pausing_reader(client))
        async with asyncio.timeout(TIMEOUT):
            await splice_exactly(
                src.fileno(), dst.fileno(), len(body), read_timeout=60, send_timeout=1.5, executor=movers
            )
            assert await reading == body
            await writing


async def test_send_all_to_a_stalled_client_is_stalled() -> None:
    async with tcp_pair() as (dst, _):
        fill(dst)
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ClientStalled):
                await send_all(dst.fileno(), b"x" * MiB, send_timeout=0.2)


async def test_wait_writable_on_a_duplicate_descriptor() -> None:
    # The client socket's own descriptor belongs to aiohttp's transport: relays wait
    # on a duplicate of it, which the loop must accept as another descriptor.
    async with tcp_pair() as (a, b):
        dup = os.dup(a.fileno())
        try:
            async with asyncio.timeout(TIMEOUT):
                await wait_writable(dup, None)
        finally:
            os.close(dup)
        a.sendall(b"hi")
        assert await receive(b, 2) == b"hi"


async def test_wait_writable_unregisters_when_cancelled() -> None:
    loop = asyncio.get_running_loop()
    async with tcp_pair() as (a, _):
        fill(a)
        waiting = asyncio.ensure_future(wait_writable(a.fileno(), None))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not loop.remove_writer(a.fileno())  # nothing left registered


def fill(sock: socket.socket) -> None:
    """Write to the non-blocking ``sock`` until its buffers are full."""
    chunk = b"x" * MiB
    with pytest.raises(BlockingIOError):
        while True:
            sock.send(chunk)
