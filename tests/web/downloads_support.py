"""What the download tests share: raw HTTP/1.1 requests read to EOF, the checks made
on what comes back, the objects the read-only tests share, and the recording layer
put between the proxy and S3.

Responses are read with raw HTTP/1.1 requests (``Connection: close``, read to EOF), so
the exact bytes the server sent are compared: a body one byte longer or shorter than
its Content-Length fails. A plain module, not a conftest, so that the test files
import these names explicitly; the fixtures built from them are in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import os
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from proxy.app import create_app
from proxy.config import Config
from proxy.storage.s3.relay import USER_AGENT
from proxy.web.response_body import SMALL_BODY
from tests.conftest import Backend
from tests.s3_interposer import S3Interposer

N = 1000  # the "about a thousand bytes" object of the range tables
TIMEOUT = 10.0  # seconds; a hang fails the test instead of blocking the run
module_loop = pytest.mark.asyncio(loop_scope="module")


def object_bytes(size: int) -> bytes:
    return os.urandom(size)


# -- raw HTTP ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw(
    client: TestClient[Any, Any], method: str, path: str, headers: dict[str, str] | None = None
) -> Raw:
    """One request on its own connection; the response is everything until EOF."""
    port = client.server.port
    assert port is not None  # the test server is started
    return await raw_at(client.server.host, port, method, path, headers)


async def raw_at(host: str, port: int, method: str, path: str, headers: dict[str, str] | None = None) -> Raw:
    """``raw`` to any server (nginx in front of the proxy, say)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        async with asyncio.timeout(TIMEOUT):
            data = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head: {data[:300]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed: CIMultiDict[str] = CIMultiDict()
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed.add(name.strip(), value.strip())
    return Raw(int(status_line.split()[1]), parsed, body)


def assert_framed(r: Raw) -> None:
    """The body on the wire is exactly Content-Length bytes, not chunked."""
    assert "Transfer-Encoding" not in r.headers
    assert int(r.headers["Content-Length"]) == len(r.body), (r.headers, len(r.body))


def assert_json_error(r: Raw, status: int, error: str) -> None:
    assert r.status == status, (r.status, r.body[:300])
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["error"] == error
    assert isinstance(body["message"], str) and body["message"]


def http_date(when: datetime) -> str:
    return email.utils.format_datetime(when.astimezone(UTC), usegmt=True)


def parse_date(value: str) -> datetime:
    return email.utils.parsedate_to_datetime(value)


async def upload(
    client: TestClient[Any, Any], key: str, data: bytes, content_type: str = "video/mp4"
) -> dict[str, Any]:
    response = await client.put(f"/files/{key}", data=data, headers={"Content-Type": content_type})
    body: dict[str, Any] = await response.json()
    assert response.status == 201, body
    return body


def parse_byteranges(r: Raw) -> list[tuple[CIMultiDict[str], bytes]]:
    """The parts of a multipart/byteranges body, strictly: no preamble, no epilogue."""
    media_type, _, params = r.headers["Content-Type"].partition(";")
    assert media_type.strip().lower() == "multipart/byteranges"
    name, _, boundary = params.strip().partition("=")
    assert name.lower() == "boundary" and boundary
    delimiter = b"\r\n--" + boundary.strip('"').encode("ascii")
    body = r.body
    if body.startswith(delimiter[2:]):  # RFC 2046: the first delimiter's CRLF is optional
        body = b"\r\n" + body
    pieces = body.split(delimiter)
    assert pieces[0] == b"", f"preamble before the first part: {pieces[0][:100]!r}"
    assert pieces[-1] in (b"--", b"--\r\n"), f"bad closing delimiter: {pieces[-1][:100]!r}"
    parts = []
    for piece in pieces[1:-1]:
        assert piece.startswith(b"\r\n"), piece[:100]
        head, sep, data = piece[2:].partition(b"\r\n\r\n")
        assert sep, piece[:200]
        headers: CIMultiDict[str] = CIMultiDict()
        for line in head.decode("ascii").split("\r\n"):
            name, colon, value = line.partition(":")
            assert colon, line
            headers.add(name.strip(), value.strip())
        parts.append((headers, data))
    return parts


def body_of(r: Raw) -> list[bytes]:
    """The body as a list of pieces: the parts of a multipart answer, else the one body."""
    if r.status == 206 and "Content-Range" not in r.headers:
        return [part for _, part in parse_byteranges(r)]
    return [r.body]


def expected_body_of(headers: dict[str, str], data: bytes) -> list[bytes]:
    """The pieces ``body_of`` should give for a GET with ``headers`` (only satisfiable,
    explicit ranges: no clipping, no dropped ranges)."""
    header = headers.get("Range")
    if header is None:
        return [data]
    pieces = []
    for spec in header.removeprefix("bytes=").split(","):
        first, _, last = spec.partition("-")
        if not first:
            pieces.append(data[-int(last) :])
        else:
            pieces.append(data[int(first) : int(last) + 1] if last else data[int(first) :])
    return pieces


# -- one proxy per backend for the read-only tests -----------------------------------------------------

# One byte more than a body read whole before the head is sent (response_body).
EDGE = SMALL_BODY + 1
RANGE_KEYS = {size: f"r/{size}.mp4" for size in (0, 1, N, EDGE)}
OBJ = RANGE_KEYS[N]
# key, Content-Type sent with the PUT, Content-Type GET must answer
CONTENT_TYPES = [
    ("ct/a/clip.mp4", "video/webm", "video/webm"),  # what was stored wins over the extension
    ("ct/b/clip.mp4", "application/octet-stream", "video/mp4"),  # nothing useful sent: guessed
    ("ct/notes.txt", "text/plain; charset=utf-8", "text/plain; charset=utf-8"),
    ("ct/no-extension", "application/octet-stream", "application/octet-stream"),
    ("ct/empty.txt", "text/plain", "text/plain"),
]
LISTED = {
    "list/a.txt": "text/plain",
    "list/b/c.mp4": "video/mp4",
    "list/b/d.png": "image/png",
    "list/bz.json": "application/json",
    "list/c.bin": "application/octet-stream",
}
ALL_KEYS = sorted([*RANGE_KEYS.values(), *(key for key, _, _ in CONTENT_TYPES), *LISTED])
CUSTOM: dict[str, Any] = {"max_ranges": 2, "cache_control": "public, max-age=60"}


@dataclass
class Shared:
    backend: Backend
    client: TestClient[Any, Any]  # default server settings
    custom: TestClient[Any, Any]  # the settings in CUSTOM
    data: dict[str, bytes] = field(default_factory=dict)
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)


