"""sendfile(2) from a file to a client's socket, cut off when the client stops taking
bytes.

asyncio's loop.sendfile can only be timed as a whole, which cannot tell a slow client
from a stalled one. Here the socket stays registered for writing while the bytes go
out (each time it can take more, one sendfile call sends what fits, in the loop's
callback, with no task switch), and one timer per ``send_timeout`` looks whether any
byte went out since it last looked: what a timed wait per call would cost (a task
wake-up and a timer each time the socket drains) is spared, and the CPU per byte is
that of asyncio's own sendfile.
"""

from __future__ import annotations

import asyncio
import os

from proxy.streaming.splice import ClientStalled


class FileEnded(Exception):
    """The file ended before the bytes to send."""


async def send_file(sock_fd: int, file_fd: int, offset: int, count: int, send_timeout: float | None) -> None:
    """Send ``count`` bytes of ``file_fd`` from ``offset`` to the non-blocking socket
    ``sock_fd``. ClientStalled when no byte goes out for ``send_timeout`` seconds
    (None: no limit); a ConnectionError when the client is gone."""
    sender = _Sender(asyncio.get_running_loop(), sock_fd, file_fd, offset, offset + count, send_timeout)
    try:
        await sender.done
    finally:
        sender.stop()


class _Sender:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock_fd: int,
        file_fd: int,
        offset: int,
        end: int,
        timeout: float | None,
    ) -> None:
        self._loop = loop
        self._sock_fd = sock_fd
        self._file_fd = file_fd
        self._offset = offset
        self._end = end
        self._timeout = timeout
        self.done: asyncio.Future[None] = loop.create_future()
        self._watchdog: asyncio.TimerHandle | None = None
        self._progress_at = loop.time()
        if offset >= end:
            self.done.set_result(None)
            return
        loop.add_writer(sock_fd, self._send)
        if timeout is not None:
            self._watchdog = loop.call_at(self._progress_at + timeout, self._look)

    def _send(self) -> None:
        try:
            sent = os.sendfile(self._sock_fd, self._file_fd, self._offset, self._end - self._offset)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(exc)
            return
        if not sent:
            self._finish(FileEnded(f"the file ended {self._end - self._offset} bytes early"))
            return
        self._offset += sent
        self._progress_at = self._loop.time()
        if self._offset == self._end:
            self._finish(None)

    def _look(self) -> None:
        assert self._timeout is not None
        if self._loop.time() - self._progress_at >= self._timeout:
            self._finish(ClientStalled(self._timeout))
        else:
            self._watchdog = self._loop.call_at(self._progress_at + self._timeout, self._look)

    def _finish(self, exc: BaseException | None) -> None:
        self.stop()
        if self.done.done():
            return
        if exc is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(exc)

    def stop(self) -> None:
        self._loop.remove_writer(self._sock_fd)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
