"""Records of the multipart uploads each process starts, and the sweep that aborts
those of processes that have ended (proxy/storage/s3/writers.py), on moto and RGW."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from proxy.storage import layout
from proxy.storage.s3.objects import S3Storage
from proxy.storage.s3.writers import ProcessIdentity, Writers
from tests.conftest import MiB, S3Endpoint, S3View, s3_config, wait_until

PART = 5 * MiB


@pytest.fixture(params=["moto", pytest.param("rgw", marks=pytest.mark.real_s3)])
def place(request: pytest.FixtureRequest) -> tuple[S3Endpoint, str]:
    """An S3 server and an empty bucket on it."""
    moto = request.param == "moto"
    endpoint: S3Endpoint = request.getfixturevalue("moto_endpoint" if moto else "real_s3")
    bucket: str = request.getfixturevalue("moto_bucket" if moto else "real_bucket")
    return endpoint, bucket


@pytest.fixture
def view(place: tuple[S3Endpoint, str]) -> S3View:
    return S3View(*place)


@pytest.fixture
async def storage(place: tuple[S3Endpoint, str]) -> AsyncIterator[S3Storage]:
    storage = S3Storage(s3_config(*place, part_size=PART))
    await storage.start()
    try:
        yield storage
    finally:
        await storage.close()


def records_of(view: S3View, writer_id: str) -> list[str]:
    prefix = layout.writer_prefix(writer_id)
    return [k.removeprefix(prefix) for k in view.all_keys() if k.startswith(prefix)]


def multipart_uploads(view: S3View) -> dict[str, str]:
    """upload id -> key of every multipart upload in the bucket."""
    uploads = view.client.list_multipart_uploads(Bucket=view.bucket).get("Uploads", [])
    return {u["UploadId"]: u["Key"] for u in uploads}


def plant(view: S3View, writer_id: str, key: str, *, alive: bool = True) -> str:
    """A multipart upload with a part, on record for ``writer_id`` as writers.py
    records it (the key and upload id, and a heartbeat); returns the upload id."""
    client, bucket = view.client, view.bucket
    upload_id: str = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=os.urandom(1024))
    record = json.dumps({"key": key, "upload_id": upload_id}).encode()
    client.put_object(Bucket=bucket, Key=layout.writer_upload_key(writer_id, upload_id), Body=record)
    # The heartbeat last (a writer writes it first): a sweep running meanwhile finds
    # either both or a young record alone, which it leaves.
    if alive:
        client.put_object(Bucket=bucket, Key=layout.writer_alive_key(writer_id), Body=b"{}")
    return upload_id


def ended_process() -> tuple[int, int]:
    """The pid and start time of a process of ours that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    start = _start_of(child.pid)
    child.kill()
    child.wait()
    return child.pid, start


def _start_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[19])


def here() -> ProcessIdentity:
    identity = ProcessIdentity.current()
    assert identity is not None, "/proc tells this process's identity on Linux"
    return identity


# -- this process's records ---------------------------------------------------------


async def test_a_multipart_upload_is_on_record_while_it_runs(storage: S3Storage, view: S3View) -> None:
    gate = asyncio.Event()
    data = os.urandom(PART + MiB)

    async def body() -> AsyncIterator[bytes]:
        yield data[: PART + 1]
        await gate.wait()
        yield data[PART + 1 :]

    writer_id = storage.writers.writer_id
    upload = asyncio.create_task(storage.write("v/recorded.mp4", body(), content_type="video/mp4"))
    try:
        await wait_until(lambda: len(records_of(view, writer_id)) == 2, 30)
        [upload_id] = multipart_uploads(view)
        assert sorted(records_of(view, writer_id)) == sorted(
            [layout.WRITER_ALIVE, layout.writer_upload_key(writer_id, upload_id).rsplit("/", 1)[1]]
        )
    finally:
        gate.set()
    await upload
    # Removed before the answer: nothing of the upload is left once it is told.
    assert records_of(view, writer_id) == [layout.WRITER_ALIVE]
    assert view.leftovers() == [] and view.get("v/recorded.mp4") == data


