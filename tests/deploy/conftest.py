"""Real nginx (Debian's /usr/sbin/nginx) with the shipped deploy/nginx/stream-proxy.conf
in front of two ``stream-proxy serve`` processes sharing one real RGW bucket.

``nginx_front`` starts all of it on random 127.0.0.1 ports and stops it afterwards. The
test writes the surrounding nginx.conf (a temporary prefix for pid, logs and temporary
files, ``daemon off``, ``master_process on``) and includes the shipped file with its
``listen`` and upstream ``server`` lines pointed at the test's ports; everything else in
it is used as shipped. An instance can be stopped (SIGTERM by default) and started
again on its port, as a restart test needs; each writes its log (the access log among
it) to a file of its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import S3Endpoint, S3View, free_port, make_bucket, require

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "nginx" / "stream-proxy.conf"
NGINX = Path("/usr/sbin/nginx")
STREAM_PROXY = Path(sys.executable).parent / "stream-proxy"
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
START_TIMEOUT = 30.0
_UPSTREAM_SERVER = re.compile(r"^(\s*)server 127\.0\.0\.1:\d+([^;]*);\n", re.MULTILINE)


def require_nginx() -> Path:
    require(NGINX.exists(), f"{NGINX} is missing (Debian's nginx-light package)")
    return NGINX


def wait_for_port(port: int, alive: subprocess.Popen[bytes], log: Path) -> None:
    """Until ``port`` accepts a connection; fails if the process ends first."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if alive.poll() is not None:
            pytest.fail(f"exited with {alive.returncode} before listening:\n{tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    pytest.fail(f"not listening on {port} after {START_TIMEOUT} s:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Signal ``proc`` and wait for it; SIGKILL if it has not ended in ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


@dataclass
class Instance:
    """One ``stream-proxy serve`` process behind nginx."""

    name: str
    port: int
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def start(self) -> None:
        """Start the process (again: on the same port, appending to the same log) and
        wait until it listens."""
        self.launch()
        self.wait_listening()

    def launch(self) -> None:
        assert self.process is None or self.process.poll() is not None, f"{self.name} is running"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(STREAM_PROXY), "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.config_path.parent,
            )

    def wait_listening(self) -> None:
        assert self.process is not None, f"{self.name} was never started"
        wait_for_port(self.port, self.process, self.log_path)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the process and wait for it to end; its exit status."""
        assert self.process is not None, f"{self.name} was never started"
        return stop_process(self.process, sig, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class NginxFront:
    url: str
    port: int
    prefix: Path  # nginx's -p: its config, logs and temporary directories
    process: subprocess.Popen[bytes]
    instances: list[Instance]
    endpoint: S3Endpoint
    bucket: str
    view: S3View
    error_log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.error_log = self.prefix / "error.log"

    def temp_dir(self, name: str) -> Path:
        """One of nginx's temporary directories: ``client_body`` or ``proxy``."""
        return self.prefix / f"temp-{name}"

    def worker_pids(self) -> list[int]:
        return children_of(self.process.pid)

    def access_log(self) -> str:
        return (self.prefix / "access.log").read_text(errors="replace")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # The field after the parenthesised command (which may hold spaces) is the state, then ppid.
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def rss_kib(pid: int) -> int:
    """The process's resident memory (VmRSS) in KiB; 0 once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def shipped_with_ports(listen_port: int, upstream_ports: list[int]) -> str:
    """The shipped file, listening on ``listen_port`` and proxying to ``upstream_ports``."""
    text = SHIPPED.read_text()
    servers = _UPSTREAM_SERVER.findall(text)
    assert servers, f"no 'server 127.0.0.1:PORT ...;' line in the upstream block of {SHIPPED}"
    indent, params = servers[0]
    lines = "".join(f"{indent}server 127.0.0.1:{port}{params};\n" for port in upstream_ports)
    text = _UPSTREAM_SERVER.sub("", text, count=len(servers) - 1)
    text = _UPSTREAM_SERVER.sub(lines, text, count=1)
    assert text.count("    listen 80;\n") == 1, f"{SHIPPED} must listen on port 80 in one place"
    return text.replace("    listen 80;\n", f"    listen 127.0.0.1:{listen_port};\n")


def nginx_conf(prefix: Path, listen_port: int, upstream_ports: list[int], workers: int) -> str:
    """The surrounding nginx.conf: what Debian's stock file sets, pointed at ``prefix``."""
    (prefix / "stream-proxy.conf").write_text(shipped_with_ports(listen_port, upstream_ports))
    temp = "\n".join(f"    {name}_temp_path {prefix / ('temp-' + name)};" for name in TEMP_PATHS)
    # As root, workers would otherwise run as nobody, who cannot write to the prefix.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return f"""{user}daemon off;
