"""Writing a response body straight to the client's socket, past aiohttp's transport.

Only for plain TCP connections: on TLS the bytes must go through the transport.
The transport keeps the socket registered with the event loop, so we wait on a
duplicate of its descriptor (same socket, another number) and never register
the transport's own descriptor twice.
"""

from __future__ import annotations

import asyncio
import os

from proxy.streaming.splice import wait_writable


class ClientSocket:
    def __init__(self, transport: asyncio.Transport, fd: int) -> None:
        self._transport = transport
        self._fd = fd

    @classmethod
    def of(cls, transport: asyncio.BaseTransport | None) -> ClientSocket | None:
        """The socket under ``transport``, or None when it cannot be written directly."""
        if not isinstance(transport, asyncio.Transport) or transport.is_closing():
            return None
        if transport.get_extra_info("sslcontext") is not None:
            return None
        sock = transport.get_extra_info("socket")
        if sock is None:
            return None
        return cls(transport, os.dup(sock.fileno()))

    async def writable(self, send_timeout: float | None) -> int:
        """The descriptor, once everything written through the transport (the status
        line, headers, multipart boundaries) is on the wire, so that bytes written to
        the descriptor follow them."""
        while True:
            if self._transport.is_closing():
                raise ConnectionResetError("client went away")
            if not self._transport.get_write_buffer_size():
                return self._fd
            # The transport flushes on the same readiness: look again after it ran.
            await wait_writable(self._fd, send_timeout)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
