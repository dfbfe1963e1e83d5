"""An HTTP layer between the proxy and an S3 server that records and injects faults.

It forwards every request to the upstream server, records what the proxy sent
(operation, part number, Content-Length, Transfer-Encoding) and how many part
uploads were in flight at once, and answers some requests with an error instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from proxy.storage import layout

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, str]
    content_length: str | None
    transfer_encoding: str | None
    body_size: int
    decoded_length: str | None = None  # x-amz-decoded-content-length of an aws-chunked body

    @property
    def payload_size(self) -> int:
        """The bytes the request stores: the body's, its aws-chunked framing aside."""
        return int(self.decoded_length) if self.decoded_length is not None else self.body_size

    @property
    def is_writer_upkeep(self) -> bool:
        """A writer's heartbeat, records and sweep listing; not its staging objects,
        where PUTs assemble their multipart uploads."""
        if layout.WRITER_STAGING in self.path:
            return False
        return layout.WRITERS in self.path or self.query.get("prefix", "").startswith(layout.WRITERS)

    @property
    def operation(self) -> str:
        q = self.query
        if self.method == "PUT" and "partNumber" in q:
            return "UploadPart"
        if self.method == "POST" and "uploads" in q:
            return "CreateMultipartUpload"
        if self.method == "POST" and "uploadId" in q:
            return "CompleteMultipartUpload"
        if self.method == "DELETE" and "uploadId" in q:
            return "AbortMultipartUpload"
        return f"{self.method} {'object' if self.path.count('/') > 1 else 'bucket'}"


FaultRule = Callable[[Seen], int | None]


class S3Interposer:
    def __init__(self, upstream: str, part_delay: float = 0.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.part_delay = part_delay
        self.seen: list[Seen] = []
        self.fault: FaultRule | None = None
        # Like fault, but the request reaches the server first: its answer is lost.
        self.lost_answer: FaultRule | None = None
        # Extra seconds before answering a request, by operation name.
        self.delays: dict[str, float] = {}
        self.parts_in_flight = 0
        self.max_parts_in_flight = 0
        self._session: aiohttp.ClientSession | None = None

    def operations(self) -> list[str]:
        """What the proxy sent, its writer records aside (heartbeats, records of
        multipart uploads, sweeps: proxy/storage/s3/writers.py run beside every upload)."""
        return [s.operation for s in self.seen if not s.is_writer_upkeep]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=6 * 1024**3)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Seen(
            request.method,
            request.path,
            dict(request.query),
            request.headers.get("Content-Length"),
            request.headers.get("Transfer-Encoding"),
            len(body),
            request.headers.get("x-amz-decoded-content-length"),
        )
        self.seen.append(seen)
        is_part = seen.operation == "UploadPart"
        if is_part:
            self.parts_in_flight += 1
            self.max_parts_in_flight = max(self.max_parts_in_flight, self.parts_in_flight)
        try:
            if is_part and self.part_delay:
                await asyncio.sleep(self.part_delay)
            if seen.operation in self.delays:
                await asyncio.sleep(self.delays[seen.operation])
            status = self.fault(seen) if self.fault else None
            if status is not None:
                xml = f"<Error><Code>Injected</Code><Message>fault {status}</Message></Error>"
                return web.Response(status=status, text=xml, content_type="application/xml")
            response = await self._forward(request, body)
            status = self.lost_answer(seen) if self.lost_answer else None
            if status is not None:
                xml = f"<Error><Code>Injected</Code><Message>answer lost {status}</Message></Error>"
                return web.Response(status=status, text=xml, content_type="application/xml")
            return response
        finally:
            if is_part:
                self.parts_in_flight -= 1

    async def _forward(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        # Host stays as the proxy signed it: real S3 servers check the signature.
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS - {"host"}}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body
        ) as upstream:
            data = await upstream.read()
            out = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in HOP_HEADERS | {"date", "server", "content-encoding"}
            }
            if request.method == "HEAD":
                # No body to size: keep the object's length as the server gave it.
                head = web.StreamResponse(status=upstream.status, headers=out)
                head.content_length = int(upstream.headers.get("Content-Length", 0))
                await head.prepare(request)
                return head
            return web.Response(status=upstream.status, body=data, headers=out)
