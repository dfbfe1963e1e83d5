"""A process-wide budget of bytes buffered in memory for uploads.

A part buffer (part_buffer.PartBuffer) reserves each chunk as it arrives, never bytes
a client has not sent yet, and gives its reservation back once the part is stored.
A reservation the budget cannot grant at once is refused, not queued: the buffer
then moves to a temporary file. So memory stays within the budget whatever sizes
clients declare, and nobody waits on it: a client that stalls holds only what it
sent, and cannot keep others waiting.
"""

from __future__ import annotations


class MemoryBudget:
    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError("budget must be positive")
        self.total = total
        self.in_use = 0
        self.peak = 0

    def try_acquire(self, n: int) -> bool:
        """Reserve ``n`` more bytes if they fit now; False (nothing reserved) if not."""
        if n < 0:
            raise ValueError("cannot reserve a negative number of bytes")
        if self.in_use + n > self.total:
            return False
        self.in_use += n
        self.peak = max(self.peak, self.in_use)
        return True

    def release(self, n: int) -> None:
        if not 0 <= n <= self.in_use:
            raise ValueError(f"cannot release {n} of {self.in_use} bytes reserved")
        self.in_use -= n