async def start_client(config: Config, server_class: type[TestServer] = TestServer) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(server_class(create_app(config), host="127.0.0.1"))
    await client.start_server()
    return client


# -- TLS clients ---------------------------------------------------------------------------------------


def self_signed_context(tmp_path: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


# -- S3: a layer that records which requests reach S3 --------------------------------------------------


@dataclass(frozen=True)
class S3Call:
    method: str
    path: str
    range: str | None
    if_match: str | None
    user_agent: str

    @property
    def relayed(self) -> bool:
        return self.user_agent == USER_AGENT

    @property
    def operation(self) -> str:
        if self.path.count("/") < 2:
            return f"{self.method} bucket"
        return {"GET": "GetObject", "HEAD": "HeadObject"}.get(self.method, f"{self.method} object")


class RecordingInterposer(S3Interposer):
    """Also records the Range and If-Match headers S3 receives, and can answer GetObject
    with 412 PreconditionFailed as S3 does when the object changed after the HeadObject."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.calls: list[S3Call] = []
        # GetObject with If-Match fails once this many have succeeded; None: never.
        self.object_changes_after: int | None = None
        # Relayed GetObjects with these Range headers ("" for none) get 503 SlowDown.
        self.refuse_relayed: set[str] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if_match = request.headers.get("If-Match")
        call = S3Call(
            request.method,
            request.path,
            request.headers.get("Range"),
            if_match,
            request.headers["User-Agent"],
        )
        self.calls.append(call)
        if call.relayed and (call.range or "") in self.refuse_relayed:
            xml = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            return web.Response(status=503, text=xml, content_type="application/xml")
        if request.method == "GET" and if_match is not None and self.object_changes_after is not None:
            if self.object_changes_after > 0:
                self.object_changes_after -= 1
                return await super().handle(request)
            xml = (
                "<Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions "
                "you specified did not hold</Message><Condition>If-Match</Condition></Error>"
            )
            return web.Response(status=412, text=xml, content_type="application/xml")
        return await super().handle(request)


@dataclass
class S3Recorded:
    layer: RecordingInterposer
    client: TestClient[Any, Any]
    data: bytes
    etag: str

    def calls(self) -> list[S3Call]:
        return [c for c in self.layer.calls if c.path.endswith("/rec.mp4")]

    def get_objects(self) -> list[S3Call]:
        calls = self.calls()
        assert {c.operation for c in calls} <= {"HeadObject", "GetObject"}, calls
        return [c for c in calls if c.operation == "GetObject"]

    def head_objects(self) -> int:
        return [c.operation for c in self.calls()].count("HeadObject")
