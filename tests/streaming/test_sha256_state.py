"""SHA-256 with a saveable running state (proxy/streaming/sha256_state.py), checked against hashlib."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.streaming.sha256_state import MD_LEN_OFFSET, STATE_BYTES, ResumableSha256

Chunk = bytes | bytearray | memoryview
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def as_kind(data: bytes, kind: str) -> Chunk:
    """``data`` as one of the buffer types a request body may hand over."""
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview-bytes":  # read-only
        return memoryview(data)
    if kind == "memoryview-bytearray":  # writable
        return memoryview(bytearray(data))
    if kind == "slice-of-bytes":  # read-only, offset into a larger buffer
        return memoryview(b"<<" + data + b">>")[2 : 2 + len(data)]
    if kind == "slice-of-bytearray":  # writable, offset into a larger buffer
        return memoryview(bytearray(b"<<<" + data + b">"))[3 : 3 + len(data)]
    if kind == "wide-memoryview":  # a multi-byte item format, cast to bytes inside
        assert len(data) % 4 == 0
        return memoryview(bytearray(data)).cast("I")
    raise AssertionError(kind)


KINDS = [
    "bytes",
    "bytearray",
    "memoryview-bytes",
    "memoryview-bytearray",
    "slice-of-bytes",
    "slice-of-bytearray",
]
chunks = st.lists(
    st.tuples(st.binary(max_size=200), st.sampled_from(KINDS)).map(lambda pair: as_kind(*pair)),
    max_size=12,
)


def test_fresh_state_is_the_empty_hash() -> None:
    hasher = ResumableSha256()
    assert hasher.hexdigest() == EMPTY_SHA256
    assert ResumableSha256(hasher.state()).hexdigest() == EMPTY_SHA256


def test_state_is_hex_text_of_the_context() -> None:
    state = ResumableSha256().state()
    assert isinstance(state, str)
    assert len(state) == 2 * STATE_BYTES
    assert bytes.fromhex(state).hex() == state
    assert struct.unpack_from("=I", bytes.fromhex(state), MD_LEN_OFFSET)[0] == 32


@pytest.mark.parametrize("kind", [*KINDS, "wide-memoryview"])
def test_every_buffer_kind_hashes_its_bytes(kind: str) -> None:
    data = bytes(range(256)) * 3
    hasher = ResumableSha256()
    hasher.update(as_kind(data, kind))
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("kind", KINDS)
def test_empty_chunks_change_nothing(kind: str) -> None:
    hasher = ResumableSha256()
    hasher.update(b"abc")
    before = hasher.state()
    hasher.update(as_kind(b"", kind))
    assert hasher.state() == before
    assert hasher.hexdigest() == hashlib.sha256(b"abc").hexdigest()


@given(chunks, st.data())
def test_saved_state_continues_in_a_new_object(parts: list[Chunk], data: st.DataObject) -> None:
    expected = hashlib.sha256(b"".join(bytes(part) for part in parts)).hexdigest()
    # Save after any prefix (possibly several times), as a chain of requests would.
    cuts = sorted(data.draw(st.lists(st.integers(0, len(parts)), max_size=4)))
    hasher = ResumableSha256()
    start = 0
    for cut in [*cuts, len(parts)]:
        for part in parts[start:cut]:
            hasher.update(part)
        hasher = ResumableSha256(hasher.state())
        start = cut
    assert hasher.hexdigest() == expected


@given(chunks)
def test_hexdigest_leaves_the_running_state_alone(parts: list[Chunk]) -> None:
    hasher = ResumableSha256()
    reference = hashlib.sha256()
    for part in parts:
        hasher.update(part)
        reference.update(part)
        before = hasher.state()
        assert hasher.hexdigest() == reference.hexdigest()
        assert hasher.hexdigest() == reference.hexdigest()
        assert hasher.state() == before
    assert hasher.hexdigest() == reference.hexdigest()


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_restored_objects_are_independent(first: bytes, second: bytes) -> None:
    hasher = ResumableSha256()
    hasher.update(first)
    state = hasher.state()
    a = ResumableSha256(state)
    b = ResumableSha256(state)
    a.update(second)
    assert b.hexdigest() == hashlib.sha256(first).hexdigest()
    assert a.hexdigest() == hashlib.sha256(first + second).hexdigest()
    # The original is untouched by what the copies did.
    assert hasher.state() == state


@pytest.mark.parametrize("size", [55, 56, 63, 64, 65, 119, 120, 127, 128])
def test_block_and_padding_boundaries_across_a_save(size: int) -> None:
    data = bytes((i * 7) % 256 for i in range(size))
    for cut in range(size + 1):
        hasher = ResumableSha256()
        hasher.update(data[:cut])
        resumed = ResumableSha256(hasher.state())
        resumed.update(data[cut:])
        assert resumed.hexdigest() == hashlib.sha256(data).hexdigest(), cut


def test_updating_a_bytearray_leaves_it_resizable() -> None:
    # A lingering buffer export would make the caller's buffer impossible to reuse.
    buf = bytearray(b"x" * 100)
    hasher = ResumableSha256()
    hasher.update(buf)
    hasher.update(memoryview(buf)[10:20])
    buf.extend(b"more")
    del buf[:50]
    assert hasher.hexdigest() == hashlib.sha256(b"x" * 110).hexdigest()


def test_the_callers_buffer_is_not_modified() -> None:
    buf = bytearray(range(200))
    original = bytes(buf)
    hasher = ResumableSha256()
    hasher.update(buf)
    hasher.update(memoryview(buf)[5:50])
    assert buf == original


def test_a_64_mib_chunk() -> None:
    size = 64 * 1024 * 1024
    big = bytearray(size)
    big[::4096] = bytes(i % 251 for i in range(size // 4096))
    hasher = ResumableSha256()
    hasher.update(b"head")
    hasher = ResumableSha256(hasher.state())
    hasher.update(big)
    hasher.update(memoryview(bytes(big))[size // 2 :])
    reference = hashlib.sha256(b"head")
    reference.update(big)
    reference.update(big[size // 2 :])
    assert hasher.hexdigest() == reference.hexdigest()


# --- invalid states ---------------------------------------------------------------------------------


def valid_state() -> str:
    hasher = ResumableSha256()
    hasher.update(b"some bytes")
    return hasher.state()


@pytest.mark.parametrize(
    "state",
    [
        "",
        "00",
        valid_state()[:-2],
        valid_state() + "00",
        valid_state()[:-1],  # odd length
        "zz" * STATE_BYTES,
        "0x" + valid_state()[2:],
        "00" * STATE_BYTES,  # md_len 0
        EMPTY_SHA256,  # a digest is not a state
    ],
)
def test_invalid_states_are_refused(state: str) -> None:
    with pytest.raises(ValueError):
        ResumableSha256(state)


@pytest.mark.parametrize("md_len", [0, 20, 28, 31, 33, 64, 32 << 24])
def test_states_of_other_digest_lengths_are_refused(md_len: int) -> None:
    raw = bytearray.fromhex(valid_state())
    struct.pack_into("=I", raw, MD_LEN_OFFSET, md_len)
    with pytest.raises(ValueError, match="not a saved SHA-256 state"):
        ResumableSha256(raw.hex())


def test_a_sha224_state_is_refused() -> None:
    # SHA-224 shares the struct and differs only in md_len (28).
    libcrypto = ctypes.CDLL(ctypes.util.find_library("crypto"))
    ctx = ctypes.create_string_buffer(STATE_BYTES)
    libcrypto.SHA224_Init(ctx)
    with pytest.raises(ValueError, match="not a saved SHA-256 state"):
        ResumableSha256(ctx.raw.hex())


def test_state_hex_case_does_not_matter() -> None:
    state = valid_state()
    assert ResumableSha256(state.upper()).hexdigest() == ResumableSha256(state).hexdigest()
