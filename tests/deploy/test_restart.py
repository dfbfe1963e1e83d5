"""Restarting the instances behind nginx one after the other (SIGTERM, start again)
under a load of concurrent downloads, PUTs and tus uploads loses no work: every
download completes with the right bytes (nginx retries it on the other instance when
one is going), every PUT either completes hash-exact or gets a clean error and leaves
nothing, and every tus upload resumes and finishes with the right bytes. Real nginx,
two real `stream-proxy serve` processes, one real RGW bucket (tests/deploy/conftest.py).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.conftest import S3Endpoint, make_bucket
from tests.deploy.conftest import NginxFront, nginx_front_running, require_nginx

MiB = 1024 * 1024
DRAIN_DELAY = 2
OBJECTS = 4  # stored before, downloaded in loops
OBJECT_SIZE = 8 * MiB
TUS_SIZE = 12 * MiB
TUS_CHUNK = 2 * MiB
TUS = {"Tus-Resumable": "1.0.0"}
IN_FLIGHT = re.compile(r"waiting up to \S+ s for (\d+) requests in flight")


@pytest.fixture
def front(tmp_path: Path, real_s3: S3Endpoint) -> Iterator[NginxFront]:
    require_nginx()
    for bucket in make_bucket(real_s3):
        with nginx_front_running(
            tmp_path, real_s3, bucket, server_settings=f"drain_delay = {DRAIN_DELAY}\n"
        ) as f:
            yield f


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    failed_puts: list[str] = field(default_factory=list)  # keys that must not exist
    stored: dict[str, str] = field(default_factory=dict)  # key -> SHA-256 the answer gave
    tus_ids: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # the loops end their current turn


async def _downloads(http: aiohttp.ClientSession, url: str, objects: dict[str, bytes], tally: Tally) -> None:
    while not tally.stop.is_set():
        key = random.choice(list(objects))
        try:
            async with http.get(f"{url}/files/{key}") as r:
                body = await r.read()
                ok = r.status == 200 and body == objects[key]
        except aiohttp.ClientError as exc:
            ok, body = False, repr(exc).encode()
        tally.counts["download ok" if ok else "download FAILED"] += 1
        if not ok:
            tally.problems.append(f"GET {key}: {body[:200]!r}")


async def _puts(http: aiohttp.ClientSession, url: str, worker: int, tally: Tally) -> None:
    for n in range(10**6):
        if tally.stop.is_set():
            return
        key = f"put/{worker}-{n}.bin"
        data = os.urandom(random.randrange(4 * MiB, 10 * MiB))
        try:
            async with http.put(f"{url}/files/{key}", data=data) as r:
                answer = await r.json() if r.status == 201 else await r.text()
                status = r.status
        except aiohttp.ClientError:
            status, answer = 0, None
        if status == 201 and isinstance(answer, dict):
            assert answer["sha256"] == hashlib.sha256(data).hexdigest()
            tally.stored[key] = answer["sha256"]
            tally.counts["put ok"] += 1
        else:
            tally.failed_puts.append(key)
            tally.counts[f"put clean error {status}"] += 1


async def _tus(http: aiohttp.ClientSession, url: str, worker: int, tally: Tally) -> None:
    for n in range(10**6):
        if tally.stop.is_set():
            return
        data = os.urandom(TUS_SIZE)
        name = base64.b64encode(f"tus-{worker}-{n}.bin".encode()).decode()
        headers = {**TUS, "Upload-Length": str(TUS_SIZE), "Upload-Metadata": f"filename {name}"}
        async with http.post(f"{url}/uploads/", headers=headers) as r:
            if r.status != 201:  # creation is a POST: not retried by nginx
                tally.counts[f"tus create error {r.status}"] += 1
                continue
            path = urlsplit(r.headers["Location"]).path
        tally.tus_ids.append(path.rsplit("/", 1)[1])
        offset, object_path = 0, None
        while object_path is None:
            chunk = data[offset : offset + TUS_CHUNK]
            patch = {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(offset)}
            try:
                async with http.patch(f"{url}{path}", data=chunk, headers=patch) as r:
                    if r.status == 204:
                        offset = int(r.headers["Upload-Offset"])
                        object_path = r.headers.get("Object-Location")
                        continue
            except aiohttp.ClientError:
                pass
            tally.counts["tus PATCH failed, resumed"] += 1
            offset = await _offset(http, f"{url}{path}")
        async with http.get(f"{url}{object_path}") as r:
            ok = r.status == 200 and await r.read() == data
        tally.counts["tus finished" if ok else "tus FAILED"] += 1


async def _offset(http: aiohttp.ClientSession, upload: str) -> int:
    """The upload's offset by HEAD (idempotent: nginx retries it on the other instance)."""
    for _ in range(100):
        try:
            async with http.head(upload, headers=TUS) as r:
                if r.status == 200:
                    return int(r.headers["Upload-Offset"])
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.3)  # 423 while a cut PATCH's lock is released
    raise AssertionError(f"HEAD {upload} never answered")


@pytest.mark.slow
@pytest.mark.alone
@pytest.mark.real_s3
async def test_restarting_each_instance_under_load_loses_no_work(front: NginxFront) -> None:
    url = front.url
    objects = {f"get/{i}.bin": os.urandom(OBJECT_SIZE) for i in range(OBJECTS)}
    tally = Tally()
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for key, data in objects.items():
            async with http.put(f"{url}/files/{key}", data=data) as r:
                assert r.status == 201
        load = [
            *(asyncio.create_task(_downloads(http, url, objects, tally)) for _ in range(3)),
            *(asyncio.create_task(_puts(http, url, w, tally)) for w in range(2)),
            *(asyncio.create_task(_tus(http, url, w, tally)) for w in range(2)),
        ]
        try:
            await asyncio.sleep(3)
            for instance in front.instances:
                assert await asyncio.to_thread(instance.stop) == 0, instance.log()[-3000:]
                await asyncio.to_thread(instance.start)
                await asyncio.sleep(4)
            # What is in progress finishes; nothing new starts.
            tally.stop.set()
            async with asyncio.timeout(120):
                await asyncio.gather(*load)
        finally:
            for task in load:
                task.cancel()
            await asyncio.gather(*load, return_exceptions=True)

    # Under load indeed: requests were in flight when each listener closed (the drain
    # says how many it waited for), and nginx passed some to the other instance.
    in_flight = [sum(map(int, IN_FLIGHT.findall(i.log()))) for i in front.instances]
    retried = front.access_log().count(", 127.0.0.1:")  # $upstream_addr lists each instance tried
    print(f"restart under load: {dict(sorted(tally.counts.items()))}; in flight at each listener's close: "
          f"{in_flight}; retried by nginx on the other instance: {retried}")  # fmt: skip
    assert sum(in_flight) > 0
    assert not tally.problems, tally.problems[:5]
    assert tally.counts["download ok"] > 0 and tally.counts["put ok"] > 0 and tally.counts["tus finished"] > 0
    assert tally.counts["tus FAILED"] == 0
    keys = set(front.view.keys())
    assert not keys & set(tally.failed_puts)  # a failed PUT left no object
    for key, sha in tally.stored.items():
        assert hashlib.sha256(front.view.get(key)).hexdigest() == sha
    # No multipart upload, no staging object, nothing of any upload but the tus records.
    tus_records = {f"upload {i}" for i in tally.tus_ids}
    assert set(front.view.leftovers()) - tus_records == set()
    for instance in front.instances:
        assert "Traceback" not in instance.log()
