"""UploadPart streamed while the part still fills, for S3 endpoints on plain HTTP.

A tus PATCH of 5 to 11 MiB is one part (s3.resumable.plan), and botocore can send a
part only once its last byte is in: on plain HTTP it signs the SHA-256 of the whole
body. So such a PATCH took the time to receive its bytes and then the time to send
them, one after the other (0.45 of a PUT's rate, whose parts go while the next ones
arrive). Here the body goes aws-chunked (rules.sigv4, STREAMING-AWS4-HMAC-SHA256-
PAYLOAD): each chunk is signed as it comes, the part reaches S3 as fast as the client
sends it, and S3 still checks every byte against a signature.

The part's size must be known before its first byte (Content-Length counts every
chunk's framing), so only a part the PATCH's announced length will fill is streamed.
If streaming fails (the connection, an answer other than 200), send() returns None
and the caller sends the part through botocore once it is whole, which retries and
reports errors as usual. A part cut short (the client went away) is never completed:
the caller cancels send(), the connection closes and S3 drops what it got.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from proxy.rules.response_head import MalformedHead
from proxy.rules.sigv4 import STREAMING_PAYLOAD, ChunkSigner, aws_chunked_length
from proxy.storage.base import UpstreamError
from proxy.storage.s3.plain_http import PlainEndpoint, read_head
from proxy.streaming.part_buffer import BLOCK, PartBuffer

log = logging.getLogger(__name__)

# A divisor of the part buffer's block: every chunk of a part is one view of a block,
# sent without a copy. S3 takes chunks of 8 KiB and more.
CHUNK = 256 * 1024
assert BLOCK % CHUNK == 0
USER_AGENT = "stream-proxy-parts"
# Of an error's answer, what is read for the log.
_ERROR_BYTES = 4096


class PartStreamer:
    def __init__(self, endpoint: PlainEndpoint, *, connect_timeout: float, read_timeout: float) -> None:
        self._endpoint = endpoint
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout

    async def send(self, key: str, upload_id: str, number: int, part: PartBuffer, size: int) -> str | None:
        """Send the first ``size`` bytes of ``part`` as part ``number`` of the multipart
        upload ``upload_id`` at ``key``, each as soon as it is stored; the part's ETag,
        or None if it did not go this way."""
        query = {"partNumber": str(number), "uploadId": upload_id}
        headers = {
            "Content-Encoding": "aws-chunked",
            "Content-Length": str(aws_chunked_length(size, CHUNK)),
            "x-amz-decoded-content-length": str(size),
        }
        request = await self._endpoint.request_head(
            "PUT", key, headers, user_agent=USER_AGENT, query=query, payload_hash=STREAMING_PAYLOAD
        )
        if request is None:
            return None
        head, signed, secret_key = request
        signer = ChunkSigner.for_request(signed, self._endpoint.signing_keys, secret_key)
        try:
            sock = await self._endpoint.connect(self._connect_timeout)
        except OSError as exc:
            log.warning("part %d of %s: no connection to stream it (%s); sent whole", number, key, exc)
            return None
        try:
            return await self._exchange(sock, head, signer, part, size)
        except (OSError, MalformedHead, UpstreamError) as exc:
            log.warning("part %d of %s: streaming it failed (%s); sent whole", number, key, exc)
            return None
        finally:
            sock.close()

    async def _exchange(
        self, sock: socket.socket, head: bytes, signer: ChunkSigner, part: PartBuffer, size: int
    ) -> str | None:
        await self._send(sock, head)
        offset = 0
        separator = b""  # the CRLF that ends the chunk before
        while offset < size:
            n = min(CHUNK, size - offset)
            await part.until_stored(offset + n)
            # One view of a block: a part starts at a block's start and CHUNK divides BLOCK.
            chunk = await part.read_piece(offset, n)
            if len(chunk) != n:
                raise UpstreamError(f"the part gave {len(chunk)} of {n} bytes at {offset}")
            await self._send(sock, separator + signer.frame_head(chunk))
            await self._send(sock, chunk)
            separator = b"\r\n"
            offset += n
        await self._send(sock, separator + signer.frame_head(b"") + b"\r\n")
        answer, body = await read_head(sock, self._read_timeout)
        if answer.status == 200 and "etag" in answer.headers:
            return answer.headers["etag"]
        # The code S3 gave (NoSuchUpload, SignatureDoesNotMatch, ...), for the log.
        wanted = min(answer.body_length() or 0, _ERROR_BYTES)
        loop = asyncio.get_running_loop()
        while len(body) < wanted:
            async with asyncio.timeout(self._read_timeout):
                more = await loop.sock_recv(sock, wanted - len(body))
            if not more:
                break
            body += more
        raise UpstreamError(f"S3 answered {answer.status}: {body[:_ERROR_BYTES]!r}")

    async def _send(self, sock: socket.socket, data: bytes | memoryview) -> None:
        try:
            async with asyncio.timeout(self._read_timeout):
                await asyncio.get_running_loop().sock_sendall(sock, data)
        except TimeoutError as exc:
            raise UpstreamError(f"S3 took no byte for {self._read_timeout:g} s") from exc
