"""Out of file descriptors: a real ``stream-proxy serve`` with ``ulimit -n 256`` and
more idle clients than that answers 503 on the connections it has, logs the
condition a few times rather than once per failure, and serves again once the
clients leave. Both backends: a local read or write needs a file, an S3 one a socket."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import signal
import subprocess
import sys

from proxy.web.descriptors import out_of_descriptors
from tests.conftest import ROOT, Backend, S3View, backend_settings, free_port, wait_for_port, wait_until
from tests.web.served import Answer, request_on

LIMIT = 256
IDLE_CLIENTS = 300
MENTIONS = ("descriptor", "Too many open files", "out of system resource", "EMFILE")


def _low_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def store_before_start(backend: Backend, key: str, data: bytes) -> None:
    if isinstance(backend.view, S3View):
        backend.view.client.put_object(Bucket=backend.view.bucket, Key=key, Body=data)
    else:
        root = backend.config.storage.local.root
        root.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)


async def test_out_of_descriptors_is_503_and_passes(backend: Backend) -> None:
    data = os.urandom(100_000)
    store_before_start(backend, "obj.bin", data)
    port = free_port()
    settings = {
        **backend_settings(backend),
        # Nothing is closed for idling during the test: the clients must hold on.
        "server_head_timeout": "300",
        "server_keepalive_timeout": "300",
        # One attempt: botocore's retries would only make the 503 slower.
        "storage_s3_max_attempts": "1",
    }
    env = {**os.environ, **{f"STREAM_PROXY_{k.upper()}": v for k, v in settings.items()}}
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "proxy", "serve", "--config", "config.toml", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=_low_limit,
    )
    lines: list[str] = []

    async def collect() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            lines.append(line.decode(errors="replace"))

    collecting = asyncio.create_task(collect())
    idle: list[asyncio.StreamWriter] = []
    kept: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await wait_for_port(port)
        # Connections opened while descriptors are free, each shown to be served.
        for _ in range(4):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert (await request_on(reader, writer, "OPTIONS", "/uploads/")).status == 204
            kept.append((reader, writer))
        for _ in range(IDLE_CLIENTS):
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(5):
                    idle.append((await asyncio.open_connection("127.0.0.1", port))[1])
        # The accept loop has failed for want of a descriptor (as the log says).
        accept_failed = ("while accepting connections", "socket.accept() out of system resource")
        await wait_until(lambda: any(words in line for line in lines for words in accept_failed), 20)

        # Requests that need a descriptor, on the connections the server has: 503.
        answers: tuple[Answer, ...] = await asyncio.gather(
            request_on(*kept[0], "GET", "/files/obj.bin"),
            request_on(*kept[1], "PUT", "/files/new.bin", b"new bytes"),
            request_on(*kept[2], "GET", "/files/obj.bin"),
            request_on(*kept[3], "PUT", "/files/other.bin", b"other bytes"),
        )
        busy = [a for a in answers if a.status == 503]
        for answer in busy:
            body = answer.json()
            assert body["error"] == "server_busy" and body["request_id"] == answer.headers["X-Request-ID"]
            assert int(answer.headers["Retry-After"]) > 0
        # Local: each needs a file. On S3 a request may still find an idle pooled
        # connection (the backend's own background calls leave some): it succeeds.
        others = [a.status for a in answers if a.status != 503]
        assert all(status in (200, 201) for status in others), answers
        assert len(busy) == 4 if backend.name == "local" else len(busy) >= 1, answers
        await asyncio.sleep(3)  # the accept loop keeps failing meanwhile

        # The clients leave; the server serves again.
        for writer in idle:
            writer.close()
        async with asyncio.timeout(30):
            while True:
                with contextlib.suppress(OSError):
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    answer = await request_on(reader, writer, "GET", "/files/obj.bin")
                    writer.close()
                    if answer.status == 200:
                        assert answer.body == data
                        break
                    assert answer.status == 503, answer
                await asyncio.sleep(0.5)
        # Out of descriptors again, and stopped meanwhile: a clean exit all the same.
        for _ in range(IDLE_CLIENTS):
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(5):
                    idle.append((await asyncio.open_connection("127.0.0.1", port))[1])
        await asyncio.sleep(2.5)
    finally:
        for writer in idle + [w for _, w in kept]:
            writer.close()
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
        await collecting
    output = "".join(lines)
    mentions = [line for line in lines if any(word in line for word in MENTIONS)]
    assert 1 <= len(mentions) < 20, output[-5000:]
    assert "server.max_connections (1000) is not below the descriptor limit" in output  # said at start
    assert "Traceback" not in output, output[-5000:]
    assert proc.returncode == 0, output[-5000:]


def test_out_of_descriptors_is_found_through_wrapping_errors() -> None:
    def exhausted() -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    try:
        try:
            exhausted()
        except OSError as exc:
            raise ConnectionError("could not connect") from exc
    except ConnectionError as wrapped:
        try:
            raise RuntimeError("the storage failed")  # raised while handling it
        except RuntimeError as outer:
            assert out_of_descriptors(outer)
            assert out_of_descriptors(wrapped)
    assert not out_of_descriptors(OSError(errno.ENOENT, "No such file"))
    assert not out_of_descriptors(ValueError("nothing"))
    assert not out_of_descriptors(None)


# asyncio's accept loop, out of descriptors: every failed accept logs a traceback and
# schedules a retry for a second later (128 of each per event, as it goes on trying
# the rest of the backlog), and the retries that come after the server has closed
# its socket fail again, on descriptor -1.
ACCEPT_FAILURES = """
import asyncio, logging, os, resource, socket, sys
from proxy.web.descriptors import loop_exception_handler

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

async def main():
    asyncio.get_running_loop().set_exception_handler(loop_exception_handler)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    client = socket.socket()
    client.setblocking(False)
    fillers = []
    try:
        while True:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    try:
        client.connect(server.sockets[0].getsockname())  # waits in the backlog
    except BlockingIOError:
        pass
    await asyncio.sleep(1.5)
    server.close()  # as at shutdown, with retries pending
    await asyncio.sleep(1.5)
    print("done")

asyncio.run(main())
"""


def test_accept_failures_are_logged_once_and_retries_after_close_are_quiet() -> None:
    result = subprocess.run(
        [sys.executable, "-c", ACCEPT_FAILURES], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "done" in output, output[-3000:]
    mentions = [line for line in output.splitlines() if any(word in line for word in MENTIONS)]
    assert len(mentions) == 1, output[-3000:]
    assert "Traceback" not in output and "Exception in callback" not in output, output[-3000:]
