"""A process-wide budget of bytes buffered for uploads.

Uploads reserve a part's worth of bytes before they read it from the client and give
it back once the part is stored. When the budget is spent, ``acquire`` waits, the
upload stops reading, and TCP flow control pushes back on the client: memory stays
bounded however many uploads run. Waiters are served first come, first served, so a
large reservation is not starved by small ones.
"""

from __future__ import annotations

import asyncio
from collections import deque


class MemoryBudget:
    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError("budget must be positive")
        self.total = total
        self.in_use = 0
        self.peak = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def clamp(self, n: int) -> int:
        """A reservation can never exceed the whole budget, or it would wait forever."""
        return min(n, self.total)

    async def acquire(self, n: int) -> int:
        """Reserve ``n`` bytes (clamped); returns the amount to hand back to release()."""
        if n < 0:
            raise ValueError("cannot reserve a negative number of bytes")
        n = self.clamp(n)
        if not self._waiters and self.in_use + n <= self.total:
            self._take(n)
            return n
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                # Granted just as we were cancelled: hand it back.
                self.release(n)
            else:
                self._waiters.remove(entry)
                self._wake()
            raise
        return n

    def release(self, n: int) -> None:
        self.in_use -= n
        self._wake()

    def _take(self, n: int) -> None:
        self.in_use += n
        self.peak = max(self.peak, self.in_use)

    def _wake(self) -> None:
        while self._waiters:
            n, fut = self._waiters[0]
            if self.in_use + n > self.total:
                return
            self._waiters.popleft()
            self._take(n)
            fut.set_result(None)
