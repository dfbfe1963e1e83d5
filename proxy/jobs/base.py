"""The durable job queue's interface: a job per source object, and the claims that
run them.

A job is identified by its key (the source object's key) and kept in the backend
(layout.JOBS), never only in memory. ``enqueue`` starts a new *generation*; a
process ``claim``s a queued job (or a running one whose holder is gone), which
writes it ``running`` with a fresh attempt id, and ends the claim with ``done`` or
``failed``. While the claim is held the store keeps it alive (an S3 lease renewed
every lease/3, or a file lock locally); a holder whose job was re-queued, removed or
taken over finds out at its next write (ClaimLost) or from ``lost()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from proxy.storage.base import StorageError

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
STATES = (QUEUED, RUNNING, DONE, FAILED)


@dataclass(frozen=True)
class Job:
    key: str  # the source object's key (the job's identity)
    source_etag: str
    state: str  # "queued" | "running" | "done" | "failed"
    progress: float  # 0..100
    reason: str | None  # when failed
    result: dict[str, Any]  # what the work recorded; {} when queued
    attempt: str | None  # id of the current (running) or last attempt
    attempts: int  # how many attempts were started for this generation
    generation: str  # new at every enqueue
    created: float
    updated: float


class JobNotFound(StorageError):
    """There is no job for this key."""


class ClaimLost(Exception):
    """The job was re-queued, removed, or taken over: this claim may write no more."""


class Claim(Protocol):
    job: Job  # state "running", a fresh attempt id
    previous_attempt: str | None  # the attempt this claim took over from (its outputs are stray)

    async def report(self, progress: float, result: dict[str, Any] | None = None) -> None: ...

    async def done(self, result: dict[str, Any]) -> Job: ...

    async def failed(self, reason: str, result: dict[str, Any] | None = None) -> Job: ...

    async def release(self) -> None: ...

    def lost(self) -> bool: ...


class JobStore(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def enqueue(self, key: str, source_etag: str) -> Job: ...

    async def get(self, key: str) -> Job: ...

    async def remove(self, key: str) -> Job | None: ...

    async def claim(self) -> Claim | None: ...
