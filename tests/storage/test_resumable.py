"""Resumable upload state and the PATCH body bridge (proxy/storage/resumable.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.rules.tus import Checksum
from proxy.storage.base import StorageError
from proxy.storage.resumable import (
    ChecksumMismatch,
    UploadBody,
    UploadLocked,
    UploadNotFound,
    UploadState,
)
from proxy.streaming.bodies import BodyTooLarge
from proxy.streaming.sha256_state import ResumableSha256

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def make_state(**changes: Any) -> UploadState:
    state = UploadState(
        id="0123456789abcdef0123456789abcdef",
        key="0123456789abcdef0123456789abcdef/clip.mov",
        content_type="video/quicktime",
        length=100,
        metadata="filename Y2xpcC5tb3Y=",
        created=1_700_000_000.25,
        expires=1_700_086_400.25,
    )
    return replace(state, **changes)


def sha256_state_of(data: bytes) -> str:
    hasher = ResumableSha256()
    hasher.update(data)
    return hasher.state()


def digest_of(state: str) -> str:
    return ResumableSha256(state).hexdigest()


async def source(chunks: Iterable[bytes], log: list[bytes] | None = None) -> AsyncIterator[bytes]:
    for chunk in chunks:
        if log is not None:
            log.append(chunk)
        yield chunk


async def drain(body: UploadBody, out: list[bytes]) -> None:
    async for chunk in body:
        out.append(chunk)


def checksum_of(algorithm: str, data: bytes) -> Checksum:
    return Checksum(algorithm, hashlib.new(algorithm, data).digest())


def test_errors_are_storage_errors() -> None:
    for error in (UploadNotFound, UploadLocked, ChecksumMismatch):
        assert issubclass(error, StorageError)


# --- UploadState ------------------------------------------------------------------------------------


def test_new_state_defaults() -> None:
    state = make_state()
    assert state.offset == 0
    assert digest_of(state.sha256) == EMPTY_SHA256
    assert state.done is False
    assert state.backend == {}
    assert state.version is None
    # Each state gets its own backend dict.
    assert make_state().backend is not state.backend


def test_json_round_trip_without_version() -> None:
    state = make_state(
        offset=60,
        sha256=sha256_state_of(b"x" * 60),
        backend={"upload_id": "abc", "parts": [{"n": 1, "etag": '"e1"'}], "tail": None},
        version='"etag-1"',
    )
    data = state.to_json()
    assert isinstance(data, bytes)
    record = json.loads(data)
    assert "version" not in record
    assert record["offset"] == 60
    assert record["backend"] == state.backend

    restored = UploadState.from_json(data)
    assert restored == state
    assert restored.version is None
    assert UploadState.from_json(data, version='"etag-2"').version == '"etag-2"'
    # The version is not part of what the state says.
    assert replace(state, version="other") == state


def test_json_round_trip_of_a_deferred_length() -> None:
    state = make_state(length=None)
    restored = UploadState.from_json(state.to_json())
    assert restored.length is None
    assert restored == state


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
states = st.builds(
    UploadState,
    id=st.text(min_size=1, max_size=40),
    key=st.text(min_size=1, max_size=40),
    content_type=st.text(max_size=40),
    length=st.none() | st.integers(min_value=0, max_value=5 * 1024**4),
    metadata=st.text(max_size=60),
    created=st.floats(allow_nan=False, allow_infinity=False),
    expires=st.floats(allow_nan=False),
    offset=st.integers(min_value=0, max_value=5 * 1024**4),
    sha256=st.binary(max_size=64).map(sha256_state_of),
    done=st.booleans(),
    backend=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    version=st.none() | st.text(max_size=20),
)


@given(states, st.none() | st.text(max_size=20))
def test_json_round_trip_property(state: UploadState, version: str | None) -> None:
    data = state.to_json()
    assert "version" not in json.loads(data)
    restored = UploadState.from_json(data, version=version)
    assert restored == state
    assert restored.version == version
    assert restored.to_json() == data


def test_expired() -> None:
    state = make_state(expires=1000.0)
    assert not state.expired(999.999)
    assert state.expired(1000.0)
    assert state.expired(1000.001)
    assert not make_state(expires=math.inf).expired()
    assert make_state(expires=0.0).expired()


def test_expired_uses_the_clock_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy.storage.resumable.time.time", lambda: 5000.0)
    assert make_state(expires=4999.0).expired()
    assert make_state(expires=5000.0).expired()
    assert not make_state(expires=5001.0).expired()


@pytest.mark.parametrize(
    ("length", "offset", "complete"),
    [(100, 0, False), (100, 99, False), (100, 100, True), (0, 0, True), (None, 0, False), (None, 100, False)],
)
def test_complete(length: int | None, offset: int, complete: bool) -> None:
    assert make_state(length=length, offset=offset).complete is complete


# --- UploadBody: passing bytes through ---------------------------------------------------------------


async def test_body_yields_the_chunks_unchanged_and_counts_them() -> None:
    chunks = [b"hello ", b"tus ", b"world", bytes(range(256))]
    body = UploadBody(source(chunks), state=make_state())
    assert body.taken == 0
    assert body.keeps_partial
    seen: list[bytes] = []
    async for chunk in body:
        seen.append(chunk)
        assert body.taken == sum(map(len, seen))
        assert digest_of(body.sha256_state()) == hashlib.sha256(b"".join(seen)).hexdigest()
    assert seen == chunks
    assert all(a is b for a, b in zip(seen, chunks, strict=True))
    assert body.taken == sum(map(len, chunks))
    assert body.keeps_partial


async def test_body_skips_empty_chunks() -> None:
    body = UploadBody(source([b"", b"a", b"", b"", b"bc", b""]), state=make_state())
    seen: list[bytes] = []
    await drain(body, seen)
    assert seen == [b"a", b"bc"]
    assert body.taken == 3


async def test_empty_body() -> None:
    state = make_state(offset=7, sha256=sha256_state_of(b"1234567"))
    body = UploadBody(source([]), state=state, checksum=checksum_of("sha1", b""), limit=0)
    seen: list[bytes] = []
    await drain(body, seen)
    assert seen == []
    assert body.taken == 0
    assert body.sha256_state() == state.sha256
    assert body.advanced(state) == state


async def test_sha256_continues_from_the_state() -> None:
    earlier = b"bytes stored by earlier PATCHes, maybe in another process"
    state = make_state(offset=len(earlier), sha256=sha256_state_of(earlier))
    body = UploadBody(source([b"and ", b"these"]), state=state)
    await drain(body, [])
    assert digest_of(body.sha256_state()) == hashlib.sha256(earlier + b"and these").hexdigest()


async def test_body_passes_bytes_on_as_they_arrive() -> None:
    """Nothing is buffered: each chunk is handed on before the next is read."""
    read: list[bytes] = []
    body = UploadBody(source([b"1", b"2", b"3"], read), state=make_state())
    async for chunk in body:
        assert read[-1] == chunk


@given(
    st.binary(max_size=300),
    st.lists(st.binary(max_size=80), max_size=10),
    st.sampled_from([None, "sha1", "sha256", "md5"]),
)
def test_body_property(earlier: bytes, chunks: list[bytes], algorithm: str | None) -> None:
    data = b"".join(chunks)
    state = make_state(offset=len(earlier), length=None, sha256=sha256_state_of(earlier))
    checksum = checksum_of(algorithm, data) if algorithm else None
    body = UploadBody(source(chunks), state=state, checksum=checksum, limit=len(data))
    seen: list[bytes] = []
    asyncio.run(drain(body, seen))
    assert seen == [chunk for chunk in chunks if chunk]
    assert body.taken == len(data)
    assert digest_of(body.sha256_state()) == hashlib.sha256(earlier + data).hexdigest()
    assert body.keeps_partial is (checksum is None)
    advanced = body.advanced(state)
    assert advanced.offset == len(earlier) + len(data)
    assert digest_of(advanced.sha256) == hashlib.sha256(earlier + data).hexdigest()


# --- UploadBody: limit ---------------------------------------------------------------------------------


async def test_body_within_the_limit() -> None:
    body = UploadBody(source([b"abc", b"de"]), state=make_state(), limit=5)
    seen: list[bytes] = []
    await drain(body, seen)
    assert seen == [b"abc", b"de"]
    assert body.keeps_partial


async def test_body_over_the_limit() -> None:
    state = make_state(offset=2, sha256=sha256_state_of(b"xy"))
    body = UploadBody(source([b"abc", b"de", b"f", b"never read"]), state=state, limit=5)
    seen: list[bytes] = []
    with pytest.raises(BodyTooLarge) as info:
        await drain(body, seen)
    assert info.value.limit == 5
    # Refused before the chunk that crosses the limit is passed on or hashed.
    assert seen == [b"abc", b"de"]
    assert body.taken == 5
    assert digest_of(body.sha256_state()) == hashlib.sha256(b"xyabcde").hexdigest()
    assert not body.keeps_partial


async def test_limit_zero_refuses_any_byte_but_not_empty_chunks() -> None:
    body = UploadBody(source([b"", b""]), state=make_state(), limit=0)
    await drain(body, [])
    assert body.keeps_partial
    body = UploadBody(source([b"", b"x"]), state=make_state(), limit=0)
    with pytest.raises(BodyTooLarge):
        await drain(body, [])
    assert body.taken == 0
    assert not body.keeps_partial


@given(st.lists(st.binary(min_size=1, max_size=20), max_size=8), st.integers(min_value=0, max_value=100))
def test_limit_property(chunks: list[bytes], limit: int) -> None:
    body = UploadBody(source(chunks), state=make_state(), limit=limit)
    seen: list[bytes] = []
    total = sum(map(len, chunks))
    if total <= limit:
        asyncio.run(drain(body, seen))
        assert seen == chunks
        assert body.keeps_partial
    else:
        with pytest.raises(BodyTooLarge):
            asyncio.run(drain(body, seen))
        assert not body.keeps_partial
        # The longest prefix of whole chunks that fits was passed on, and nothing more.
        assert sum(map(len, seen)) <= limit
        assert sum(map(len, chunks[: len(seen) + 1])) > limit
        assert seen == chunks[: len(seen)]
    assert body.taken == sum(map(len, seen))
    assert digest_of(body.sha256_state()) == hashlib.sha256(b"".join(seen)).hexdigest()


# --- UploadBody: checksum ------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5"])
async def test_matching_checksum(algorithm: str) -> None:
    chunks = [b"chunk ", b"of ", b"", b"an upload"]
    body = UploadBody(source(chunks), state=make_state(), checksum=checksum_of(algorithm, b"".join(chunks)))
    assert not body.keeps_partial  # a checked chunk is all or nothing
    seen: list[bytes] = []
    await drain(body, seen)
    assert seen == [b"chunk ", b"of ", b"an upload"]
    assert body.taken == len(b"".join(chunks))
    assert not body.keeps_partial


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5"])
async def test_checksum_mismatch_is_raised_after_the_last_chunk(algorithm: str) -> None:
    chunks = [b"chunk ", b"of ", b"an upload"]
    checksum = checksum_of(algorithm, b"something else")
    body = UploadBody(source(chunks), state=make_state(), checksum=checksum)
    seen: list[bytes] = []
    with pytest.raises(ChecksumMismatch, match=algorithm):
        async for chunk in body:
            seen.append(chunk)
            # Every chunk is handed on first: the digest is only known at the end.
            assert body.keeps_partial is False
    assert seen == chunks
    assert body.taken == len(b"".join(chunks))
    assert not body.keeps_partial


async def test_checksum_of_another_algorithm_does_not_match() -> None:
    data = b"same bytes"
    # A sha256 digest sent as "md5" is wrong for md5.
    body = UploadBody(
        source([data]), state=make_state(), checksum=Checksum("md5", hashlib.sha256(data).digest())
    )
    with pytest.raises(ChecksumMismatch):
        await drain(body, [])


async def test_checksum_covers_only_this_body_not_earlier_bytes() -> None:
    earlier, data = b"earlier", b"this chunk"
    state = make_state(offset=len(earlier), sha256=sha256_state_of(earlier))
    body = UploadBody(source([data]), state=state, checksum=checksum_of("sha1", data))
    await drain(body, [])
    body = UploadBody(source([data]), state=state, checksum=checksum_of("sha1", earlier + data))
    with pytest.raises(ChecksumMismatch):
        await drain(body, [])


async def test_limit_is_checked_before_the_checksum() -> None:
    data = b"0123456789"
    body = UploadBody(
        source([data[:5], data[5:]]), state=make_state(), checksum=checksum_of("md5", data), limit=8
    )
    with pytest.raises(BodyTooLarge):
        await drain(body, [])
    assert body.taken == 5


@given(
    st.lists(st.binary(max_size=40), max_size=6),
    st.sampled_from(["sha1", "sha256", "md5"]),
    st.binary(max_size=64),
)
def test_checksum_property(chunks: list[bytes], algorithm: str, claimed: bytes) -> None:
    data = b"".join(chunks)
    matches = claimed == hashlib.new(algorithm, data).digest()
    body = UploadBody(source(chunks), state=make_state(), checksum=Checksum(algorithm, claimed))
    seen: list[bytes] = []
    if matches:
        asyncio.run(drain(body, seen))
    else:
        with pytest.raises(ChecksumMismatch):
            asyncio.run(drain(body, seen))
    assert b"".join(seen) == data
    assert not body.keeps_partial


# --- UploadBody.advanced -------------------------------------------------------------------------------


async def test_advanced_moves_offset_and_sha256() -> None:
    earlier = b"0123456789"
    state = make_state(
        offset=len(earlier), sha256=sha256_state_of(earlier), backend={"parts": [1]}, version="v1"
    )
    body = UploadBody(source([b"abc", b"", b"de"]), state=state)
    await drain(body, [])
    advanced = body.advanced(state)
    assert advanced.offset == 15
    assert digest_of(advanced.sha256) == hashlib.sha256(earlier + b"abcde").hexdigest()
    assert advanced.sha256 == body.sha256_state()
    # Everything else is kept.
    assert replace(advanced, offset=state.offset, sha256=state.sha256) == state
    assert advanced.version == "v1"
    assert advanced.backend == {"parts": [1]}
    # The input is untouched (the state is frozen).
    assert state.offset == 10


async def test_advanced_applies_extra_changes() -> None:
    state = make_state(length=5)
    body = UploadBody(source([b"hello"]), state=state)
    await drain(body, [])
    advanced = body.advanced(state, done=True, backend={"tail": "obj"}, length=5, version=None)
    assert advanced.offset == 5
    assert advanced.complete
    assert advanced.done is True
    assert advanced.backend == {"tail": "obj"}
    assert digest_of(advanced.sha256) == hashlib.sha256(b"hello").hexdigest()


async def test_advanced_after_a_partial_body_counts_what_was_taken() -> None:
    """A body cut off (here: by its limit) advances by what the store took."""
    state = make_state(offset=3, sha256=sha256_state_of(b"abc"))
    body = UploadBody(source([b"de", b"fgh", b"ijklmnop"]), state=state, limit=6)
    with pytest.raises(BodyTooLarge):
        await drain(body, [])
    advanced = body.advanced(state)
    assert advanced.offset == 8
    assert digest_of(advanced.sha256) == hashlib.sha256(b"abcdefgh").hexdigest()


async def test_advanced_mid_body() -> None:
    state = make_state()
    body = UploadBody(source([b"ab", b"cd", b"ef"]), state=state)
    iterator = aiter(body)
    assert await anext(iterator) == b"ab"
    assert body.advanced(state).offset == 2
    assert digest_of(body.advanced(state).sha256) == hashlib.sha256(b"ab").hexdigest()
    assert await anext(iterator) == b"cd"
    assert body.advanced(state).offset == 4
    assert [chunk async for chunk in iterator] == [b"ef"]
    assert body.advanced(state).offset == 6


def test_owner_round_trips_and_old_states_load_without_one() -> None:
    owned = make_state(owner="token:uploader")
    assert UploadState.from_json(owned.to_json()) == owned
    # A state stored before uploads had owners has no "owner" field: it loads as None.
    record = json.loads(make_state().to_json())
    del record["owner"]
    assert UploadState.from_json(json.dumps(record).encode()).owner is None


def test_concat_round_trips_and_is_left_out_of_plain_uploads() -> None:
    for concat in ("partial", "final;/uploads/" + "a" * 32):
        state = replace(make_state(), concat=concat)
        assert UploadState.from_json(state.to_json()) == state
        assert state.partial == (concat == "partial") and state.final == (concat != "partial")
    plain = make_state()
    assert "concat" not in json.loads(plain.to_json())
    assert UploadState.from_json(plain.to_json()).concat is None
    assert not plain.partial and not plain.final
