"""The job queue in the bucket (layout.JOBS), shared by every process on every host
that uses it.

Records are written only conditionally, as tus states are (s3.resumable.records):
the first with ``If-None-Match: *``, every other with ``If-Match`` on the ETag the
writer read, and a write whose answer was lost is recognised by reading it back
(every write carries a fresh nonce). Of two processes claiming one job from the same
version, one write wins and the other claims nothing: each job is claimed once.

A claim writes the record ``running`` with a lease (holder, seconds, nonce) and
rewrites it every lease/3 while held, exactly like tus's Lease
(s3.resumable.lease): others may take it over once ``seconds + 1`` have passed since
its Last-Modified, by the S3 server's clock (lease_lapsed), and the holder counts
its lease from when it sent its last successful write, so it knows it may have lost
(lost()) no later than anyone may take over. An enqueue or remove by anyone changes
the record's ETag, so the holder's next write fails its If-Match: ClaimLost.

Queue entries: enqueue writes the entry, then the record, then makes sure the entry
is still there; whoever deletes an entry (a claim ending, a scan finding a finished
record) reads the record afterwards and puts the entry back if it is queued or
running again. So a queued record never stays without its entry, whatever the
interleaving; a crash may leave an entry too many, which a later scan removes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

from proxy.jobs import records
from proxy.jobs.base import RUNNING, ClaimLost, Job, JobNotFound
from proxy.jobs.claims import HeldClaim
from proxy.jobs.records import Record
from proxy.storage import layout
from proxy.storage.base import ObjectNotFound, UpstreamError
from proxy.storage.s3.conditional import StateChanged, read_record, write_record
from proxy.storage.s3.errors import upstream
from proxy.storage.s3.objects import S3Storage
from proxy.storage.s3.resumable.lease import lease_lapsed

# How often enqueue re-reads and retries when others keep changing the record.
ENQUEUE_TRIES = 10


class _Bucket:
    """The calls the store makes, on one S3Storage's client."""

    def __init__(self, storage: S3Storage) -> None:
        self._storage = storage

    @property
    def _client(self) -> Any:
        return self._storage.client

    @property
    def _name(self) -> str:
        return self._storage.bucket

    async def read(self, object_key: str) -> tuple[Record, str, dict[str, Any]] | None:
        """The record, its ETag and the GetObject answer (its dates time a lease)."""
        found = await read_record(self._client, self._name, object_key)
        if found is None:
            return None
        data, etag, response = found
        return Record.from_json(data), etag, response

    async def write(self, record: Record, if_match: str | None) -> str:
        """Write ``record`` if the stored one is still ``if_match`` (None: if there is
        none); its new ETag, or StateChanged."""
        key = layout.job_record_key(record.job.key)
        return await write_record(self._client, self._name, key, record.to_json(), if_match=if_match)

    async def delete(self, object_key: str) -> None:
        await upstream(self._client.delete_object(Bucket=self._name, Key=object_key))

    async def put_entry(self, key: str) -> None:
        await upstream(self._client.put_object(Bucket=self._name, Key=layout.job_queue_key(key), Body=b""))

    async def has_entry(self, key: str) -> bool:
        entry = layout.job_queue_key(key)
        try:
            await upstream(self._client.head_object(Bucket=self._name, Key=entry), key=entry)
        except ObjectNotFound:
            return False
        return True

    async def drop_entry(self, digest: str) -> None:
        """Delete the queue entry named ``digest`` (layout.job_digest), then put it back
        if the job's record is (again) queued or running: an enqueue may have written
        it between our last read and the delete."""
        await self.delete(layout.JOB_QUEUE + digest)
        again = await self.read(layout.job_record_key_of(digest))
        if again is not None and again[0].active:
            await self.put_entry(again[0].job.key)

    async def entries(self) -> list[str]:
        """The digests of queued and running jobs, the longest queued first."""
        found: list[tuple[Any, str]] = []
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self._name, "Prefix": layout.JOB_QUEUE}
            if token is not None:
                args["ContinuationToken"] = token
            page = await upstream(self._client.list_objects_v2(**args))
            for item in page.get("Contents", []):
                found.append((item["LastModified"], item["Key"].removeprefix(layout.JOB_QUEUE)))
            if not page.get("IsTruncated"):
                break
            token = page["NextContinuationToken"]
        return [digest for _, digest in sorted(found)]


