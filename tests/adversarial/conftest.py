"""The adversarial suite's fixtures: the real server, raw sockets, and the checks every
answer must pass.

- ``live``: the proxy as ``stream-proxy serve`` runs it (``ProxyRunner`` + a socket
  site, so that aiohttp's own parser answers are covered), on a random 127.0.0.1 port,
  over the local directory and over moto's S3 (``backend`` from tests/conftest.py).
  Beside the storage root lies a directory that no request may reach: it holds a
  secret file with a unique marker that must never appear in an answer, and it must be
  exactly as it was when the test ends.
- ``exchange()`` / ``Connection``: bytes in, bytes out, with no client library to
  normalise either side; they cope with a server that answers early or closes.
- ``assert_safe()``: what every answer must be (JSON errors with a request id, the
  common headers, no internals); ``Live.check`` adds what this server must not name.
- A tally of every answer, printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from multidict import CIMultiDict

from proxy.app import create_app
from proxy.config import ByteSize, Config
from proxy.web.server import ProxyRunner
from tests.conftest import Backend, MiB, StoreView

LIMIT = MiB  # server.max_upload_bytes of the default live server
INLINE = "site/"  # server.inline_prefixes
TRUSTED = "https://trusted.example"  # server.allowed_origins
EVIL = "https://evil.example"
TIMEOUT = 15.0  # seconds any single exchange may take: a hang fails, it does not block
TUS: tuple[tuple[str, str], ...] = (("Tus-Resumable", "1.0.0"),)
OFFSET = ("Content-Type", "application/offset+octet-stream")
# What an answer must never contain, whatever the request: a Python traceback, library
# internals, and the proxy's own keys (the message naming the reserved prefix itself,
# ".stream-proxy/ are reserved", is documentation, not an internal key).
ALWAYS_FORBIDDEN = (b"Traceback", b"site-packages", b'File "', b"botocore", b"aiohttp/")
INTERNAL_KEY = re.compile(rb"\.stream-proxy/(?:tmp|meta|uploads)/")
REQUEST_ID = re.compile(r"[0-9a-f]{32}")

Header = tuple[str, str | bytes]


# -- the tally ------------------------------------------------------------------------------------------


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)

    def record(self, answer: Answer) -> None:
        if 100 <= answer.status < 200:
            self.counts["interim 1xx"] += 1
            return
        self.counts["tried"] += 1
        if answer.status == 0:
            self.counts["no answer"] += 1
        else:
            self.counts[f"{answer.status // 100}xx"] += 1
        if answer.status == 500:
            self.counts["500"] += 1
        if answer.status >= 500:
            self.counts[f"status {answer.status}"] += 1

    def summary(self) -> str:
        c = self.counts
        classes = " ".join(f"{k}={c[k]}" for k in ("2xx", "3xx", "4xx", "5xx"))
        fives = ", ".join(f"{k}: {v}" for k, v in sorted(c.items()) if k.startswith("status "))
        return (
            f"adversarial tally: {c['tried']} requests whose answer was read; {classes}; "
            f"500s={c['500']}; no answer (connection closed)={c['no answer']}; "
            f"interim 100 Continue={c['interim 1xx']}; 5xx by status: {fives or 'none'}"
        )


TALLY = Tally()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TALLY.counts["tried"]:
        terminalreporter.write_sep("-", "adversarial tally")
        terminalreporter.write_line(TALLY.summary())


# -- raw HTTP ---------------------------------------------------------------------------------------------


@dataclass(repr=False)
class Answer:
    """One HTTP response as the bytes on the wire said it. ``status`` 0: the server
    closed the connection without answering."""

    status: int
    reason: str = ""
    version: str = ""
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    body: bytes = b""
    raw: bytes = b""  # the head and body as received
    interim: list[Answer] = field(default_factory=list)  # 1xx answers before this one
    truncated: bool = False  # fewer body bytes than Content-Length announced
    closed: bool | None = None  # the server closed the connection after it (None: not looked)
    extra: bytes = b""  # bytes after the answer, before the connection closed
    head: bool = False  # the answer to a HEAD: a head only

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str | None:
        try:
            found = self.json().get("error")
        except (ValueError, AttributeError):
            return None
        return found if isinstance(found, str) else None

    def __repr__(self) -> str:
        return f"<{self.status} {self.reason} {dict(self.headers)} {self.body[:300]!r}>"


class Connection:
    """A raw client connection: send bytes whenever, read answers one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024 * 1024)
        return cls(reader, writer)

    async def send(self, data: bytes) -> bool:
        """Send ``data``; False if the server had already closed the connection."""
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            return False
        return True

    def shutdown_write(self) -> None:
        """Half-close: the server sees the end of the request stream."""
        with contextlib.suppress(OSError, RuntimeError):
            self.writer.write_eof()

    async def read_answer(self, *, head_request: bool = False, wait: float = TIMEOUT) -> Answer:
        """The next answer, 1xx included; status 0 if the connection ended first."""
        answer = await self._read_answer(head_request, wait)
        TALLY.record(answer)
        return answer

    async def _read_answer(self, head_request: bool, wait: float) -> Answer:
        async with asyncio.timeout(wait):
            try:
                head = await self.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                return Answer(0, raw=exc.partial, closed=True)
            except (ConnectionError, asyncio.LimitOverrunError):
                return Answer(0, closed=True)
            status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
            version, _, rest = status_line.partition(" ")
            code, _, reason = rest.partition(" ")
            headers: CIMultiDict[str] = CIMultiDict()
            for line in lines:
                name, _, value = line.partition(":")
                headers.add(name.strip(), value.strip())
            answer = Answer(int(code), reason, version, headers, raw=head, head=head_request)
            if head_request or answer.status < 200 or answer.status in (204, 304):
                return answer
            if "chunked" in headers.get("Transfer-Encoding", "").lower():
                answer.body = await self._read_chunked(answer)
            elif "Content-Length" in headers:
                want = int(headers["Content-Length"])
                try:
                    answer.body = await self.reader.readexactly(want)
                except asyncio.IncompleteReadError as exc:
                    answer.body, answer.truncated = exc.partial, True
                except ConnectionError:
                    answer.truncated = True
            else:
                answer.body = await self._read_to_eof()
                answer.closed = True
            answer.raw += answer.body
            return answer

    async def _read_chunked(self, answer: Answer) -> bytes:
        body = bytearray()
        try:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    return bytes(body)
                body += await self.reader.readexactly(size + 2)
                del body[-2:]
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            answer.truncated = True
            return bytes(body)

    async def _read_to_eof(self) -> bytes:
        data = bytearray()
        with contextlib.suppress(ConnectionError):
            while chunk := await self.reader.read(65536):
                data += chunk
        return bytes(data)

    async def wait_closed(self, wait: float) -> tuple[bool, bytes]:
        """Whether the server closes the connection within ``wait`` seconds, and what
        it sent before that."""
        try:
            async with asyncio.timeout(wait):
                return True, await self._read_to_eof()
        except TimeoutError:
            return False, b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def exchange(
    port: int,
    request: bytes,
    *,
    wait: float = TIMEOUT,
    close_wait: float = 2.0,
    head_request: bool | None = None,
) -> Answer:
    """Send ``request`` (all of it, while already reading: the server may answer and
    close before it has read the body), and read the final answer after any 1xx ones.
    Then wait up to ``close_wait`` seconds for the server to close the connection."""
    if head_request is None:
        head_request = request.startswith(b"HEAD ")
    conn = await Connection.open(port)
    try:
        sending = asyncio.create_task(conn.send(request))
        interim: list[Answer] = []
        while True:
            answer = await conn.read_answer(head_request=head_request, wait=wait)
            if not 100 <= answer.status < 200:
                break
            interim.append(answer)
        answer.interim = interim
        with contextlib.suppress(asyncio.CancelledError):
            sending.cancel()
            await sending
        if answer.closed is None and close_wait > 0:
            answer.closed, answer.extra = await conn.wait_closed(close_wait)
    finally:
        await conn.close()
    return answer


