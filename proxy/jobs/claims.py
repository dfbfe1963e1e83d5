"""What every store's claim shares: one write at a time, renewal every lease/3 while
it is held, and knowing when it is lost. A store supplies how a record is written
under the claim (_write), how the claim ends (_end, _give_back), how it is kept
alive (_renew) and what is let go when the claim is over (_let_go).
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from typing import Any

from proxy.jobs import records
from proxy.jobs.base import ClaimLost, Job
from proxy.jobs.records import Record
from proxy.storage.base import StorageError

log = logging.getLogger(__name__)


class HeldClaim(ABC):
    def __init__(self, record: Record, previous_attempt: str | None, lease: float) -> None:
        self.record = record
        self.job: Job = record.job
        self.previous_attempt = previous_attempt
        self._lease = lease
        self._lost = False
        self._over = False  # ended, released or abandoned: nothing more is written
        # Serialises writes (reports, renewals, the end): each needs the last version.
        self._mutex = asyncio.Lock()
        self._renewer: asyncio.Task[None] | None = None

    # What a store supplies

    @abstractmethod
    async def _write(self, record: Record) -> None:
        """Store ``record`` if the stored one is still this claim's; else ClaimLost."""

    @abstractmethod
    async def _end(self, record: Record) -> None:
        """Store the finished ``record`` and remove the job's queue entry; ClaimLost."""

    @abstractmethod
    async def _give_back(self, record: Record) -> None:
        """Store the queued ``record`` if still ours (else nothing), keeping the entry."""

    @abstractmethod
    async def _renew(self) -> None:
        """Keep the claim alive, or ClaimLost if it is not ours any more."""

    def _expired(self) -> bool:
        """Whether the claim may have been taken over without our knowing (S3)."""
        return False

    @abstractmethod
    def _let_go(self) -> None:
        """Free what holds the claim in this process (locally: the run lock)."""

    # The Claim protocol

    @property
    def over(self) -> bool:
        """Ended, released, abandoned or lost: the store need not keep it."""
        return self._over or self.lost()

    def lost(self) -> bool:
        if not self._lost and self._expired():
            self._lost = True
        return self._lost

    def start_renewing(self) -> None:
        self._renewer = asyncio.create_task(self._renew_forever())

    async def report(self, progress: float, result: dict[str, Any] | None = None) -> None:
        async with self._mutex:
            await self._save(records.reported(self.record, progress, result, time.time()))

    async def done(self, result: dict[str, Any]) -> Job:
        return await self._finish(records.finished(self.record, None, result, time.time()))

    async def failed(self, reason: str, result: dict[str, Any] | None = None) -> Job:
        return await self._finish(records.finished(self.record, reason, result, time.time()))

    async def release(self) -> None:
        async with self._mutex:
            await self._stop_renewing()
            if self._over:
                return
            self._over = True
            try:
                if not self.lost():
                    await self._give_back(records.released(self.record, time.time()))
            except (StorageError, ClaimLost) as exc:
                log.warning("could not give back job %r (it is taken over later): %s", self.job.key, exc)
            finally:
                self._let_go()

    async def abandon(self) -> None:
        """Stop without writing anything, as if the process had died (store close)."""
        await self._stop_renewing()
        if not self._over:
            self._over = True
            self._lost = True
            self._let_go()

    # Inside

    def _check(self) -> None:
        if self._over or self.lost():
            raise ClaimLost(f"job {self.job.key!r}: this claim is over")

    async def _save(self, record: Record) -> None:
        self._check()
        try:
            await self._write(record)
        except ClaimLost:
            self._lost = True
            raise
        self.record, self.job = record, record.job

    async def _finish(self, record: Record) -> Job:
        async with self._mutex:
            await self._stop_renewing()
            try:
                self._check()
                await self._end(record)
                self.record, self.job = record, record.job
                return record.job
            except ClaimLost:
                self._lost = True
                raise
            finally:
                # A storage error leaves the claim to lapse; another takes it over.
                self._over = True
                self._let_go()

    async def _stop_renewing(self) -> None:
        # Called holding the mutex: the renewer sleeps or waits for it, never writes.
        if self._renewer is not None and self._renewer is not asyncio.current_task():
            self._renewer.cancel()
            await asyncio.wait([self._renewer])
            self._renewer = None

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            async with self._mutex:
                if self._over or self.lost():
                    return
                try:
                    await self._renew()
                except ClaimLost:
                    self._lost = True
                    log.warning("lost the claim on job %r", self.job.key)
                    return
                except StorageError as exc:
                    # Try again: the lease lasts three renewals, and lost() turns
                    # true once it may have run out.
                    log.warning("could not renew the claim on job %r: %s", self.job.key, exc)
