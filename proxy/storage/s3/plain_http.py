"""What the relay (GetObject) and the part streamer (UploadPart) share: an S3
endpoint on plain HTTP reached on sockets of our own, with requests signed by
rules.sigv4 instead of botocore.

``PlainEndpoint.for_client`` finds the endpoint and addressing the botocore client
uses (from a URL it presigns, so path- and virtual-host-style alike) and refuses
HTTPS endpoints and clients without credentials: those always go through botocore.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from botocore.exceptions import BotoCoreError

from proxy.rules.response_head import ResponseHead, parse_head, split_head
from proxy.rules.sigv4 import EMPTY_SHA256, Credentials, SigningKeys, canonical_query, signed_headers
from proxy.storage.base import UpstreamError

RECV_BYTES = 16 * 1024
# Any key will do: only the URL botocore builds around it matters.
_PROBE_KEY = "probe"


@dataclass
class PlainEndpoint:
    """Where one bucket's objects are, and how to sign requests for them."""

    path_prefix: str  # an object's path is this and its percent-encoded key
    address: tuple[str, int]
    host: str  # the Host header, as botocore signs it
    credentials: Any  # botocore's (refreshable) credentials
    signing_keys: SigningKeys

    @classmethod
    def of(cls, object_url_prefix: str, credentials: Any, region: str) -> PlainEndpoint:
        parts = urlsplit(object_url_prefix)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"not a plain HTTP URL: {object_url_prefix}")
        # As botocore signs it: the default port is left out.
        hostname = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        host = hostname if parts.port in (None, 80) else f"{hostname}:{parts.port}"
        return cls(parts.path, (parts.hostname, parts.port or 80), host, credentials, SigningKeys(region))

    @classmethod
    async def for_client(cls, client: Any, session: Any, bucket: str) -> PlainEndpoint | None:
        """The endpoint of ``bucket`` as ``client`` reaches it; None when that is
        HTTPS or there are no credentials to sign with."""
        url = await client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": _PROBE_KEY})
        base = str(url).split("?", 1)[0]
        if not base.startswith("http://") or not base.endswith("/" + _PROBE_KEY):
            return None
        credentials = await session.get_credentials()
        if credentials is None:
            return None
        return cls.of(base.removesuffix(_PROBE_KEY), credentials, client.meta.region_name or "us-east-1")

    def path_of(self, key: str) -> str:
        # Keys are percent-encoded as botocore encodes the {Key+} label.
        return self.path_prefix + quote(key, safe="/~")

    async def request_head(
        self,
        method: str,
        key: str,
        headers: Mapping[str, str],
        *,
        user_agent: str,
        query: Mapping[str, str] | None = None,
        payload_hash: str = EMPTY_SHA256,
    ) -> tuple[bytes, dict[str, str], str] | None:
        """The signed request's head, the headers signed and the secret key they were
        signed with; None when the credentials cannot be had (botocore then reports why)."""
        try:
            frozen = await self.credentials.get_frozen_credentials()
        except BotoCoreError:
            return None  # e.g. a role's refresh failed: botocore reports it properly
        credentials = Credentials(frozen.access_key, frozen.secret_key, frozen.token)
        path = self.path_of(key)
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        signed = signed_headers(
            method,
            path,
            {"Host": self.host, **headers},
            credentials,
            self.signing_keys,
            amz_date,
            query=query,
            payload_hash=payload_hash,
        )
        target = path if not query else f"{path}?{canonical_query(query)}"
        lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in signed.items())]
        lines.append(f"User-Agent: {user_agent}")  # left unsigned, as botocore does
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii"), signed, credentials.secret_key

    async def connect(self, connect_timeout: float) -> socket.socket:
        """A new non-blocking connection to the endpoint."""
        loop = asyncio.get_running_loop()
        host, port = self.address
        failure: OSError = OSError(f"no address for {host}")
        for family, kind, proto, _, address in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                async with asyncio.timeout(connect_timeout):
                    await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                failure = exc
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        raise failure


async def read_head(sock: socket.socket, read_timeout: float) -> tuple[ResponseHead, bytes]:
    """The answer's head, and the body bytes that came with it; UpstreamError if none
    comes within ``read_timeout`` seconds of the last byte."""
    loop = asyncio.get_running_loop()
    received = b""
    while (split := split_head(received)) is None:
        try:
            async with asyncio.timeout(read_timeout):
                data = await loop.sock_recv(sock, RECV_BYTES)
        except TimeoutError as exc:
            raise UpstreamError(f"S3 sent no answer in {read_timeout:g} s") from exc
        if not data:
            raise ConnectionResetError("S3 closed the connection before answering")
        received += data
    head, rest = split
    return parse_head(head), rest
