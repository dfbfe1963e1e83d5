"""nginx as a reverse proxy to a public-read object on the S3 server: the reference
for small S3 range requests (issue 17), what a user would put in front of a bucket
instead of the proxy.

One nginx process (no master), an upstream of the S3 endpoint with keep-alive
connections, HTTP/1.1 to it, the endpoint's own Host header, 256 KiB proxy buffers
(the issue's measurement) and no access log. S3 answers anonymous GETs of an object
only once it is public-read: :func:`make_public` sets that ACL on one object.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from bench.nginx import NginxProcess, nginx_with, single_process_config
from bench.servers import HOST
from bench.settings import BenchError

# Idle keep-alive connections nginx keeps to the S3 server: at least the 32 clients
# of the concurrent-range row, so that none waits for a new connection.
UPSTREAM_KEEPALIVE = 64


def upstream_address(endpoint_url: str) -> str:
    """``host:port`` of an http:// endpoint URL: nginx's upstream server, and the Host
    header it sends (the endpoint's own, as a client of the bucket would)."""
    parts = urlsplit(endpoint_url)
    if parts.scheme != "http" or not parts.hostname:
        raise BenchError(f"nginx S3 reference: expected an http:// endpoint, got {endpoint_url!r}")
    return f"{parts.hostname}:{parts.port or 80}"


def nginx_s3_config(directory: Path, port: int, endpoint_url: str, bucket: str) -> str:
    """A single-process nginx on ``port`` passing every GET to the path-style
    ``/{bucket}/...`` of ``endpoint_url``."""
    upstream = upstream_address(endpoint_url)
    return single_process_config(
        directory,
        f"""    upstream s3 {{
        server {upstream};
        keepalive {UPSTREAM_KEEPALIVE};
    }}
    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://s3/{quote(bucket)}/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {upstream};
            proxy_buffering on;
            proxy_buffer_size 256k;
            proxy_buffers 8 256k;
            proxy_busy_buffers_size 512k;
            # A 1 MiB answer fits the buffers; never spill one to a temporary file.
            proxy_max_temp_file_size 0;
        }}
    }}""",
    )


async def make_public(client: Any, bucket: str, key: str) -> None:
    """Let anonymous clients (nginx) GET ``key``: a public-read object ACL, the
    narrowest grant (the bucket itself stays private)."""
    await client.put_object_acl(Bucket=bucket, Key=key, ACL="public-read")


def run_nginx_s3(endpoint_url: str, bucket: str) -> contextlib.AbstractAsyncContextManager[NginxProcess]:
    """nginx reverse-proxying ``bucket`` of ``endpoint_url`` (see nginx_with);
    ``url/{key}`` is the object ``key``."""
    return nginx_with(
        lambda directory, port: nginx_s3_config(directory, port, endpoint_url, bucket),
        "nginx (S3 reverse proxy)",
        f"proxying {endpoint_url}/{bucket}",
    )
