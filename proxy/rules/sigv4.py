"""AWS Signature Version 4 (pure): the relay's GetObject, and UploadPart with a body
signed chunk by chunk as it streams (aws-chunked).

botocore's signer builds a request object, derives the signing key (four HMACs) and
formats the canonical request anew for every request: about 0.15 ms of CPU, as much
as the rest of a small ranged GET. The signing key depends only on the secret, the
day, the region and the service, so ``SigningKeys`` derives it once a day; the
canonical request is made from the few headers the relay sends. What it signs is
exactly what botocore signs for S3 (tests/rules/test_sigv4.py compares the two):
the path as sent (S3 paths are signed without normalising), no query, every header
given, and the empty body's SHA-256.

A streamed body (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) is sent in chunks of a size
fixed in advance (so that Content-Length is known before the bytes are), each framed
as ``hex(size);chunk-signature=SIG\r\n<bytes>\r\n`` and signed with the previous
chunk's signature (the first with the request's), ending with an empty chunk: S3
checks every chunk as it arrives, so the body is as protected as a signed payload
whose hash would need every byte before the first is sent.

https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html
https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
_CHUNK_ALGORITHM = "AWS4-HMAC-SHA256-PAYLOAD"
_SIGNATURE_FIELD = ";chunk-signature="


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


def signing_key(secret_key: str, day: str, region: str, service: str) -> bytes:
    """The key of one day (``YYYYMMDD``), region and service."""
    key = ("AWS4" + secret_key).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


class SigningKeys:
    """Signing keys as derived once per secret and day (the last one kept)."""

    def __init__(self, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._last: tuple[str, str, bytes] | None = None

    def scope(self, day: str) -> str:
        """The credential scope of ``day`` (``YYYYMMDD``)."""
        return f"{day}/{self.region}/{self.service}/aws4_request"

    def key(self, secret_key: str, day: str) -> bytes:
        last = self._last
        if last is not None and last[0] == secret_key and last[1] == day:
            return last[2]
        key = signing_key(secret_key, day, self.region, self.service)
        self._last = (secret_key, day, key)
        return key


def signed_headers(
    method: str,
    path: str,
    headers: Mapping[str, str],
    credentials: Credentials,
    keys: SigningKeys,
    amz_date: str,
    *,
    query: Mapping[str, str] | None = None,
    payload_hash: str = EMPTY_SHA256,
) -> dict[str, str]:
    """``headers`` (which must include Host) with the SigV4 headers added for
    ``method`` on ``path`` (already percent-encoded) with ``query`` (its names and
    values as sent, not encoded yet) at ``amz_date`` (``YYYYMMDDTHHMMSSZ``, UTC);
    ``payload_hash``: the body's SHA-256 (the empty body's by default), or
    STREAMING_PAYLOAD."""
    signed = dict(headers)
    signed["X-Amz-Date"] = amz_date
    signed["X-Amz-Content-SHA256"] = payload_hash
    if credentials.token is not None:
        signed["X-Amz-Security-Token"] = credentials.token
    canonical = {name.lower(): " ".join(value.split()) for name, value in signed.items()}
    names = sorted(canonical)
    header_list = ";".join(names)
    canonical_request = "\n".join(
        (
            method,
            path,
            canonical_query(query or {}),
            "".join(f"{name}:{canonical[name]}\n" for name in names),
            header_list,
            payload_hash,
        )
    )
    day = amz_date[:8]
    scope = keys.scope(day)
    string_to_sign = "\n".join(
        (ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest())
    )
    signature = hmac.new(
        keys.key(credentials.secret_key, day), string_to_sign.encode(), hashlib.sha256
    ).hexdigest()
    signed["Authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={header_list}, Signature={signature}"
    )
    return signed


def canonical_query(query: Mapping[str, str]) -> str:
    """The query as SigV4 signs it, which is also how it is sent: names and values
    percent-encoded (all but unreserved characters), sorted by name."""
    pairs = sorted((quote(name, safe="-_.~"), quote(value, safe="-_.~")) for name, value in query.items())
    return "&".join(f"{name}={value}" for name, value in pairs)


def signature_of(headers: Mapping[str, str]) -> str:
    """The signature in the Authorization header ``signed_headers`` made."""
    return headers["Authorization"].rsplit("Signature=", 1)[1]


def aws_chunked_length(size: int, chunk_size: int) -> int:
    """Content-Length of ``size`` bytes sent aws-chunked in chunks of ``chunk_size``
    (the last one shorter), the closing empty chunk included."""
    sizes = [chunk_size] * (size // chunk_size)
    if size % chunk_size:
        sizes.append(size % chunk_size)
    sizes.append(0)
    framing = len(_SIGNATURE_FIELD) + 64 + 4  # the signature, and CRLF after the head and the bytes
    return sum(len(f"{n:x}") + framing + n for n in sizes)


class ChunkSigner:
    """Signs the chunks of one streamed body in order, from the request's signature."""

    def __init__(self, seed_signature: str, key: bytes, amz_date: str, scope: str) -> None:
        self._previous = seed_signature
        self._key = key
        self._prefix = f"{_CHUNK_ALGORITHM}\n{amz_date}\n{scope}\n"

    @classmethod
    def for_request(cls, signed: Mapping[str, str], keys: SigningKeys, secret_key: str) -> ChunkSigner:
        """The chunk signer of a request ``signed_headers`` signed for STREAMING_PAYLOAD."""
        amz_date = signed["X-Amz-Date"]
        day = amz_date[:8]
        return cls(signature_of(signed), keys.key(secret_key, day), amz_date, keys.scope(day))

    def frame_head(self, chunk: bytes | memoryview) -> bytes:
        """What goes before ``chunk`` (the empty one ends the body); CRLF follows it."""
        digest = hashlib.sha256(chunk).hexdigest()
        to_sign = f"{self._prefix}{self._previous}\n{EMPTY_SHA256}\n{digest}"
        self._previous = hmac.new(self._key, to_sign.encode(), hashlib.sha256).hexdigest()
        return f"{len(chunk):x}{_SIGNATURE_FIELD}{self._previous}\r\n".encode()
