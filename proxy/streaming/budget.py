"""A process-wide budget of memory held for uploads.

A part buffer (part_buffer.PartBuffer) reserves each chunk as it arrives, never bytes
a client has not sent yet, and gives its reservation back once the part is stored.
A reservation the budget cannot grant at once is refused, not queued: the buffer
then moves to a temporary file. So memory stays within the budget whatever sizes
clients declare, and nobody waits on it: a client that stalls holds only what it
sent, and cannot keep others waiting.

Buffered bytes are not all an upload holds: each part on its way also costs its
request's buffers and S3 call, whether its bytes are in memory or in a file. That
fixed cost is charged too (``charge``), unconditionally, as it is held whatever the
budget says; it counts against what may still be buffered, so that with many uploads
running fewer bytes stay in memory instead of the process outgrowing the budget.
"""

from __future__ import annotations


class MemoryBudget:
    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError("budget must be positive")
        self.total = total
        self.in_use = 0  # bytes buffered in memory, as reserved by try_acquire
        self.charged = 0  # fixed costs held (charge), outside in_use
        self.peak = 0  # of in_use

    def try_acquire(self, n: int) -> bool:
        """Reserve ``n`` more bytes if they fit beside what is reserved and charged
        now; False (nothing reserved) if not."""
        if n < 0:
            raise ValueError("cannot reserve a negative number of bytes")
        if self.in_use + self.charged + n > self.total:
            return False
        self.in_use += n
        self.peak = max(self.peak, self.in_use)
        return True

    def release(self, n: int) -> None:
        if not 0 <= n <= self.in_use:
            raise ValueError(f"cannot release {n} of {self.in_use} bytes reserved")
        self.in_use -= n

    def charge(self, n: int) -> None:
        """Count ``n`` bytes of fixed cost, granted even past the total: they are
        held already; all the budget can do is buffer less beside them."""
        if n < 0:
            raise ValueError("cannot charge a negative number of bytes")
        self.charged += n

    def refund(self, n: int) -> None:
        if not 0 <= n <= self.charged:
            raise ValueError(f"cannot refund {n} of {self.charged} bytes charged")
        self.charged -= n
