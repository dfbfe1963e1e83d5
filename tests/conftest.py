"""Shared fixtures: real servers on 127.0.0.1 random ports, cleaned up afterwards.

- ``moto_endpoint``: a moto S3 server (ThreadedMotoServer) for the session.
- ``real_s3``: Ceph RGW from ../shared/s3, started for the session (needs root);
  reused from STREAM_PROXY_TEST_REAL_S3 (an endpoint URL) when that is set.
- ``backend``: "local" or "s3" (moto), and ``store`` built for it, with a
  ``StoreView`` that reads what is in the directory or bucket directly.
- ``http_backend``: the in-memory fake (tests/storage/memory.py), for tests of pure
  HTTP behaviour that need no real storage; ``proxy_client(config, app_backend)``
  serves it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from botocore.config import Config as BotoConfig
from moto.server import ThreadedMotoServer

from proxy.app import create_app
from proxy.config import Config, LocalConfig, S3Config, ServerConfig, StorageConfig
from proxy.rules.keys import INTERNAL_PREFIX
from proxy.storage import layout
from proxy.storage.backend import Backend as StorageBackend
from proxy.storage.local.objects import LocalStorage
from proxy.storage.resumable import UploadState
from proxy.storage.s3.objects import S3Storage
from tests.storage.memory import MemoryStorage, memory_backend

IN_CI = os.environ.get("CI", "").lower() == "true"
SHARED_S3 = Path(__file__).resolve().parents[1].parent / "shared" / "s3"
MiB = 1024 * 1024


def require(condition: bool, reason: str) -> None:
    """Skip locally when a real program is missing; in CI that is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=BotoConfig(s3={"addressing_style": "path"}),
        )


@pytest.fixture(scope="session", autouse=True)
def _aws_env() -> Iterator[None]:
    # The proxy takes credentials from the standard chain; tests point it at fakes.
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_CONFIG_FILE")}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testaccesskey", AWS_SECRET_ACCESS_KEY="testsecretkey", AWS_CONFIG_FILE="/dev/null"
    )
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[S3Endpoint]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield S3Endpoint(f"http://127.0.0.1:{port}", "testaccesskey", "testsecretkey")
    server.stop()


@pytest.fixture(scope="session")
def real_s3() -> Iterator[S3Endpoint]:
    given = os.environ.get("STREAM_PROXY_TEST_REAL_S3")
    if given:
        yield S3Endpoint(given, "testaccesskey", "testsecretkey")
        return
    script = SHARED_S3 / "start-real-s3.sh"
    require(script.exists(), f"{script} is missing")
    require(os.geteuid() == 0, "starting the real S3 server needs root")
    data_dir = Path(f"/tmp/stream-proxy-test-rgw-{os.getpid()}")
    port = free_port()
    # Ports of its own, so that another RGW on this machine does not collide with it.
    osd_base = 20000 + (os.getpid() % 400) * 100
    env = {
        **os.environ,
        "S3_MON_PORT": str(free_port()),
        "S3_MON_V2_PORT": str(free_port()),
        "S3_OSD_PORT_MIN": str(osd_base),
        "S3_OSD_PORT_MAX": str(osd_base + 99),
    }
    result = subprocess.run(
        ["bash", str(script), str(data_dir), str(port)], capture_output=True, text=True, timeout=600, env=env
    )
    if result.returncode != 0:
        pytest.fail(f"real S3 server did not start:\n{result.stderr[-3000:]}")
    try:
        yield S3Endpoint(f"http://127.0.0.1:{port}", "testaccesskey", "testsecretkey")
    finally:
        subprocess.run(["bash", str(SHARED_S3 / "stop-real-s3.sh"), str(data_dir), "--purge"], timeout=120)


def make_bucket(endpoint: S3Endpoint) -> Iterator[str]:
    client = endpoint.client()
    name = f"test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    yield name
    for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
        client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=item["Key"])
    client.delete_bucket(Bucket=name)


