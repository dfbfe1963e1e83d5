"""tus concatenation on the local directory: partial uploads' files assembled into one.

The partials' ``data`` files are copied into a new file in the process's ``tmp/``
with ``copy_file_range(2)``, which on file systems that share extents (XFS, Btrfs)
copies no bytes at all and elsewhere copies inside the kernel, never through Python;
where the kernel refuses it (EXDEV, ENOSYS, EINVAL, EOPNOTSUPP: another file system,
an old kernel, a file system without it) the bytes are copied by reads and writes.
The file is synced and then published as a finished upload is (its rename and
metadata, under the key's lock).

The object's SHA-256 cannot be combined from the partials' own digests: SHA-256
runs over the bytes in order, so each partial's saved state starts from the initial
value, not from where the one before it ended. The first partial's saved state is
the right start, and the others' bytes are hashed again from it, read in large
blocks on a thread of their own while the copy runs on another.

A crash part-way leaves only the file in this process's ``tmp/``, which the sweep
of ended processes' temporary files removes (local.leftovers).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from pathlib import Path

from proxy.storage.base import StorageError
from proxy.storage.local.files import fsync_dir
from proxy.streaming.sha256_state import ResumableSha256

# Large reads: hashing costs per call, and the page cache reads ahead anyway.
HASH_BLOCK = 4 * 1024 * 1024
COPY_BLOCK = 1024 * 1024
# copy_file_range copies at most this much a call (Linux caps it near 2 GiB).
_RANGE_CALL = 1024 * 1024 * 1024
# The errors with which the kernel says it cannot copy these files itself.
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP}


async def assemble(sources: list[tuple[Path, int]], target: Path, first_sha256: str) -> str:
    """Write the first ``size`` bytes of each source file, in order, into the new
    file ``target`` and sync it; return the SHA-256 state of the whole, which
    continues ``first_sha256`` (the first source's) over the others' bytes."""
    copying = asyncio.to_thread(_copy_all, sources, target)
    hashing = asyncio.to_thread(_hash_on, first_sha256, sources[1:])
    _, state = await asyncio.gather(copying, hashing)
    return state


def _copy_all(sources: list[tuple[Path, int]], target: Path) -> None:
    with open(target, "xb") as out:
        kernel = True
        for path, size in sources:
            with open(path, "rb") as src:
                kernel = copy_range(src.fileno(), out.fileno(), size, kernel=kernel)
        os.fsync(out.fileno())
    fsync_dir(target.parent)


def copy_range(src: int, dst: int, size: int, *, kernel: bool = True) -> bool:
    """Copy ``size`` bytes from the start of ``src`` to the current end of ``dst``
    (both file descriptors); with ``kernel``, by copy_file_range while the kernel
    takes it. Returns whether the kernel may be asked again for the next file."""
    start = os.lseek(dst, 0, os.SEEK_CUR)
    done = 0
    while kernel and done < size:
        try:
            copied = os.copy_file_range(src, dst, min(size - done, _RANGE_CALL), done, start + done)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            kernel = False
            break
        if copied == 0:
            raise StorageError(f"a partial upload's file ends {size - done} bytes early")
        done += copied
    if done < size:
        _copy_by_reads(src, dst, done, start + done, size - done)
    os.lseek(dst, start + size, os.SEEK_SET)
    return kernel


def _copy_by_reads(src: int, dst: int, src_offset: int, dst_offset: int, count: int) -> None:
    while count:
        block = os.pread(src, min(count, COPY_BLOCK), src_offset)
        if not block:
            raise StorageError(f"a partial upload's file ends {count} bytes early")
        view = memoryview(block)
        while view:
            written = os.pwrite(dst, view, dst_offset)
            view = view[written:]
            dst_offset += written
        src_offset += len(block)
        count -= len(block)


def _hash_on(state: str, sources: list[tuple[Path, int]]) -> str:
    sha = ResumableSha256(state)
    buffer = bytearray(HASH_BLOCK)
    view = memoryview(buffer)
    for path, size in sources:
        with open(path, "rb", buffering=0) as fh:
            left = size
            while left:
                got = fh.readinto(view[: min(left, HASH_BLOCK)])
                if not got:
                    raise StorageError(f"a partial upload's file ends {left} bytes early")
                sha.update(view[:got])
                left -= got
    return sha.state()


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
