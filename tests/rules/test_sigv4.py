"""The SigV4 signer signs exactly what botocore signs, and streamed bodies as AWS documents."""

from __future__ import annotations

from urllib.parse import quote

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.rules.sigv4 import (
    STREAMING_PAYLOAD,
    ChunkSigner,
    Credentials,
    SigningKeys,
    aws_chunked_length,
    canonical_query,
    signature_of,
    signed_headers,
    signing_key,
)

printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
keys = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=60)


def botocore_signed(
    path: str, headers: dict[str, str], credentials: Credentials, region: str
) -> dict[str, str]:
    request = AWSRequest(method="GET", url="http://127.0.0.1:7480" + path, headers=headers)
    frozen = ReadOnlyCredentials(credentials.access_key, credentials.secret_key, credentials.token)
    S3SigV4Auth(frozen, "s3", region).add_auth(request)
    return dict(request.headers.items())


@settings(max_examples=200, deadline=None)
@given(
    key=keys,
    etag=printable,
    byte_range=st.none() | st.tuples(st.integers(0, 2**40), st.integers(0, 2**20)),
    token=st.none() | printable,
    region=st.sampled_from(["us-east-1", "eu-central-1", "default"]),
    secret=printable,
)
def test_signature_equals_botocores(
    key: str,
    etag: str,
    byte_range: tuple[int, int] | None,
    token: str | None,
    region: str,
    secret: str,
) -> None:
    path = "/bucket/" + quote(key, safe="/~")
    headers = {"Host": "127.0.0.1:7480", "If-Match": etag}
    if byte_range is not None:
        headers["Range"] = f"bytes={byte_range[0]}-{byte_range[0] + byte_range[1]}"
    credentials = Credentials("AKIDEXAMPLE", secret, token)
    theirs = botocore_signed(path, headers, credentials, region)
    ours = signed_headers("GET", path, headers, credentials, SigningKeys(region), theirs["X-Amz-Date"])
    assert ours == theirs


def test_signing_key_is_derived_once_a_day() -> None:
    keys = SigningKeys("us-east-1")
    first = keys.key("secret", "20261203")
    assert keys.key("secret", "20261203") is first
    assert keys.key("secret", "20261204") == signing_key("secret", "20261204", "us-east-1", "s3") != first
    assert keys.key("rotated", "20261204") == signing_key("rotated", "20261204", "us-east-1", "s3")


def test_aws_documented_signing_key() -> None:
    # The example of AWS's SigV4 documentation (derive the signing key).
    derived = signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam")
    assert derived.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def test_a_streamed_body_is_signed_as_aws_documents_it() -> None:
    """The worked example of https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html:
    66560 bytes of "a" in chunks of 64 KiB; its seed and chunk signatures are AWS's."""
    credentials = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    keys = SigningKeys("us-east-1")
    size, chunk = 66560, 65536
    headers = {
        "Host": "s3.amazonaws.com",
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(size),
        "Content-Length": str(aws_chunked_length(size, chunk)),
    }
    assert headers["Content-Length"] == "66824"
    signed = signed_headers(
        "PUT",
        "/examplebucket/chunkObject.txt",
        headers,
        credentials,
        keys,
        "20130524T000000Z",
        payload_hash=STREAMING_PAYLOAD,
    )
    assert signature_of(signed) == "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    signer = ChunkSigner.for_request(signed, keys, credentials.secret_key)
    body = b"a" * size
    heads = [signer.frame_head(body[:chunk]), signer.frame_head(body[chunk:]), signer.frame_head(b"")]
    assert heads == [
        b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n",
        b"400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n",
        b"0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n",
    ]
    assert sum(len(h) + 2 for h in heads) + size == aws_chunked_length(size, chunk)


@given(size=st.integers(0, 10**7), chunk=st.sampled_from([8192, 65536, 262144]))
def test_the_chunked_length_counts_every_frame(size: int, chunk: int) -> None:
    sizes = [chunk] * (size // chunk) + ([size % chunk] if size % chunk else []) + [0]
    framed = sum(len(f"{n:x};chunk-signature=".encode()) + 64 + 2 + n + 2 for n in sizes)
    assert aws_chunked_length(size, chunk) == framed


@settings(max_examples=100, deadline=None)
@given(
    query=st.dictionaries(printable, printable, max_size=3),
    secret=printable,
)
def test_a_query_is_signed_as_botocore_signs_it(query: dict[str, str], secret: str) -> None:
    path = "/bucket/key"
    url = "http://127.0.0.1:7480" + path + ("?" + canonical_query(query) if query else "")
    request = AWSRequest(method="PUT", url=url, headers={"Host": "127.0.0.1:7480"})
    S3SigV4Auth(ReadOnlyCredentials("AKIDEXAMPLE", secret, None), "s3", "us-east-1").add_auth(request)
    theirs = dict(request.headers.items())
    ours = signed_headers(
        "PUT",
        path,
        {"Host": "127.0.0.1:7480"},
        Credentials("AKIDEXAMPLE", secret),
        SigningKeys("us-east-1"),
        theirs["X-Amz-Date"],
        query=query,
        payload_hash=theirs["X-Amz-Content-SHA256"],
    )
    assert ours == theirs