class StoreView:
    """What is really stored, read without going through the proxy."""

    def get(self, key: str) -> bytes:
        raise NotImplementedError

    def keys(self) -> list[str]:
        raise NotImplementedError

    def leftovers(self) -> list[str]:
        """Unfinished uploads: S3 multipart uploads, or local temporary files."""
        raise NotImplementedError

    def metadata(self, key: str) -> dict[str, Any]:
        raise NotImplementedError


class LocalView(StoreView):
    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def keys(self) -> list[str]:
        internal = self.root / layout.INTERNAL
        for _ in range(100):
            try:
                return sorted(
                    str(p.relative_to(self.root))
                    for p in self.root.rglob("*")
                    if p.is_file() and internal not in p.parents
                )
            except FileNotFoundError:
                continue  # a directory removed under the walk (a server still deleting): look again
        raise AssertionError("the directory kept changing under the walk")

    def leftovers(self) -> list[str]:
        """Temporary files by name, and resumable upload directories as ``upload <id>``."""
        tmp, uploads = self.root / layout.TMP, self.root / layout.UPLOADS
        found = []
        for p in tmp.iterdir() if tmp.exists() else []:
            # A process keeps its temporary files in a directory of its own: what counts is what is in it.
            found += [c.name for c in p.iterdir()] if p.name.endswith(layout.TMP_PROCESS_SUFFIX) else [p.name]
        found += [f"upload {p.name}" for p in uploads.iterdir()] if uploads.exists() else []
        return sorted(found)

    def metadata(self, key: str) -> dict[str, Any]:
        import json

        meta: dict[str, Any] = json.loads((self.root / layout.meta_key(key)).read_text())
        return meta