class S3Claim(HeldClaim):
    def __init__(
        self, bucket: _Bucket, record: Record, previous: str | None, lease: float, etag: str, sent: float
    ) -> None:
        super().__init__(record, previous, lease)
        self._bucket = bucket
        self._etag = etag
        self._deadline = sent + lease  # event loop time at which our lease may have run out

    def _expired(self) -> bool:
        return asyncio.get_running_loop().time() >= self._deadline

    async def _write(self, record: Record) -> None:
        sent = asyncio.get_running_loop().time()
        try:
            self._etag = await self._bucket.write(record, self._etag)
        except StateChanged:
            raise ClaimLost(f"job {self.job.key!r} was re-queued, removed or taken over") from None
        self._deadline = sent + self._lease

    async def _end(self, record: Record) -> None:
        await self._write(record)
        await self._bucket.drop_entry(layout.job_digest(record.job.key))

    async def _give_back(self, record: Record) -> None:
        await self._write(record)

    async def _renew(self) -> None:
        await self._write(replace(self.record, nonce=records.new_id()))

    def _let_go(self) -> None:
        pass  # nothing held here: the record says whether the lease is alive


class S3JobStore:
    def __init__(self, storage: S3Storage, lease: float = 30.0) -> None:
        self._bucket = _Bucket(storage)
        self._lease = lease
        self._holder = records.new_id()  # this store, in the leases it writes
        self._held: set[S3Claim] = set()

    async def start(self) -> None:
        pass  # the storage is started by its owner

    async def close(self) -> None:
        # Claims still held are left to lapse, as a process that died leaves them.
        for claim in list(self._held):
            await claim.abandon()
        self._held.clear()

    async def enqueue(self, key: str, source_etag: str) -> Job:
        await self._bucket.put_entry(key)
        object_key = layout.job_record_key(key)
        for _ in range(ENQUEUE_TRIES):
            stored = await self._bucket.read(object_key)
            record = records.enqueued(stored[0] if stored else None, key, source_etag, time.time())
            try:
                await self._bucket.write(record, stored[1] if stored else None)
            except StateChanged:
                continue
            # A claim ending may have deleted the entry between our two writes.
            if not await self._bucket.has_entry(key):
                await self._bucket.put_entry(key)
            return record.job
        raise UpstreamError(f"job {key!r}: its record kept changing")

    async def get(self, key: str) -> Job:
        stored = await self._bucket.read(layout.job_record_key(key))
        if stored is None:
            raise JobNotFound(key)
        return stored[0].job

    async def remove(self, key: str) -> Job | None:
        # The entry first: an enqueue racing with this one then either ends after the
        # record's delete (both gone) or puts its entry back (both there).
        await self._bucket.delete(layout.job_queue_key(key))
        object_key = layout.job_record_key(key)
        stored = await self._bucket.read(object_key)
        await self._bucket.delete(object_key)
        return None if stored is None else stored[0].job

    async def claim(self) -> S3Claim | None:
        self._held = {c for c in self._held if not c.over}
        for digest in await self._bucket.entries():
            stored = await self._bucket.read(layout.job_record_key_of(digest))
            if stored is None or not stored[0].active:
                await self._bucket.drop_entry(digest)  # left by a crash, or a remove racing us
                continue
            record, etag, response = stored
            lease = record.lease
            if (
                record.job.state == RUNNING
                and lease is not None
                and not lease_lapsed(response, float(lease["seconds"]))
            ):
                continue
            ours = {"holder": self._holder, "seconds": self._lease, "nonce": records.new_id()}
            new, previous = records.claimed(record, time.time(), ours)
            sent = asyncio.get_running_loop().time()
            try:
                new_etag = await self._bucket.write(new, etag)
            except StateChanged:
                continue  # another process claimed it first, or it was re-queued
            claim = S3Claim(self._bucket, new, previous, self._lease, new_etag, sent)
            claim.start_renewing()
            self._held.add(claim)
            return claim
        return None