def build_request(
    method: str,
    target: str | bytes,
    headers: Iterable[Header] = (),
    body: bytes | None = None,
    *,
    host: str | None,
    version: str = "HTTP/1.1",
    close: bool = True,
) -> bytes:
    """A request exactly as given: str is sent as UTF-8, bytes as they are. Adds Host
    (unless None or given), Connection: close, and a Content-Length for ``body``
    unless the headers frame it themselves."""
    given = list(headers)
    names = {name.lower() for name, _ in given}
    extra: list[Header] = []
    if host is not None and "host" not in names:
        extra.append(("Host", host))
    if close and "connection" not in names:
        extra.append(("Connection", "close"))
    if body is not None and not names & {"content-length", "transfer-encoding"}:
        extra.append(("Content-Length", str(len(body))))
    raw_target = target.encode("utf-8") if isinstance(target, str) else target
    out = bytearray(method.encode("ascii") + b" " + raw_target + b" " + version.encode("ascii") + b"\r\n")
    for name, value in extra + given:
        out += name.encode("latin-1") + b": " + (value.encode("utf-8") if isinstance(value, str) else value)
        out += b"\r\n"
    out += b"\r\n"
    return bytes(out) + (body or b"")


def chunked(*pieces: bytes) -> bytes:
    """A chunked body of ``pieces``, properly ended."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode("utf-8") if isinstance(text, str) else text).decode("ascii")


def form_part(
    name: str, data: bytes, filename: str | bytes | None = None, content_type: str | None = None
) -> bytes:
    """One part of a multipart/form-data body (without its delimiter)."""
    disposition = f'form-data; name="{name}"'.encode()
    if isinstance(filename, str):  # a quoted-string, as clients escape it
        filename = filename.replace("\\", "\\\\").replace('"', '\\"').encode()
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    head = b"Content-Disposition: " + disposition + b"\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n".encode()
    return head + b"\r\n" + data


def multipart(parts: Sequence[bytes], boundary: str = "adv-boundary-7d3f", *, close: bool = True) -> bytes:
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    return body + (b"--" + boundary.encode() + b"--\r\n" if close else b"")


def form_type(boundary: str = "adv-boundary-7d3f") -> Header:
    return ("Content-Type", f"multipart/form-data; boundary={boundary}")


# -- what every answer must be ------------------------------------------------------------------------------


def assert_safe(
    answer: Answer,
    forbidden: Iterable[bytes] = (),
    *,
    allow_5xx: Iterable[int] = (),
    allow_no_answer: bool = False,
) -> Answer:
    """What every answer of the server must be; returns ``answer`` for chaining."""
    if answer.status == 0:
        assert allow_no_answer, f"the server closed the connection without answering: {answer.raw[:300]!r}"
        return answer
    assert answer.status < 500 or answer.status in set(allow_5xx), f"server error: {answer}"
    assert answer.headers.get("X-Content-Type-Options") == "nosniff", answer
    assert answer.headers.getall("Server", []) == ["stream-proxy"], answer
    rid = answer.headers.get("X-Request-ID", "")
    assert REQUEST_ID.fullmatch(rid), answer
    assert not answer.truncated, f"the body ended before its Content-Length: {answer}"
    assert answer.extra == b"", f"bytes after the answer: {answer.extra[:200]!r}"
    if answer.status >= 400:
        assert answer.headers.get("Content-Type", "").startswith("application/json"), answer
        if not answer.head:  # the answer to a HEAD has the head of the JSON error only
            body = answer.json()
            assert isinstance(body, dict), answer
            assert isinstance(body.get("error"), str) and body["error"], answer
            assert isinstance(body.get("message"), str) and body["message"], answer
            assert body.get("request_id") == rid, answer
    for interim in answer.interim:
        assert interim.status == 100, f"unexpected interim answer {interim}"
    for needle in (*ALWAYS_FORBIDDEN, *forbidden):
        assert needle not in answer.raw, f"the answer leaks {needle!r}: {answer}"
    assert not INTERNAL_KEY.search(answer.raw), f"the answer names an internal key: {answer}"
    for name, value in answer.headers.items():
        assert "python" not in value.lower() and "aiohttp" not in value.lower(), (name, value)
    return answer


def expect_error(answer: Answer, status: int, error: str | None = None, case: object = "") -> Answer:
    assert answer.status == status, f"{case}: {answer}"
    if error is not None:
        assert answer.error == error, f"{case}: {answer}"
    return answer


# -- the live server --------------------------------------------------------------------------------------


def _snapshot(top: Path, skip: Path | None) -> dict[str, str]:
    """Every entry under ``top`` but ``skip``: its type and content hash or link target."""
    found: dict[str, str] = {}
    if not top.exists():
        return found
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        if skip is not None:
            dirnames[:] = [d for d in dirnames if here / d != skip]
        for name in dirnames + filenames:
            path = here / name
            rel = str(path.relative_to(top))
            if path.is_symlink():
                found[rel] = "link " + os.readlink(path)
            elif path.is_file():
                found[rel] = "file " + hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[rel] = "dir"
    return found


@dataclass
class Live:
    """A running server, where its storage is, and what it must never give away."""

    backend: Backend
    port: int
    tmp: Path
    root: Path | None  # the local backend's root, resolved
    outside: Path  # a directory beside the root, out of every request's reach
    secret: Path  # a file in it
    marker: str  # the secret file's content, never in any answer
    forbidden: tuple[bytes, ...]
    before: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Live({self.name} on port {self.port})"

    @property
    def view(self) -> StoreView:
        return self.backend.view

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        return f"http://{self.host}"

    def build(
        self,
        method: str,
        target: str | bytes,
        headers: Iterable[Header] = (),
        body: bytes | None = None,
        **kwargs: Any,
    ) -> bytes:
        kwargs.setdefault("host", self.host)
        return build_request(method, target, headers, body, **kwargs)

    async def exchange(self, request: bytes, **kwargs: Any) -> Answer:
        return await exchange(self.port, request, **kwargs)

    async def request(
        self,
        method: str,
        target: str | bytes,
        headers: Iterable[Header] = (),
        body: bytes | None = None,
        **kwargs: Any,
    ) -> Answer:
        timing = {k: kwargs.pop(k) for k in ("wait", "close_wait") if k in kwargs}
        return await self.exchange(self.build(method, target, headers, body, **kwargs), **timing)

    def check(self, answer: Answer, **kwargs: Any) -> Answer:
        return assert_safe(answer, self.forbidden, **kwargs)

    async def safe(
        self,
        method: str,
        target: str | bytes,
        headers: Iterable[Header] = (),
        body: bytes | None = None,
        **kwargs: Any,
    ) -> Answer:
        """A request whose answer must pass every check (``allow_5xx`` aside)."""
        checks = {k: kwargs.pop(k) for k in ("allow_5xx", "allow_no_answer") if k in kwargs}
        return self.check(await self.request(method, target, headers, body, **kwargs), **checks)

    async def put(self, key: str, data: bytes = b"data", content_type: str | None = None) -> Answer:
        headers = [] if content_type is None else [("Content-Type", content_type)]
        answer = await self.safe("PUT", f"/files/{key}", headers, data)
        assert answer.status == 201, answer
        return answer

    async def tus_create(self, length: int | None, *headers: Header, body: bytes | None = None) -> str:
        """A new upload's path (/uploads/<id>)."""
        sized: list[Header] = [("Upload-Length", str(length))] if length is not None else []
        if length is None:
            sized = [("Upload-Defer-Length", "1")]
        if body is not None:
            sized.append(OFFSET)
        answer = await self.safe("POST", "/uploads/", [*TUS, *sized, *headers], body)
        assert answer.status == 201, answer
        return urlsplit(answer.headers["Location"]).path

    async def tus_offset(self, location: str) -> int:
        answer = await self.safe("HEAD", location, TUS)
        assert answer.status == 200, answer
        return int(answer.headers["Upload-Offset"])

    def outside_now(self) -> dict[str, str]:
        return _snapshot(self.tmp, self.root)

    def assert_outside_intact(self) -> None:
        assert self.secret.read_text() == self.marker
        assert self.outside_now() == self.before, "something outside the storage root changed"


