"""GetObject on raw keep-alive connections, for S3 endpoints on plain HTTP.

Through botocore a ranged GetObject costs the proxy milliseconds of CPU, and every
body byte passes through the interpreter twice. Here the request is signed by
rules.sigv4 (as botocore signs it, with the day's signing key derived once) and
written on a socket of our own; the answer's head is
parsed by rules.response_head, and the body is left on the socket for streaming.splice to
move to the client inside the kernel.

Whatever this path does not expect (another status, no Content-Length, a failing
connection) makes open() return None, and the caller reads through botocore instead,
which retries and reports errors as usual. HTTPS endpoints always go through botocore.
"""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor

from proxy.rules.response_head import MalformedHead, ResponseHead
from proxy.storage.base import ObjectNotFound, UpstreamError
from proxy.storage.s3.plain_http import PlainEndpoint, read_head
from proxy.streaming.splice import SourceError, send_all, splice_exactly

# Tells these requests apart from botocore's in the server's logs.
USER_AGENT = "stream-proxy-relay"


class S3Relay:
    """Signed GetObjects to one bucket, at most ``max_connections`` at once, on
    connections kept alive between them."""

    def __init__(
        self,
        endpoint: PlainEndpoint,
        *,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self._endpoint = endpoint
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_connections
        self._idle: list[socket.socket] = []
        # One thread per body being moved: each holds a slot, so none ever queues.
        self.movers = ThreadPoolExecutor(max_workers=max_connections, thread_name_prefix="s3-relay")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

    def close(self) -> None:
        # Called once no request is left, so no thread is moving anything.
        self.movers.shutdown(wait=False)
        while self._idle:
            self._idle.pop().close()

    async def open(
        self, key: str, start: int, end: int | None, *, etag: str, size: int
    ) -> OpenedRange | None:
        """Send GetObject for bytes ``start``-``end`` (None: to the end; no Range at
        all for a whole object, as S3Storage.read) with IfMatch ``etag``, and read the
        answer's head. ObjectNotFound if ``etag`` is no longer the object's."""
        last = size - 1 if end is None else end
        length = last - start + 1
        byte_range = f"bytes={start}-{'' if end is None else end}" if start or end is not None else None
        request = await self._signed_get(key, byte_range, etag)
        if request is None:
            return None
        await self._slots.acquire()
        try:
            answer = await self._exchange(request)
        except BaseException:
            self._slots.release()
            raise
        if answer is None:
            self._slots.release()
            return None
        sock, head, leftover = answer
        if head.status == 412:
            sock.close()
            self._slots.release()
            raise ObjectNotFound(key)
        expected_range = f"bytes {start}-{last}/{size}" if byte_range else None
        if (
            head.status != (206 if byte_range else 200)
            or head.body_length() != length
            or head.headers.get("content-range") != expected_range
            or len(leftover) > length
        ):
            sock.close()
            self._slots.release()
            return None
        return OpenedRange(self, sock, leftover, length - len(leftover), reusable=head.keep_alive)

    def release(self, sock: socket.socket | None) -> None:
        """Give back a connection's slot, and the connection itself when it is ready
        for another request."""
        if sock is not None:
            if len(self._idle) < self._max_idle:
                self._idle.append(sock)
            else:
                sock.close()
        self._slots.release()

    async def _signed_get(self, key: str, byte_range: str | None, etag: str) -> bytes | None:
        # An ETag is whatever the server sent: never let it shape the request.
        if not etag.isascii() or not etag.isprintable():
            return None
        headers = {"If-Match": etag}
        if byte_range is not None:
            headers["Range"] = byte_range
        signed = await self._endpoint.request_head("GET", key, headers, user_agent=USER_AGENT)
        return None if signed is None else signed[0]

    async def _exchange(self, request: bytes) -> tuple[socket.socket, ResponseHead, bytes] | None:
        idle = self._idle_connection()
        if idle is not None:
            # The server may close an idle connection just as we use it: GET is
            # idempotent, so a failure there is worth one more try on a fresh one.
            answer = await self._try(idle, request)
            if answer is not None:
                return idle, *answer
        try:
            sock = await self._endpoint.connect(self.connect_timeout)
        except OSError:
            return None
        answer = await self._try(sock, request)
        return None if answer is None else (sock, *answer)

    async def _try(self, sock: socket.socket, request: bytes) -> tuple[ResponseHead, bytes] | None:
        """The answer's head, or None; ``sock`` is closed unless a head came."""
        try:
            return await self._round_trip(sock, request)
        except (OSError, MalformedHead):
            sock.close()
            return None
        except BaseException:
            sock.close()
            raise

    def _idle_connection(self) -> socket.socket | None:
        while self._idle:
            sock = self._idle.pop()
            try:
                sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                return sock  # nothing to read, as it should be between requests
            except OSError:
                pass
            sock.close()  # closed by the server, or bytes nobody asked for
        return None

    async def _round_trip(self, sock: socket.socket, request: bytes) -> tuple[ResponseHead, bytes]:
        await asyncio.get_running_loop().sock_sendall(sock, request)
        return await read_head(sock, self.read_timeout)


class OpenedRange:
    """A GetObject answered with the expected head; its body still on the socket."""

    def __init__(
        self, relay: S3Relay, sock: socket.socket, leftover: bytes, remaining: int, *, reusable: bool
    ) -> None:
        self._relay = relay
        self._sock: socket.socket | None = sock
        self._leftover = leftover  # body bytes that came with the head
        self._remaining = remaining
        self._reusable = reusable
        self._done = False

    async def send_to(self, fd: int, *, send_timeout: float | None) -> None:
        if self._sock is None or self._done:
            raise RuntimeError("the body was already sent or released")
        await send_all(fd, self._leftover, send_timeout=send_timeout)
        if not self._remaining:
            self._done = True
            return
        try:
            await splice_exactly(
                self._sock.fileno(),
                fd,
                self._remaining,
                read_timeout=self._relay.read_timeout,
                send_timeout=send_timeout,
                executor=self._relay.movers,
            )
        except SourceError as exc:
            raise UpstreamError(f"S3 body: {exc}") from exc
        self._done = True

    async def read_whole(self, limit: int) -> bytes | None:
        if self._sock is None or self._done or len(self._leftover) + self._remaining > limit:
            return None
        loop = asyncio.get_running_loop()
        body = bytearray(self._leftover)
        while self._remaining:
            try:
                async with asyncio.timeout(self._relay.read_timeout):
                    data = await loop.sock_recv(self._sock, self._remaining)
            except TimeoutError as exc:
                raise UpstreamError(f"S3 sent no body bytes for {self._relay.read_timeout:g} s") from exc
            except OSError as exc:
                raise UpstreamError(f"S3 body: {exc}") from exc
            if not data:
                raise UpstreamError(f"S3 body: the connection closed {self._remaining} bytes short")
            body += data
            self._remaining -= len(data)
        self._done = True
        return bytes(body)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._done and self._reusable:
            self._relay.release(sock)
        else:
            # Not read to its end: closing is the only way to stop S3 sending it.
            sock.close()
            self._relay.release(None)
