"""Response heads read off a raw connection (proxy/rules/response_head.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.rules.response_head import MAX_HEAD_BYTES, MalformedHead, ResponseHead, parse_head, split_head

RGW_206 = (
    b"HTTP/1.1 206 Partial Content\r\nContent-Length: 4\r\nContent-Range: bytes 2-5/10\r\n"
    b'Accept-Ranges: bytes\r\nETag: "781e5e245d69b566979b86e28d23f2c7"\r\n'
    b"Content-Type: binary/octet-stream\r\nConnection: Keep-Alive\r\n\r\n"
)


def test_a_real_rgw_answer() -> None:
    head = parse_head(RGW_206)
    assert head.status == 206 and head.keep_alive
    assert head.headers["content-range"] == "bytes 2-5/10"
    assert head.headers["etag"] == '"781e5e245d69b566979b86e28d23f2c7"'
    assert head.body_length() == 4


@pytest.mark.parametrize(
    ("buffer", "expected"),
    [
        (b"", None),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n", None),
        (b"HTTP/1.1 200 OK\r\n\r\n", (b"HTTP/1.1 200 OK\r\n\r\n", b"")),
        (b"HTTP/1.1 200 OK\r\n\r\nabc\r\n\r\n", (b"HTTP/1.1 200 OK\r\n\r\n", b"abc\r\n\r\n")),
    ],
)
def test_split_head(buffer: bytes, expected: tuple[bytes, bytes] | None) -> None:
    assert split_head(buffer) == expected


def test_split_head_gives_up_on_endless_heads() -> None:
    assert split_head(b"x" * MAX_HEAD_BYTES) is None
    with pytest.raises(MalformedHead):
        split_head(b"x" * (MAX_HEAD_BYTES + 1))


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("1.1", None, True),
        ("1.1", "keep-alive", True),
        ("1.1", "close", False),
        ("1.1", "Keep-Alive, Close", False),
        ("1.0", None, False),
        ("1.0", "Keep-Alive", True),
        ("1.0", "close", False),
    ],
)
def test_keep_alive(version: str, connection: str | None, keep_alive: bool) -> None:
    extra = f"Connection: {connection}\r\n" if connection else ""
    head = parse_head(f"HTTP/{version} 200 OK\r\n{extra}\r\n".encode())
    assert head.keep_alive is keep_alive


@pytest.mark.parametrize(
    ("fields", "length"),
    [
        ("Content-Length: 0", 0),
        ("content-length:   1073741824  ", 1073741824),
        ("", None),
        ("Content-Length: -1", None),
        ("Content-Length: 1e3", None),
        ("Content-Length: \xb2", None),  # "²": a digit to str.isdigit(), not to HTTP
        ("Content-Length: 5\r\nContent-Length: 5", None),  # joined to "5, 5"
        ("Content-Length: 5\r\nTransfer-Encoding: chunked", None),
    ],
)
def test_body_length(fields: str, length: int | None) -> None:
    lines = ["HTTP/1.1 200 OK", fields] if fields else ["HTTP/1.1 200 OK"]
    head = parse_head(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    assert head.body_length() == length


def test_repeated_fields_are_joined_and_names_lowered() -> None:
    head = parse_head(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\nX-Empty:\r\n\r\n")
    assert head.headers == {"x-a": "1, 2", "x-empty": ""}


def test_reason_phrase_is_optional() -> None:
    assert parse_head(b"HTTP/1.1 412\r\n\r\n").status == 412


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: continuation\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
    ],
)
def test_malformed_heads(head: bytes) -> None:
    with pytest.raises(MalformedHead):
        parse_head(head)


_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True)
_values = st.from_regex(r"[!-~]([ !-~]{0,30}[!-~])?", fullmatch=True)


@given(
    status=st.integers(100, 599),
    fields=st.dictionaries(_names.map(str.lower) | st.just("connection"), _values, max_size=8),
    body=st.binary(max_size=64),
)
def test_round_trip(status: int, fields: dict[str, str], body: bytes) -> None:
    lines = [f"HTTP/1.1 {status} Whatever it says"] + [f"{name}: {value}" for name, value in fields.items()]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    split = split_head(raw + body)
    assert split is not None
    head, rest = split
    assert rest == body
    parsed = parse_head(head)
    tokens = {token.strip().lower() for token in fields.get("connection", "").split(",")}
    assert parsed == ResponseHead(status, fields, "close" not in tokens)
