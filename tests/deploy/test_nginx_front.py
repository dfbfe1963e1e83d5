"""Through real nginx with the shipped file, in front of two instances sharing one RGW
bucket: downloads answer exactly as the instances do directly, a tus upload's chunks
go to both instances and every URL the client is given leads to nginx, a client cut
off mid-upload leaves nothing, and a 1 GiB PUT streams through with every process's
memory bounded and no temporary file in nginx."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import pytest

from proxy.storage import layout
from tests.conftest import MiB, wait_until
from tests.deploy.conftest import NginxFront, rss_kib
from tests.web.downloads_support import RANGE_KEYS, N, Raw, body_of, raw_at
from tests.web.test_download_ranges import MULTI_CASES, RANGE_CASES, SEVENTEEN
from tests.web.tus_support import tuspy_upload

TUS = {"Tus-Resumable": "1.0.0"}

# -- downloads: the same answers through nginx as from an instance --------------------------------------

# What a client acts on; Server and Date are nginx's own, Connection is per hop.
COMPARED = (
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Accept-Ranges",
    "ETag",
    "Last-Modified",
    "Cache-Control",
    "Content-Disposition",
    "Content-Security-Policy",
    "X-Content-Type-Options",
    "Transfer-Encoding",
)
EXTRA_CASES: list[tuple[str, str, dict[str, str]]] = [
    ("GET", RANGE_KEYS[N], {"Range": "bytes=" + SEVENTEEN}),  # past server.max_ranges: 200
    ("GET", RANGE_KEYS[N], {"Range": "bytes=0-999,0-0"}),  # overlapping past the size: 200
    ("HEAD", RANGE_KEYS[N], {"Range": "bytes=100-199"}),
    ("HEAD", RANGE_KEYS[N], {"Range": "bytes=1000-"}),
    ("HEAD", RANGE_KEYS[N], {}),
    ("GET", "missing.mp4", {}),
]


def answer_view(method: str, r: Raw) -> tuple[int, dict[str, str | None], Any]:
    """What must be equal: status, the headers above, and the body's bytes (the parts of
    a multipart answer, whose boundary is fresh each time; a JSON error without its
    request id)."""
    headers = {name: r.headers.get(name) for name in COMPARED}
    if method == "HEAD":
        return r.status, headers, r.body
    if (headers["Content-Type"] or "").startswith("multipart/byteranges"):
        headers["Content-Type"] = "multipart/byteranges"
        return r.status, headers, body_of(r)
    if (headers["Content-Type"] or "").startswith("application/json"):
        body = r.json()
        assert body.pop("request_id") == r.headers["X-Request-ID"]
        return r.status, headers, body
    return r.status, headers, body_of(r)


async def put_through(front: NginxFront, key: str, data: bytes) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.put(f"{front.url}/files/{key}", data=data, headers={"Content-Type": "video/mp4"}) as r,
    ):
        body: dict[str, Any] = await r.json()
        assert r.status == 201, body
        return body


async def test_downloads_through_nginx_answer_as_direct_ones(shared_nginx_front: NginxFront) -> None:
    nginx_front = shared_nginx_front
    for size, key in RANGE_KEYS.items():
        await put_through(nginx_front, key, os.urandom(size))
    cases = [("GET", RANGE_KEYS[size], {"Range": h} if h else {}) for size, h, _, _ in RANGE_CASES]
    cases += [("GET", RANGE_KEYS[N], {"Range": header}) for header, _ in MULTI_CASES]
    cases += EXTRA_CASES
    direct = nginx_front.instances[0]
    differences: list[str] = []
    at_once = asyncio.Semaphore(8)

    async def compare(method: str, key: str, headers: dict[str, str]) -> None:
        path = f"/files/{key}"
        async with at_once:
            through = await raw_at("127.0.0.1", nginx_front.port, method, path, headers)
            straight = await raw_at("127.0.0.1", direct.port, method, path, headers)
        if answer_view(method, through) != answer_view(method, straight):
            differences.append(f"{method} {key} {headers}:\n  nginx  {through}\n  direct {straight}")
        # nginx answers with its own Server header, and no version in it.
        assert through.headers["Server"] == "nginx", through.headers

    await asyncio.gather(*(compare(*case) for case in cases))
    assert not differences, "\n".join(differences)
    # Both instances served (round robin): the answers did not depend on which did.
    for instance in nginx_front.instances:
        lines = instance.log().splitlines()
        assert any("GET" in line and "/files/r/" in line for line in lines), instance.name


async def test_request_id_is_nginxs_and_the_client_is_nginxs_client(shared_nginx_front: NginxFront) -> None:
    nginx_front = shared_nginx_front
    await put_through(nginx_front, "id/a.mp4", b"x" * 10)
    r = await raw_at("127.0.0.1", nginx_front.port, "GET", "/files/id/a.mp4")
    request_id = r.headers["X-Request-ID"]
    # nginx's $request_id, in nginx's log and in the instance's that served it.
    # The logs are written once the answer has gone.
    await wait_until(lambda: any(request_id in i.log() for i in nginx_front.instances))
    await wait_until(lambda: f" {request_id} " in nginx_front.access_log())
    served = [i for i in nginx_front.instances if request_id in i.log()]
    assert len(served) == 1
    (line,) = [x for x in served[0].log().splitlines() if request_id in x and "/files/id/a.mp4" in x]
    assert "127.0.0.1" in line and "GET" in line and "200" in line, line


# -- tus: chunks to both instances, every URL leading to nginx ---------------------------------------------


def patches_served(front: NginxFront, upload_id: str) -> dict[str, int]:
    """PATCHes of the upload each instance answered, from their access logs."""
    return {
        i.name: sum(1 for line in i.log().splitlines() if "PATCH" in line and f"/uploads/{upload_id}" in line)
        for i in front.instances
    }


@pytest.mark.slow
async def test_tuspy_upload_alternates_instances_and_every_location_is_nginxs(
    shared_nginx_front: NginxFront,
) -> None:
    nginx_front = shared_nginx_front
    data = os.urandom(23 * MiB + 5)
    url = await asyncio.to_thread(tuspy_upload, nginx_front.url + "/uploads/", data, 5 * MiB + 3)
    assert url.startswith(nginx_front.url + "/uploads/"), url
    upload_id = url.rsplit("/", 1)[1]
    # tuspy opens a connection per request and nginx (one worker) takes the instances
    # in turn: the five PATCHes went to both.
    # (Each line is logged once its answer has gone.)
    await wait_until(lambda: sum(patches_served(nginx_front, upload_id).values()) >= 5)
    served = patches_served(nginx_front, upload_id)
    assert sum(served.values()) == 5 and min(served.values()) >= 2, served

    # Every Location and Object-Location nginx sent the client (its access log records
    # them as sent), resolved as a client does against the URL it asked, is nginx's.
    def locations_sent() -> list[tuple[str, str]]:
        return [
            (line.split()[2], value)
            for line in nginx_front.access_log().splitlines()
            if upload_id in line
            for value in line.split('"')[3:6:2]
            if value not in ("", "-")
        ]

    # nginx writes a request's line as it finishes it, which may be just after the
    # client has the answer: wait for the last PATCH's.
    with contextlib.suppress(TimeoutError):
        await wait_until(lambda: len(locations_sent()) >= 2)
    seen = locations_sent()
    assert len(seen) >= 2, nginx_front.access_log()  # the creation's Location, the last Object-Location
    for path, value in seen:
        resolved = urlsplit(urljoin(nginx_front.url + path, value))
        assert (resolved.hostname, resolved.port) == ("127.0.0.1", nginx_front.port), (path, value)
    key = f"{upload_id}/movie.mp4"
    assert hashlib.sha256(nginx_front.view.get(key)).hexdigest() == hashlib.sha256(data).hexdigest()
    assert nginx_front.view.metadata(key)["sha256"] == hashlib.sha256(data).hexdigest()
    stored = nginx_front.view.keys()
    assert [k for k in stored if k.startswith(upload_id)] == [key]


# -- a client cut off mid-upload ------------------------------------------------------------------------


async def test_client_cut_off_mid_upload_leaves_nothing(shared_nginx_front: NginxFront) -> None:
    nginx_front = shared_nginx_front
    """The client announces 64 MiB, sends 24 (a multipart upload is under way in the
    bucket), and its connection is reset: no object, no multipart upload."""
    view = nginx_front.view
    size, sent = 64 * MiB, 24 * MiB
    _, writer = await asyncio.open_connection("127.0.0.1", nginx_front.port)
    head = (
        f"PUT /files/cut/off.mp4 HTTP/1.1\r\nHost: 127.0.0.1:{nginx_front.port}\r\n"
        f"Content-Type: video/mp4\r\nContent-Length: {size}\r\n\r\n"
    )
    writer.write(head.encode())
    block = os.urandom(MiB)
    for _ in range(sent // MiB):
        writer.write(block)
        await writer.drain()

    def multipart_uploads() -> list[Any]:
        uploads: list[Any] = view.client.list_multipart_uploads(Bucket=view.bucket).get("Uploads", [])
        return uploads

    await wait_until(lambda: bool(multipart_uploads()), seconds=30)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.transport.abort()  # a reset, as when a client's network goes away

    def writers_records() -> list[str]:
        """What writers record of uploads they have open (other tests' finished tus
        uploads keep their records under uploads/ until they expire)."""
        return [k for k in view.internal_keys() if not k.startswith(layout.UPLOADS)]

    await wait_until(lambda: not multipart_uploads() and not writers_records(), seconds=60)
    assert not [k for k in view.all_keys() if k.startswith("cut/")]


# -- 1 GiB through nginx, memory bounded, no temporary file -----------------------------------------------

GiB = 1024 * MiB


class Watch:
    """Samples the processes' resident memory and nginx's temporary directories while a
    transfer runs."""

    def __init__(self, front: NginxFront) -> None:
        self.front = front
        self.peak_kib: dict[str, int] = {}
        self.temp_files: set[str] = set()
        self.samples = 0
        self.growth_kib: dict[str, int] = {}

    def pids(self) -> dict[str, int]:
        pids = {"nginx master": self.front.process.pid}
        pids.update({f"nginx worker {pid}": pid for pid in self.front.worker_pids()})
        pids.update({f"instance {i.name}": i.pid for i in self.front.instances})
        return pids

    def sample(self, pids: dict[str, int]) -> None:
        for name, pid in pids.items():
            self.peak_kib[name] = max(self.peak_kib.get(name, 0), rss_kib(pid))
        temp_dirs = [str(self.front.temp_dir(name)) for name in ("client_body", "proxy")]
        for directory in temp_dirs:
            self.temp_files.update(str(p) for p in Path(directory).rglob("*") if p.is_file())
        # nginx unlinks a temporary file as soon as it has opened it: what shows it is
        # the worker's descriptor, "<dir>/0000000001 (deleted)".
        for pid in pids.values():
            self.temp_files.update(t for t in open_files(pid) if t.startswith(tuple(temp_dirs)))
        self.samples += 1

    async def run(self, done: asyncio.Event) -> None:
        pids = self.pids()
        while not done.is_set():
            await asyncio.to_thread(self.sample, pids)
            await asyncio.sleep(0.05)


def open_files(pid: int) -> list[str]:
    """What the process's descriptors point at."""
    found = []
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                found.append(os.readlink(fd))
    return found


