"""A job's stored record and its transitions: pure, shared by every store.

The record is the Job plus what only the stores need: ``stray``, an attempt whose
outputs may be half-made (released, or re-queued while it ran), which the next
claim names as its previous attempt so that its worker removes them; ``lease``, on
S3 the claim's holder, seconds and nonce; and ``nonce``, fresh at every write, so
that no two writes are byte-identical and a write whose answer was lost can be
recognised as ours by reading it back (s3.resumable.records does the same).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any

from proxy.jobs.base import DONE, FAILED, QUEUED, RUNNING, STATES, Job
from proxy.storage.base import UpstreamError


@dataclass(frozen=True)
class Record:
    job: Job
    stray: str | None = None
    lease: dict[str, Any] | None = None
    nonce: str = ""

    def to_json(self) -> bytes:
        body = {"job": asdict(self.job), "stray": self.stray, "lease": self.lease, "nonce": self.nonce}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Record:
        try:
            body = json.loads(data)
            job = Job(**body["job"])
            if job.state not in STATES:
                raise ValueError(job.state)
            return cls(job, body.get("stray"), body.get("lease"), str(body.get("nonce", "")))
        except (ValueError, TypeError, KeyError) as exc:
            # Written only by this module: garbage means the storage is damaged.
            raise UpstreamError(f"unreadable job record: {exc}") from exc

    @property
    def active(self) -> bool:
        """Queued or running: the job has a queue entry and may be claimed."""
        return self.job.state in (QUEUED, RUNNING)


def new_id() -> str:
    return uuid.uuid4().hex


def enqueued(previous: Record | None, key: str, source_etag: str, now: float) -> Record:
    """A new generation of ``key``, replacing ``previous``."""
    stray = None
    if previous is not None:
        stray = previous.job.attempt if previous.job.state == RUNNING else previous.stray
    job = Job(key, source_etag, QUEUED, 0.0, None, {}, None, 0, new_id(), now, now)
    return Record(job, stray, None, new_id())


def claimed(record: Record, now: float, lease: dict[str, Any] | None = None) -> tuple[Record, str | None]:
    """``record`` claimed by a fresh attempt, and the attempt it takes over from."""
    previous = record.job.attempt if record.job.state == RUNNING else record.stray
    job = replace(
        record.job,
        state=RUNNING,
        progress=0.0,
        reason=None,
        result={},
        attempt=new_id(),
        attempts=record.job.attempts + 1,
        updated=now,
    )
    return Record(job, previous, lease, new_id()), previous


def reported(record: Record, progress: float, result: dict[str, Any] | None, now: float) -> Record:
    job = replace(
        record.job,
        progress=min(100.0, max(0.0, float(progress))),
        result=record.job.result if result is None else dict(result),
        updated=now,
    )
    return replace(record, job=job, nonce=new_id())


def finished(record: Record, reason: str | None, result: dict[str, Any] | None, now: float) -> Record:
    """Done (``reason`` None) or failed; the claimant removed any stray outputs."""
    job = replace(
        record.job,
        state=DONE if reason is None else FAILED,
        progress=100.0 if reason is None else record.job.progress,
        reason=reason,
        result=record.job.result if result is None else dict(result),
        updated=now,
    )
    return Record(job, None, None, new_id())


def released(record: Record, now: float) -> Record:
    """Given back unfinished: queued again, its attempt's outputs stray."""
    job = replace(record.job, state=QUEUED, progress=0.0, result={}, updated=now)
    return Record(job, record.job.attempt, None, new_id())


def same_claim(stored: Record | None, held: Record) -> bool:
    """Whether ``stored`` is still the running attempt ``held`` describes."""
    return (
        stored is not None
        and stored.job.state == RUNNING
        and stored.job.generation == held.job.generation
        and stored.job.attempt == held.job.attempt
    )
