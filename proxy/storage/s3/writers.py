"""Multipart uploads whose writer died: each process records the ones it starts, and
every process aborts those of processes that have ended.

A PUT larger than a part is a multipart upload (s3.put). The process that started it
aborts it on any failure, but one that dies (SIGKILL, a crash, a lost host) cannot,
and S3 keeps the parts, and bills them, forever. So each process is a *writer* with
records in the bucket, under storage.layout's ``writers/<writer>/``:

- ``alive``, written at start and rewritten every ``HEARTBEAT_SECONDS``;
- ``upload-<h>``, the key and upload id of one multipart upload, written right after
  CreateMultipartUpload and before any part, removed after Complete or Abort;
- ``staging-<uuid>``, an object a PUT assembled there and is publishing to its key
  (s3.publish); the PUT removes it, unless it dies first.

Every process sweeps at start and every ``SWEEP_SECONDS``: it lists ``writers/``,
and for each writer that has ended it aborts the uploads its records name, then
removes the records and the staging objects. A writer has ended when

- its ``alive`` is more than ``DEAD_AFTER_SECONDS`` old by the S3 server's clock
  (its Last-Modified against the listing's Date, so the proxies' clocks never
  matter), whatever host it ran on; or
- it ran on this kernel (same boot id) in this pid namespace (same inode of
  ``/proc/self/ns/pid``), and its pid is gone, a zombie, or a process started at
  another time (``/proc/<pid>/stat``). Known at once, so that a restart on the same
  machine clears what its predecessor left without waiting. Containers that share a
  host name but not a pid namespace never judge each other this way. The writer id
  carries these (``<nonce>.<boot id>.<pid ns>.<pid>.<start>``), so that the listing
  alone tells.

Records without ``alive`` (a sweep or close that stopped half-way) count as ended
once they are themselves ``DEAD_AFTER_SECONDS`` old.

Never touched: a multipart upload without a record (a resumable upload's, kept until
it finishes or expires; another program's), and the uploads of a writer that has not
ended. A writer that stalls so long that no heartbeat gets through for
``DEAD_AFTER_SECONDS`` may have its uploads aborted by another host; its next part
or Complete then fails and its client gets an error, as when S3 fails.

What can still be left: an upload whose process dies between CreateMultipartUpload
and writing its record (one S3 request's time), or whose record could not be
written. A bucket lifecycle rule ``AbortIncompleteMultipartUpload`` guards that.

S3 calls: per multipart upload one PutObject (the record, before the first part)
and one DeleteObject (after Complete or Abort); per process one PutObject
every ``HEARTBEAT_SECONDS`` and one ListObjectsV2 (per 1,000 records) every
``SWEEP_SECONDS``, and one DeleteObject at close; per upload of an ended writer a
GetObject, an AbortMultipartUpload and a DeleteObject, and a DeleteObject per
ended writer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from proxy.storage import layout
from proxy.storage.base import ObjectNotFound, StorageError, UpstreamError
from proxy.storage.periodic import every, stop
from proxy.storage.s3.errors import error_code, upstream

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0
DEAD_AFTER_SECONDS = 180.0  # six heartbeats missed
SWEEP_SECONDS = 300.0
# How long removing a record may take before it is left for a sweep.
RECORD_SECONDS = 10.0
_GONE_CODES = {"NoSuchUpload", "404"}


@dataclass(frozen=True)
class ProcessIdentity:
    """Which process a writer is, as precisely as another process on the same
    machine can check it."""

    boot_id: str  # this run of the kernel
    pid_ns: int  # the inode of the pid namespace
    pid: int
    start: int  # clock ticks from boot to the process's start

    @classmethod
    def current(cls) -> ProcessIdentity | None:
        """This process's, or None where /proc does not tell."""
        try:
            boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
            pid_ns = os.stat("/proc/self/ns/pid").st_ino
            _, start = _process_stat(os.getpid())
        except (OSError, ValueError, IndexError):
            return None
        return cls(boot_id, pid_ns, os.getpid(), start)

    def writer_id(self, nonce: str) -> str:
        return f"{nonce}.{self.boot_id}.{self.pid_ns}.{self.pid}.{self.start}"

    @classmethod
    def of_writer(cls, writer_id: str) -> ProcessIdentity | None:
        """The identity a writer id carries, if any."""
        parts = writer_id.split(".")
        if len(parts) != 5:
            return None
        try:
            return cls(parts[1], int(parts[2]), int(parts[3]), int(parts[4]))
        except ValueError:
            return None

    def has_ended(self, here: ProcessIdentity) -> bool:
        """Whether this process has certainly ended, as seen from ``here``: only when
        both share one kernel and pid namespace, where a pid names the same process
        for both; False when it cannot tell."""
        if (self.boot_id, self.pid_ns) != (here.boot_id, here.pid_ns):
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # it exists, another user's
        try:
            state, start = _process_stat(self.pid)
        except (OSError, ValueError, IndexError):
            return False  # gone meanwhile, or hidden (hidepid): the heartbeat will tell
        return start != self.start or state in ("Z", "X")