async def test_a_small_upload_needs_no_record_and_a_clean_stop_leaves_nothing(
    storage: S3Storage, view: S3View
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"small"

    await storage.write("v/small.txt", body(), content_type=None)
    writer_id = storage.writers.writer_id
    await wait_until(lambda: records_of(view, writer_id) == [layout.WRITER_ALIVE], 30)
    await storage.close()
    assert [k for k in view.all_keys() if k.startswith(layout.WRITERS)] == []


async def test_an_aborted_upload_loses_its_record(storage: S3Storage, view: S3View) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield os.urandom(PART + 1)
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await storage.write("v/cut.mp4", body(), content_type=None)
    assert multipart_uploads(view) == {}
    assert records_of(view, storage.writers.writer_id) == [layout.WRITER_ALIVE]


# -- the sweep ----------------------------------------------------------------------


async def test_a_writer_that_ended_on_this_machine_is_swept_at_once(storage: S3Storage, view: S3View) -> None:
    pid, start = ended_process()
    dead = replace(here(), pid=pid, start=start).writer_id("dead")
    # Another process here, pid alive with its start time: never touched.
    live = here().writer_id("live")
    dead_upload = plant(view, dead, "v/dead.mp4")
    live_upload = plant(view, live, "v/live.mp4")
    # Not on record: a resumable upload's, or another program's.
    unrecorded = view.client.create_multipart_upload(Bucket=view.bucket, Key="v/tus.mp4")["UploadId"]

    await storage.writers.sweep()
    assert multipart_uploads(view) == {live_upload: "v/live.mp4", unrecorded: "v/tus.mp4"}
    assert records_of(view, dead) == []
    assert len(records_of(view, live)) == 2
    assert dead_upload not in multipart_uploads(view)


async def test_a_reused_pid_is_a_writer_that_ended(storage: S3Storage, view: S3View) -> None:
    me = here()
    reused = replace(me, start=me.start - 1).writer_id("earlier")  # this pid, another process's start
    plant(view, reused, "v/reused.mp4")
    await storage.writers.sweep()
    assert multipart_uploads(view) == {} and records_of(view, reused) == []


@pytest.mark.parametrize("elsewhere", ["other kernel", "other pid namespace", "no identity"])
async def test_a_writer_elsewhere_is_swept_only_once_its_heartbeat_is_stale(
    storage: S3Storage, view: S3View, elsewhere: str
) -> None:
    pid, start = ended_process()
    ended = replace(here(), pid=pid, start=start)
    writer_id = {
        "other kernel": replace(ended, boot_id="0b0b0b0b-0000-4000-8000-000000000000").writer_id("far"),
        "other pid namespace": replace(ended, pid_ns=ended.pid_ns + 1).writer_id("far"),
        "no identity": "far",
    }[elsewhere]
    upload_id = plant(view, writer_id, "v/far.mp4")
    writers = Writers(view.bucket, dead_after=2, sweep_every=3600)
    await writers.start(storage.client)
    try:
        # Its pid means nothing here: only its heartbeat tells.
        await writers.sweep()
        assert upload_id in multipart_uploads(view)
        await asyncio.sleep(4)  # past dead_after, at S3's one-second resolution
        await writers.sweep()
        assert upload_id not in multipart_uploads(view)
        assert records_of(view, writer_id) == []
    finally:
        await writers.close()


async def test_records_without_a_heartbeat_go_once_they_are_old(storage: S3Storage, view: S3View) -> None:
    orphan = here().writer_id("orphan")  # alive, were it judged by its pid: the age decides
    upload_id = plant(view, orphan, "v/orphan.mp4", alive=False)
    writers = Writers(view.bucket, dead_after=2, sweep_every=3600)
    await writers.start(storage.client)
    try:
        await writers.sweep()
        assert upload_id in multipart_uploads(view)
        await asyncio.sleep(4)
        await writers.sweep()
        assert upload_id not in multipart_uploads(view) and records_of(view, orphan) == []
    finally:
        await writers.close()


async def test_a_record_of_an_upload_already_gone_is_removed(storage: S3Storage, view: S3View) -> None:
    pid, start = ended_process()
    dead = replace(here(), pid=pid, start=start).writer_id("done")
    upload_id = plant(view, dead, "v/done.mp4")
    # It completed (or was aborted) and died before removing the record.
    view.client.abort_multipart_upload(Bucket=view.bucket, Key="v/done.mp4", UploadId=upload_id)
    await storage.writers.sweep()
    assert records_of(view, dead) == [] and view.leftovers() == []


# -- who a writer is ----------------------------------------------------------------


def test_identity_round_trips_through_the_writer_id() -> None:
    me = here()
    assert ProcessIdentity.of_writer(me.writer_id("n0nce")) == me
    assert me.pid == os.getpid()
    for foreign in ("plain", "a.b.c.d", "n.boot.x.1.2", "n.boot.1.2.3.4"):
        assert ProcessIdentity.of_writer(foreign) is None


def test_has_ended_only_when_certain() -> None:
    me = here()
    assert not me.has_ended(me)
    pid, start = ended_process()
    assert replace(me, pid=pid, start=start).has_ended(me)
    assert replace(me, start=me.start + 1).has_ended(me)  # the pid is another process now
    # Elsewhere, a pid names another process, or none: never judged by it.
    assert not replace(me, pid=pid, start=start, pid_ns=me.pid_ns + 1).has_ended(me)
    assert not replace(me, pid=pid, start=start, boot_id="another-boot").has_ended(me)


def test_a_zombie_has_ended() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = _start_of(child.pid)
    zombie = replace(here(), pid=child.pid, start=start)
    try:
        # Not reaped yet: the pid is there, as a zombie, until wait().
        wait_for_zombie(child.pid)
        assert zombie.has_ended(here())
    finally:
        child.wait()


def wait_for_zombie(pid: int) -> None:
    for _ in range(600):
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                return
        time.sleep(0.05)
    raise AssertionError(f"{pid} did not end")