async def generated(total: int, digest: Any, sent: list[int]) -> AsyncIterator[bytes]:
    """``total`` bytes, every MiB different, hashed as they go."""
    block = bytearray(os.urandom(MiB))
    for index in range(total // MiB):
        block[:8] = index.to_bytes(8, "big")
        piece = bytes(block)
        digest.update(piece)
        sent[0] += len(piece)
        yield piece


async def watched(front: NginxFront, transfer: Callable[[], Awaitable[None]]) -> tuple[Watch, str]:
    """Run ``transfer`` under a Watch; the watch and a line of what it saw."""
    watch = Watch(front)
    baseline = {name: rss_kib(pid) for name, pid in watch.pids().items()}
    done = asyncio.Event()
    watcher = asyncio.create_task(watch.run(done))
    started = time.monotonic()
    try:
        await transfer()
    finally:
        done.set()
        await watcher
    seconds = time.monotonic() - started
    watch.growth_kib = {name: kib - baseline.get(name, 0) for name, kib in watch.peak_kib.items()}
    report = f"{GiB / MiB / seconds:.0f} MiB/s, {watch.samples} samples, peak RSS KiB {watch.peak_kib}"
    return watch, f"{report}, growth {watch.growth_kib}"


def assert_streamed(watch: Watch, report: str) -> None:
    assert watch.samples > 20, report
    assert not watch.temp_files, f"nginx wrote temporary files: {watch.temp_files}"
    # nginx holds a buffer or two per request; an instance its memory budget (96 MiB)
    # and what aiohttp and botocore hold besides: far below the GiB that went through.
    for name, kib in watch.growth_kib.items():
        limit = 16 * 1024 if name.startswith("nginx") else 160 * 1024
        assert kib < limit, report


@pytest.mark.slow
async def test_one_gib_streams_through_with_memory_bounded_and_no_temp_file(nginx_front: NginxFront) -> None:
    """Up with PUT, then down again with GET, both through nginx."""
    digest, sent = hashlib.sha256(), [0]
    timeout = aiohttp.ClientTimeout(total=900, sock_read=300)
    url = f"{nginx_front.url}/files/big/one.bin"
    stored: dict[str, Any] = {}

    async def put() -> None:
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(GiB)}
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.put(url, data=generated(GiB, digest, sent), headers=headers) as r,
        ):
            stored.update(await r.json())
            assert r.status == 201, stored

    watch, report = await watched(nginx_front, put)
    print("PUT", report)
    assert sent[0] == GiB
    assert stored["size"] == GiB and stored["sha256"] == digest.hexdigest()
    meta = nginx_front.view.metadata("big/one.bin")
    assert meta["size"] == GiB and meta["sha256"] == digest.hexdigest()
    assert nginx_front.view.leftovers() == []
    assert_streamed(watch, report)

    got, received = hashlib.sha256(), [0]

    async def get() -> None:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as r:
            assert r.status == 200
            async for piece in r.content.iter_chunked(256 * 1024):
                got.update(piece)
                received[0] += len(piece)

    watch, report = await watched(nginx_front, get)
    print("GET", report)
    assert received[0] == GiB and got.hexdigest() == digest.hexdigest()
    assert_streamed(watch, report)


async def test_the_same_origin_check_sees_nginxs_origin(shared_nginx_front: NginxFront) -> None:
    """A page served through nginx may write through nginx; a page of the instance's
    own address (another origin to the browser) may not."""
    front = shared_nginx_front
    instance = front.instances[0]
    async with aiohttp.ClientSession() as session:
        for origin, status in [(front.url, 201), (instance.url, 403), ("http://evil.example", 403)]:
            headers = {"Origin": origin, "Content-Type": "text/plain"}
            async with session.put(f"{front.url}/files/origin/a.txt", data=b"x", headers=headers) as r:
                assert r.status == status, (origin, await r.text())