master_process on;
worker_processes {workers};
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} info;
events {{
    worker_connections 1024;
}}
http {{
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    log_format upstreams '$remote_addr "$request" "$sent_http_location" "$sent_http_object_location" '
                         '$status $body_bytes_sent $request_id $upstream_addr';
    access_log {prefix / "access.log"} upstreams;
    gzip on;
{temp}
    include {prefix / "stream-proxy.conf"};
}}
"""


def instance_config(port: int, endpoint: S3Endpoint, bucket: str, extra: str = "") -> str:
    return f"""[server]
host = "127.0.0.1"
port = {port}
trusted_proxies = ["127.0.0.1"]
shutdown_timeout = 10
{extra}
[storage]
backend = "s3"

[storage.s3]
bucket = "{bucket}"
endpoint_url = "{endpoint.url}"
region = "{endpoint.region}"
addressing_style = "path"
memory_budget = "96MiB"
"""


@contextlib.contextmanager
def nginx_front_running(
    tmp_path: Path, endpoint: S3Endpoint, bucket: str, *, workers: int = 1, server_settings: str = ""
) -> Iterator[NginxFront]:
    """nginx with ``workers`` worker processes before two instances on ``bucket``.

    One worker by default, so that round robin alternates strictly between the
    instances from one request to the next (each worker keeps its own turn)."""
    nginx = require_nginx()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    instances = []
    for name in ("a", "b"):
        directory = tmp_path / f"instance-{name}"
        directory.mkdir()
        port = free_port()
        config = directory / "config.toml"
        config.write_text(instance_config(port, endpoint, bucket, server_settings))
        instances.append(Instance(name, port, config, directory / "serve.log"))
    listen = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, listen, [i.port for i in instances], workers))
    started: list[Instance] = []
    proc: subprocess.Popen[bytes] | None = None
    try:
        for instance in instances:  # side by side: each takes seconds to import and start
            instance.launch()
            started.append(instance)
        for instance in instances:
            instance.wait_listening()
        with open(prefix / "stderr.log", "wb") as err:
            argv = [str(nginx), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
            proc = subprocess.Popen(argv, stdout=err, stderr=subprocess.STDOUT)
        wait_for_port(listen, proc, prefix / "error.log")
        yield NginxFront(
            f"http://127.0.0.1:{listen}",
            listen,
            prefix,
            proc,
            instances,
            endpoint,
            bucket,
            S3View(endpoint, bucket),
        )
    finally:
        if proc is not None:
            stop_process(proc, signal.SIGQUIT, timeout=10)  # nginx's graceful stop
        # SIGINT: a clean stop without SIGTERM's drain delay (nothing is left to drain).
        running = [i.process for i in started if i.process is not None and i.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGINT)
        for process in running:
            stop_process(process, signal.SIGINT)


def fresh_bucket(endpoint: S3Endpoint) -> Iterator[str]:
    """A new bucket on ``endpoint``, removed afterwards; a server that does not answer
    skips the test (fails it under CI)."""
    parts = urlsplit(endpoint.url)
    try:
        socket.create_connection((parts.hostname, parts.port or 80), timeout=5).close()
        reachable = True
    except OSError:
        reachable = False
    require(reachable, f"the real S3 server at {endpoint.url} does not answer")
    yield from make_bucket(endpoint)


@pytest.fixture
def nginx_front(tmp_path: Path, real_s3: S3Endpoint) -> Iterator[NginxFront]:
    """nginx before two instances on a fresh bucket of the real RGW."""
    require_nginx()
    for bucket in fresh_bucket(real_s3):
        with nginx_front_running(tmp_path, real_s3, bucket) as front:
            yield front


@pytest.fixture(scope="module")
def shared_nginx_front(tmp_path_factory: pytest.TempPathFactory, real_s3: S3Endpoint) -> Iterator[NginxFront]:
    """One nginx_front for the tests of a module that only add objects of their own
    (starting two instances costs seconds each time)."""
    require_nginx()
    for bucket in fresh_bucket(real_s3):
        with nginx_front_running(tmp_path_factory.mktemp("front"), real_s3, bucket) as front:
            yield front
