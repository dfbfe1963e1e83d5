"""An in-memory job store with the same semantics as the real ones, for the contract
suite and tests of the runner. Stores built over one MemoryJobs share its jobs, as
processes share a directory or bucket; a claim's lease runs on the event loop's
clock and lapses ``lease`` seconds after its last renewal (after close(), say).
"""

from __future__ import annotations

import asyncio
import time

from proxy.jobs import records
from proxy.jobs.base import RUNNING, ClaimLost, Job, JobNotFound
from proxy.jobs.claims import HeldClaim
from proxy.jobs.records import Record


class MemoryJobs:
    """What the stores over it share: records, queue entries and lease deadlines."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self.queue: dict[str, float] = {}  # key -> when queued (the order of claims)
        self.deadlines: dict[str, float] = {}  # key -> loop time its lease runs out


class MemoryClaim(HeldClaim):
    def __init__(self, jobs: MemoryJobs, record: Record, previous: str | None, lease: float) -> None:
        super().__init__(record, previous, lease)
        self._jobs = jobs

    def _ours(self) -> None:
        if not records.same_claim(self._jobs.records.get(self.job.key), self.record):
            raise ClaimLost(f"job {self.job.key!r} was re-queued, removed or taken over")

    async def _write(self, record: Record) -> None:
        await asyncio.sleep(0)
        self._ours()
        self._jobs.records[record.job.key] = record

    async def _end(self, record: Record) -> None:
        await self._write(record)
        self._jobs.queue.pop(record.job.key, None)
        self._jobs.deadlines.pop(record.job.key, None)

    async def _give_back(self, record: Record) -> None:
        await self._write(record)
        self._jobs.deadlines.pop(record.job.key, None)

    def _let_go(self) -> None:
        pass  # nothing held in this process: the lease lapses or was cleared

    async def _renew(self) -> None:
        await asyncio.sleep(0)
        self._ours()
        self._jobs.deadlines[self.job.key] = asyncio.get_running_loop().time() + self._lease


class MemoryJobStore:
    def __init__(self, jobs: MemoryJobs | None = None, lease: float = 30.0) -> None:
        self.jobs = jobs if jobs is not None else MemoryJobs()
        self._lease = lease
        self._held: set[MemoryClaim] = set()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        for claim in list(self._held):
            await claim.abandon()
        self._held.clear()

    async def enqueue(self, key: str, source_etag: str) -> Job:
        await asyncio.sleep(0)
        record = records.enqueued(self.jobs.records.get(key), key, source_etag, time.time())
        self.jobs.records[key] = record
        self.jobs.queue.pop(key, None)
        self.jobs.queue[key] = time.time()
        self.jobs.deadlines.pop(key, None)
        return record.job

    async def get(self, key: str) -> Job:
        await asyncio.sleep(0)
        record = self.jobs.records.get(key)
        if record is None:
            raise JobNotFound(key)
        return record.job

    async def remove(self, key: str) -> Job | None:
        await asyncio.sleep(0)
        self.jobs.queue.pop(key, None)
        self.jobs.deadlines.pop(key, None)
        record = self.jobs.records.pop(key, None)
        return None if record is None else record.job

    async def claim(self) -> MemoryClaim | None:
        await asyncio.sleep(0)
        now = asyncio.get_running_loop().time()
        self._held = {c for c in self._held if not c.over}
        for key in sorted(self.jobs.queue, key=self.jobs.queue.__getitem__):
            record = self.jobs.records.get(key)
            if record is None or not record.active:
                self.jobs.queue.pop(key, None)
                continue
            if record.job.state == RUNNING and now < self.jobs.deadlines.get(key, 0.0):
                continue
            lease = {"holder": records.new_id(), "seconds": self._lease, "nonce": records.new_id()}
            new, previous = records.claimed(record, time.time(), lease)
            self.jobs.records[key] = new
            self.jobs.deadlines[key] = now + self._lease
            claim = MemoryClaim(self.jobs, new, previous, self._lease)
            claim.start_renewing()
            self._held.add(claim)
            return claim
        return None
