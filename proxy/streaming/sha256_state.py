"""SHA-256 whose running state can be saved and restored, for hashes that span requests.

A resumable upload's bytes arrive over many requests, possibly at different
processes, and none of them may hold the state only in memory. hashlib objects
cannot be serialised, so this calls OpenSSL's SHA-256 (the same code hashlib
uses) through ctypes, where the state is a plain 112-byte struct that can be
stored beside the upload and loaded by whichever process takes the next chunk.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct

STATE_BYTES = 112  # sizeof(SHA256_CTX): h[8], Nl, Nh, data[16], num, md_len; unchanged since OpenSSL 0.9.8
MD_LEN_OFFSET = STATE_BYTES - 4


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("crypto")
    if name is None:
        raise ImportError("resumable uploads need OpenSSL's libcrypto (Debian: libssl3)")
    lib = ctypes.CDLL(name)
    lib.SHA256_Init.argtypes = [ctypes.c_void_p]
    lib.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    lib.SHA256_Final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    return lib


_lib = _load()


class ResumableSha256:
    def __init__(self, state: str | None = None) -> None:
        if state is None:
            self._ctx = ctypes.create_string_buffer(STATE_BYTES)
            _lib.SHA256_Init(self._ctx)
            return
        raw = bytes.fromhex(state)
        if len(raw) != STATE_BYTES or struct.unpack_from("=I", raw, MD_LEN_OFFSET)[0] != 32:
            raise ValueError("not a saved SHA-256 state")
        self._ctx = ctypes.create_string_buffer(raw, STATE_BYTES)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if isinstance(data, bytes):
            _lib.SHA256_Update(self._ctx, data, len(data))
            return
        view = memoryview(data).cast("B")
        if view.readonly:  # a slice of bytes: ctypes can only point into writable buffers
            view = memoryview(bytearray(view))
        if view.nbytes:
            _lib.SHA256_Update(self._ctx, (ctypes.c_char * view.nbytes).from_buffer(view), view.nbytes)

    def state(self) -> str:
        """The running state as text, to store and pass to the constructor later."""
        return self._ctx.raw.hex()

    def hexdigest(self) -> str:
        """The digest of everything so far; the running state is left as it is."""
        ctx = ctypes.create_string_buffer(self._ctx.raw, STATE_BYTES)
        out = ctypes.create_string_buffer(32)
        _lib.SHA256_Final(out, ctx)
        return out.raw.hex()
