"""Helpers for tests of real `stream-proxy serve` processes: HTTP/1.1 exchanges on
raw connections, paced as a slow client would, and which process holds which socket
(read from /proc, so that no answer needs to name its process)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    sent: int = 0  # body bytes written so far
    log: list[str] = field(default_factory=list)

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def local_port(self) -> int:
        return int(self.writer.get_extra_info("sockname")[1])

    async def send_head(self, method: str, path: str, headers: dict[str, str] | None = None) -> None:
        lines = [
            f"{method} {path} HTTP/1.1",
            "Host: test",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()

    async def send_body(self, data: bytes, *, rate: float | None = None, piece: int = 256 * 1024) -> None:
        """``data``, at about ``rate`` bytes per second (None: as fast as it goes)."""
        for start in range(0, len(data), piece):
            chunk = data[start : start + piece]
            self.writer.write(chunk)
            await self.writer.drain()
            self.sent += len(chunk)
            if rate:
                await asyncio.sleep(len(chunk) / rate)

    async def answer(self, *, read_rate: float | None = None, head: bool = False) -> Answer:
        """The next answer (its body by Content-Length, none to a ``head`` request),
        read at about ``read_rate``."""
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = 0 if head else int(headers.get("content-length", "0"))
        body = bytearray()
        while len(body) < length:
            chunk = await self.reader.read(min(256 * 1024, length - len(body)))
            if not chunk:
                raise ConnectionError(f"closed after {len(body)} of {length} bytes")
            body += chunk
            if read_rate:
                await asyncio.sleep(len(chunk) / read_rate)
        return Answer(int(status_line.split()[1]), headers, bytes(body))

    def close(self) -> None:
        self.writer.transport.abort()


async def request(port: int, method: str, path: str, body: bytes = b"", **headers: str) -> Answer:
    """One request on a connection of its own."""
    connection = await Connection.open(port)
    try:
        await connection.send_head(method, path, {"Content-Length": str(len(body)), **headers})
        await connection.send_body(body)
        return await connection.answer(head=method == "HEAD")
    finally:
        connection.close()


async def trickle_until_cut(connection: Connection, data: bytes, *, rate: float) -> None:
    """Send ``data`` at ``rate`` until the server closes the connection (which is
    what it must do to an upload still running when its shutdown timeout is over)."""
    with contextlib.suppress(ConnectionError):
        await connection.send_body(data, rate=rate, piece=64 * 1024)


def children(pid: int) -> list[int]:
    """The child processes of ``pid``."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def exited(pid: int) -> bool:
    """Whether ``pid`` has ended with all its threads: gone, or a zombie left alone in
    its thread group. A multi-threaded process's leader turns zombie as soon as its own
    thread ends, while the others (an executor's) may still be ending, holding the
    file table, sockets among them, that /proc/PID/fd no longer shows: so neither a
    zombie leader nor an empty socket_inodes() tells that its listener is closed."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X") and threads == 1


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` has open."""
    inodes: set[int] = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:  # gone, or a zombie: it holds no sockets
        return inodes
    for fd in fds:
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


LISTEN, ESTABLISHED = "0A", "01"


def tcp_sockets(port: int, state: str) -> dict[int, int]:
    """TCP sockets on local ``port`` in ``state``: inode -> remote port."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                local, remote, st, inode = fields[1], fields[2], fields[3], int(fields[9])
                if int(local.rsplit(":", 1)[1], 16) == port and st == state:
                    found[inode] = int(remote.rsplit(":", 1)[1], 16)
    return found


def serving_pids(port: int, pids: list[int]) -> list[int]:
    """Those of ``pids`` that hold a socket listening on ``port``."""
    listening = set(tcp_sockets(port, LISTEN))
    return [pid for pid in pids if socket_inodes(pid) & listening]


def owner_of(port: int, client_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server end of the connection from ``client_port``."""
    server_ends = {inode for inode, remote in tcp_sockets(port, ESTABLISHED).items() if remote == client_port}
    return next((pid for pid in pids if socket_inodes(pid) & server_ends), None)