class S3View(StoreView):
    def __init__(self, endpoint: S3Endpoint, bucket: str) -> None:
        self.client = endpoint.client()
        self.bucket = bucket

    def get(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def all_keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def keys(self) -> list[str]:
        return [k for k in self.all_keys() if not k.startswith(INTERNAL_PREFIX + "/")]

    def internal_keys(self) -> list[str]:
        """The backend's own objects (resumable uploads' state and bytes, writers'
        records of uploads in progress), but not a live process's heartbeat."""
        return [k for k in self.all_keys() if k.startswith(INTERNAL_PREFIX + "/") and not _is_heartbeat(k)]

    def leftovers(self) -> list[str]:
        """Multipart uploads as ``key:UploadId``, and resumable uploads as
        ``upload <id>`` (as LocalView names them) whatever objects each has left."""
        uploads = self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        found = {f"{u['Key']}:{u['UploadId']}" for u in uploads}
        for key in self.internal_keys():
            parts = key.split("/")
            found.add(f"upload {parts[2]}" if parts[1] == "uploads" and len(parts) > 3 else key)
        return sorted(found)

    def metadata(self, key: str) -> dict[str, Any]:
        head = self.client.head_object(Bucket=self.bucket, Key=key)
        return {"content_type": head["ContentType"], "size": head["ContentLength"], **head["Metadata"]}


def _is_heartbeat(key: str) -> bool:
    """A process's heartbeat, not an upload (its uploads' records do count)."""
    return key.startswith(layout.WRITERS) and key.split("/")[-1] == layout.WRITER_ALIVE


class MemoryView(StoreView):
    def __init__(self, storage: MemoryStorage) -> None:
        self.storage = storage

    def get(self, key: str) -> bytes:
        data = self.storage.entry(key)
        assert data is not None, key
        return data

    def keys(self) -> list[str]:
        return [k for k in self.storage.stored_keys() if not layout.is_internal(k)]

    def leftovers(self) -> list[str]:
        """Resumable uploads as ``upload <id>``, as the other views name them."""
        internal = [k for k in self.storage.stored_keys() if layout.is_internal(k)]
        return sorted({f"upload {k.split('/')[2]}" for k in internal})


@dataclass
class Backend:
    name: str
    config: Config
    view: StoreView
    # What the app is served with instead of the one the config names (the fake).
    app_backend: StorageBackend | None = None


def s3_config(endpoint: S3Endpoint, bucket: str, **overrides: Any) -> S3Config:
    base = S3Config(
        bucket=bucket,
        endpoint_url=endpoint.url,
        region=endpoint.region,
        addressing_style="path",
        max_attempts=2,
        connect_timeout=5,
        read_timeout=60,
    )
    return replace(base, **overrides)


def backend_for(name: str, tmp_path: Path, endpoint: S3Endpoint | None, bucket: str | None) -> Backend:
    if name == "local":
        root = tmp_path / "data"
        storage = StorageConfig(backend="local", local=LocalConfig(root=root))
        return Backend(name, Config(ServerConfig(), storage), LocalView(root))
    assert endpoint is not None and bucket is not None
    storage = StorageConfig(backend="s3", s3=s3_config(endpoint, bucket))
    return Backend(name, Config(ServerConfig(), storage), S3View(endpoint, bucket))


@pytest.fixture
def moto_bucket(moto_endpoint: S3Endpoint) -> Iterator[str]:
    yield from make_bucket(moto_endpoint)


@pytest.fixture
def real_bucket(real_s3: S3Endpoint) -> Iterator[str]:
    yield from make_bucket(real_s3)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return backend_for("local", tmp_path, None, None)
    endpoint = request.getfixturevalue("moto_endpoint")
    return backend_for("s3", tmp_path, endpoint, request.getfixturevalue("moto_bucket"))


@pytest.fixture(params=["memory"])
def http_backend(request: pytest.FixtureRequest) -> Backend:
    storage = MemoryStorage()
    return Backend(request.param, Config(), MemoryView(storage), memory_backend(storage))


@pytest.fixture
def real_backend(tmp_path: Path, real_s3: S3Endpoint, real_bucket: str) -> Backend:
    return backend_for("s3", tmp_path, real_s3, real_bucket)


def storage_for(config: Config) -> LocalStorage | S3Storage:
    if config.storage.backend == "s3":
        return S3Storage(config.storage.s3)
    return LocalStorage(config.storage.local.root)


ClientFactory = Callable[..., Any]


@pytest.fixture
async def proxy_client(aiohttp_client: ClientFactory) -> Callable[[Config], Any]:
    """Start the proxy app for a config on a random port; returns a TestClient."""

    async def start(
        config: Config, app_backend: StorageBackend | None = None
    ) -> TestClient[web.Request, web.Application]:
        client: TestClient[web.Request, web.Application] = await aiohttp_client(
            create_app(config, app_backend)
        )
        return client

    return start


async def agen(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def wait_until(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll until ``predicate()`` holds; the server cleans up after a client has gone."""
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.05)


ROOT = Path(__file__).resolve().parents[1]


async def start_server(port: int, **settings: str) -> asyncio.subprocess.Process:
    # No drain delay unless a test asks for one: nothing waits to notice the drain.
    env = {**os.environ, "STREAM_PROXY_SERVER_DRAIN_DELAY": "0"}
    env.update({f"STREAM_PROXY_{k.upper()}": v for k, v in settings.items()})
    return await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "proxy", "serve", "--config", "config.toml", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def wait_for_port(port: int) -> None:
    async with asyncio.timeout(30):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.1)


def backend_settings(backend: Backend) -> dict[str, str]:
    storage = backend.config.storage
    if storage.backend == "local":
        return {"storage_local_root": str(storage.local.root)}
    s3 = storage.s3
    return {
        "storage_backend": "s3",
        "storage_s3_bucket": s3.bucket,
        "storage_s3_endpoint_url": str(s3.endpoint_url),
        "storage_s3_region": str(s3.region),
        "storage_s3_addressing_style": "path",
    }


def new_upload_state(length: int | None = None, key: str = "videos/clip.mp4") -> UploadState:
    """A fresh resumable upload's state, as the tus handler makes one at creation."""
    now = time.time()
    return UploadState(
        id=uuid.uuid4().hex,
        key=key,
        content_type="video/mp4",
        length=length,
        metadata="",
        created=now,
        expires=now + 3600,
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # make test runs the suite in two pytest-xdist workers (--dist loadgroup): every
    # test of the real S3 server goes to one of them, so that one RGW is started, not
    # one per worker.
    for item in items:
        if item.get_closest_marker("real_s3") or "real_s3" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("real_s3"))
