"""nginx serving a directory: the reference for the local backend's downloads."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from bench.servers import HOST, free_port, log, server_process
from bench.settings import BenchError

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


@dataclass
class NginxProcess:
    proc: asyncio.subprocess.Process
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in NGINX_CANDIDATES if Path(p).is_file()), None)
    if found is None:
        raise BenchError("nginx is not installed (apt-get install nginx): the local download reference")
    return found


def single_process_config(directory: Path, http: str) -> str:
    """A config of one nginx process (no master, no daemon) keeping its files in
    ``directory``, with the ``http`` block's own directives; no access log."""
    temp = "\n".join(f"    {name}_temp_path {directory / ('temp-' + name)};" for name in TEMP_PATHS)
    return f"""daemon off;
master_process off;
worker_processes 1;
error_log {directory / "error.log"};
pid {directory / "nginx.pid"};
events {{}}
http {{
    access_log off;
{temp}
{http}
}}
"""


def nginx_config(directory: Path, root: Path, port: int) -> str:
    """A minimal single-process static file server of ``root``."""
    return single_process_config(
        directory,
        f"""    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    server {{
        listen {HOST}:{port};
        root {root};
        location / {{}}
    }}""",
    )


@contextlib.asynccontextmanager
async def nginx_with(
    config_of: Callable[[Path, int], str], label: str, serving: str
) -> AsyncIterator[NginxProcess]:
    """nginx on a free loopback port, from the config ``config_of(directory, port)``
    writes for a temporary directory; killed and the directory removed afterwards.
    ``label`` names it in errors, ``serving`` says what it serves in the log."""
    binary = nginx_binary()
    directory, port = Path(tempfile.mkdtemp(prefix="stream-proxy-bench-nginx-")), free_port()
    config = directory / "nginx.conf"
    config.write_text(config_of(directory, port))
    error_log = directory / "error.log"
    argv = [binary, "-p", str(directory), "-c", str(config), "-e", str(error_log)]
    try:
        async with server_process(
            argv,
            label=label,
            port=port,
            time_limit=15,
            log_path=error_log,
            log_lines=20,
            capture_output=False,
        ) as proc:
            log(f"nginx {binary} {serving} on port {port}")
            yield NginxProcess(proc, port, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_nginx(root: Path) -> contextlib.AbstractAsyncContextManager[NginxProcess]:
    """nginx serving ``root`` (see nginx_with)."""
    resolved = root.resolve()
    return nginx_with(
        lambda directory, port: nginx_config(directory, resolved, port), "nginx", f"serving {root}"
    )