StartLive = Callable[..., Awaitable[Live]]


async def _serve(config: Config) -> tuple[ProxyRunner, int]:
    """The app behind ProxyRunner on a socket site, as ``stream-proxy serve`` runs it."""
    runner = ProxyRunner(create_app(config), shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    try:
        await web.SockSite(runner, sock).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    return runner, int(sock.getsockname()[1])


def _forbidden(config: Config, tmp: Path, marker: str) -> tuple[bytes, ...]:
    found = {str(tmp), str(tmp.resolve()), marker}
    s3 = config.storage.s3
    if config.storage.backend == "s3":
        found.add(s3.bucket)
        if s3.endpoint_url:
            found.add(s3.endpoint_url)
            parts = urlsplit(s3.endpoint_url)
            found.add(f"{parts.hostname}:{parts.port}")
            found.add(f"localhost:{parts.port}")
    return tuple(sorted(s.encode() for s in found if s))


@pytest.fixture
async def start_live(backend: Backend, tmp_path: Path) -> AsyncIterator[StartLive]:
    """Starts servers on ``backend`` (or on ``config``), with server settings replaced
    by ``settings``; each is stopped, and the outside checked, at the end."""
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    marker = f"SECRET-{uuid.uuid4().hex}"
    secret = outside / "secret.txt"
    secret.write_text(marker)
    (outside / "dir" / "secret.txt").write_text(marker)
    runners: list[ProxyRunner] = []
    lives: list[Live] = []

    async def start(*, config: Config | None = None, **settings: Any) -> Live:
        base = config or backend.config
        server = replace(
            base.server,
            **{
                "max_upload_bytes": ByteSize(LIMIT),
                "inline_prefixes": (INLINE,),
                "allowed_origins": (TRUSTED,),
                **settings,
            },
        )
        full = replace(base, server=server)
        runner, port = await _serve(full)
        runners.append(runner)
        root = full.storage.local.root.resolve() if full.storage.backend == "local" else None
        live = Live(
            replace(backend, config=full),
            port,
            tmp_path,
            root,
            outside,
            secret,
            marker,
            _forbidden(full, tmp_path, marker),
        )
        live.before = live.outside_now()
        lives.append(live)
        return live

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()
    for live in lives:
        live.assert_outside_intact()


@pytest.fixture
async def live(start_live: StartLive) -> Live:
    """The server on the test's backend with the suite's settings (LIMIT, INLINE, TRUSTED)."""
    return await start_live()
