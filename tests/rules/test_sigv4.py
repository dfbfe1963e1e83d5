"""The relay's SigV4 signer signs exactly what botocore signs."""

from __future__ import annotations

from urllib.parse import quote

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.rules.sigv4 import Credentials, SigningKeys, signed_headers, signing_key

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
