"""File-system calls run on the event loop while they are quick, in threads once they
are not.

Handing a call to a worker thread and back costs a serving process 0.3-0.45 ms of
CPU (measured on a 1 KiB range request, which fell from ~1.3 to ~0.9 ms when its
open ran inline): more than opening a file whose directory entries and inode are
cached, which takes microseconds. A disk that stalls (NFS, a failing drive) would
stall every request on the loop with it, though. So calls run inline while they are
quick; ``in_a_row`` calls in a row that take longer than ``slow`` seconds (wall
time) send the calls after them to threads for ``back_off`` seconds, and then
inline is tried again. (The bytes of a download are read on the loop anyway, by
sendfile, as nginx reads them: a disk slow to give them is slow for every way of
sending them.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# A cached open takes microseconds and a disk seek milliseconds; a call can also
# take a few milliseconds when the loop's thread is preempted by another process
# (measured on a busy 2-core machine: 2-3 ms now and then), which is no slow disk.
# And a process's first calls are slower (cold caches), so one slow call in a row is
# taken for chance.
SLOW = 0.010  # seconds
IN_A_ROW = 2
BACK_OFF = 10.0  # seconds in threads after slow calls


class QuickCalls:
    def __init__(self, *, slow: float = SLOW, back_off: float = BACK_OFF, in_a_row: int = IN_A_ROW) -> None:
        self._slow = slow
        self._back_off = back_off
        self._in_a_row = in_a_row
        self._slow_calls = 0  # slow calls in a row, on the loop
        self._threads_until = -1.0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        started = time.monotonic()
        if started < self._threads_until:
            return await asyncio.to_thread(fn, *args)
        try:
            return fn(*args)
        finally:
            took = time.monotonic() - started
            self._slow_calls = self._slow_calls + 1 if took > self._slow else 0
            if self._slow_calls >= self._in_a_row:
                self._slow_calls = 0
                self._threads_until = started + took + self._back_off
                log.info(
                    "file system calls took up to %.1f ms: they run in threads for the next %g s",
                    took * 1000,
                    self._back_off,
                )