def _process_stat(pid: int) -> tuple[str, int]:
    """The state and start time (fields 3 and 22) of ``/proc/<pid>/stat``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return fields[0], int(fields[19])


@dataclass
class _Records:
    """One writer's objects as a listing found them, by Last-Modified."""

    alive: float | None = None
    uploads: dict[str, float] = field(default_factory=dict)  # record key -> Last-Modified
    staged: dict[str, float] = field(default_factory=dict)  # staging object key -> Last-Modified


class Writers:
    """This process as a writer: the records of its multipart uploads, its heartbeat,
    and the sweep that aborts the uploads of writers that have ended."""

    def __init__(
        self,
        bucket: str,
        *,
        heartbeat: float = HEARTBEAT_SECONDS,
        dead_after: float = DEAD_AFTER_SECONDS,
        sweep_every: float = SWEEP_SECONDS,
    ) -> None:
        self._bucket = bucket
        self._heartbeat = heartbeat
        self._dead_after = dead_after
        self._sweep_every = sweep_every
        self._here = ProcessIdentity.current()
        nonce = uuid.uuid4().hex[:16]
        self.writer_id = nonce if self._here is None else self._here.writer_id(nonce)
        self._client: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        # Uploads whose record may be in the bucket; while any is, close() keeps
        # ``alive`` so that the records are judged by it.
        self._recorded: set[str] = set()
        self._announced = False

    async def start(self, client: Any) -> None:
        """Begin the heartbeat and the sweeps, both at once and in the background: S3
        being down at start delays them, it does not stop the server."""
        self._client = client
        self._tasks = [
            asyncio.create_task(every(self._heartbeat, self._beat, "writer heartbeat")),
            asyncio.create_task(
                every(self._sweep_every, self.sweep, "sweep for multipart uploads of ended processes")
            ),
        ]

    async def close(self) -> None:
        """Stop the background work; with no upload left on record, remove ``alive``
        too, so that a clean stop leaves nothing behind."""
        for task in self._tasks:
            await stop(task)
        self._tasks = []
        if self._client is not None and not self._recorded:
            try:
                # Bounded: S3 being down must not hold up a shutdown; what is left is
                # swept as any ended writer's.
                async with asyncio.timeout(RECORD_SECONDS):
                    await self._delete(layout.writer_alive_key(self.writer_id))
            except (StorageError, TimeoutError) as exc:
                log.warning("could not remove this writer's heartbeat: %r", exc)
        self._client = None

    # -- this process's uploads ------------------------------------------------

    async def started(self, key: str, upload_id: str) -> None:
        """Record the multipart upload just created, before any part is sent."""
        if not self._announced:
            # A record is judged by its writer's heartbeat, which must be there first.
            await self._beat()
        self._recorded.add(upload_id)
        record = json.dumps({"key": key, "upload_id": upload_id}).encode()
        await self._put(layout.writer_upload_key(self.writer_id, upload_id), record)

    async def ended(self, upload_id: str) -> None:
        """The upload was completed or aborted: remove its record. Never raises a
        StorageError, as the upload's own outcome is what its caller reports."""
        try:
            # Bounded: a record left costs nothing, while the caller's answer waits.
            async with asyncio.timeout(RECORD_SECONDS):
                await self._delete(layout.writer_upload_key(self.writer_id, upload_id))
        except (StorageError, TimeoutError) as exc:
            # Harmless: once this process has ended, a sweep finds the upload gone.
            log.warning("could not remove the record of multipart upload %s: %r", upload_id, exc)
        else:
            self._recorded.discard(upload_id)

    async def _beat(self) -> None:
        alive = json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode()
        try:
            # Bounded: one stalled write must not let the heartbeat lapse.
            async with asyncio.timeout(self._heartbeat):
                await self._put(layout.writer_alive_key(self.writer_id), alive)
        except TimeoutError:
            raise UpstreamError("S3 did not take the heartbeat in time") from None
        self._announced = True

    # -- the sweep -------------------------------------------------------------

    async def sweep(self) -> int:
        """Abort the multipart uploads of every writer that has ended and remove its
        records; returns how many uploads were aborted."""
        writers, now = await self._list()
        aborted = 0
        for writer_id, records in writers.items():
            if writer_id == self.writer_id or not self._has_ended(writer_id, records, now):
                continue
            try:
                aborted += await self._clear(writer_id, records)
            except StorageError as exc:
                # The others still get swept; this one is tried again next time.
                log.warning("could not clear the uploads of ended writer %s: %s", writer_id, exc)
        return aborted

    def _has_ended(self, writer_id: str, records: _Records, now: float) -> bool:
        if records.alive is None:
            modified = [*records.uploads.values(), *records.staged.values()]
            return all(now - at > self._dead_after for at in modified)
        if now - records.alive > self._dead_after:
            return True
        there = ProcessIdentity.of_writer(writer_id)
        return self._here is not None and there is not None and there.has_ended(self._here)

    async def _clear(self, writer_id: str, records: _Records) -> int:
        aborted = 0
        for record_key in records.uploads:
            named = await self._read_record(record_key)
            if named is not None:
                key, upload_id = named
                await self._abort(key, upload_id)
                aborted += 1
                log.info(
                    "aborted multipart upload %s of %s left by ended writer %s", upload_id, key, writer_id
                )
            await self._delete(record_key)
        for staged_key in records.staged:
            await self._delete(staged_key)
            log.info("removed %s, left by ended writer %s", staged_key, writer_id)
        if records.alive is not None:
            await self._delete(layout.writer_alive_key(writer_id))
        return aborted

    async def _list(self) -> tuple[dict[str, _Records], float]:
        """Every writer's records, and the S3 server's time of the listing."""
        writers: dict[str, _Records] = {}
        now: float | None = None
        args: dict[str, Any] = {"Bucket": self._bucket, "Prefix": layout.WRITERS}
        while True:
            page = await upstream(self._client.list_objects_v2(**args))
            if now is None:
                now = _server_time(page)
            for item in page.get("Contents", []):
                writer_id, _, name = item["Key"].removeprefix(layout.WRITERS).partition("/")
                records = writers.setdefault(writer_id, _Records())
                modified = item["LastModified"].timestamp()
                if name == layout.WRITER_ALIVE:
                    records.alive = modified
                elif name.startswith(layout.WRITER_UPLOAD):
                    records.uploads[item["Key"]] = modified
                elif name.startswith(layout.WRITER_STAGING):
                    records.staged[item["Key"]] = modified
            if not page.get("IsTruncated"):
                return writers, now
            args["ContinuationToken"] = page["NextContinuationToken"]

    async def _read_record(self, record_key: str) -> tuple[str, str] | None:
        """The key and upload id a record names; None if it is gone or unreadable."""
        try:
            response = await upstream(
                self._client.get_object(Bucket=self._bucket, Key=record_key), key=record_key
            )
            stream = response["Body"]
            try:
                data = await upstream(stream.read())
            finally:
                stream.close()
        except ObjectNotFound:
            return None  # another process swept it meanwhile
        try:
            record = json.loads(data)
            return str(record["key"]), str(record["upload_id"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s does not name a multipart upload; removed", record_key)
            return None

    # -- S3 calls --------------------------------------------------------------

    async def _put(self, key: str, data: bytes) -> None:
        await upstream(
            self._client.put_object(Bucket=self._bucket, Key=key, Body=data, ContentType="application/json")
        )

    async def _delete(self, key: str) -> None:
        await upstream(self._client.delete_object(Bucket=self._bucket, Key=key))

    async def _abort(self, key: str, upload_id: str) -> None:
        """Abort the upload; one already gone (completed or aborted) counts as aborted."""
        call = self._client.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id)
        await upstream(_unless_gone(call))


async def _unless_gone(call: Awaitable[Any]) -> None:
    try:
        await call
    except ClientError as exc:
        if error_code(exc) not in _GONE_CODES:
            raise


def _server_time(response: dict[str, Any]) -> float:
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    return parsedate_to_datetime(date).timestamp() if date else time.time()
