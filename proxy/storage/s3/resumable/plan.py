"""How a resumable upload's bytes are cut into S3 parts: pure decisions, no I/O.

Part sizes are chosen when the upload is created and recorded in its state
(PartLayout), so neither a later process nor a changed setting can alter them
mid-upload, and every part's size is recorded too, so offsets stay right across
processes.

S3 takes parts of different sizes (all but the last >= MIN_PART_SIZE), which spares
most PATCHes of a few MiB their tail (part_target, leftover_is_part):

- When the PATCH's length is known (Content-Length) and cutting a part at the part
  size would leave fewer than MIN_PART_SIZE bytes of it, the part takes them too:
  it is then up to ``part size + MIN_PART_SIZE - 1`` bytes. Its whole size is
  reserved from the MemoryBudget before it is filled, while nothing else is held.
- What is left at the end of an append goes as a part of its own, not as a tail,
  when the upload's length was known at creation and it is more than one part, and
  either it completes the upload after at least one part (the last part may be of
  any size), or it is at least MIN_PART_SIZE and the rest of the upload still fits
  in MAX_PARTS parts of the part size. So an upload sent in PATCHes of 5 MiB or more
  writes no tail at all, and one that never fills a part still ends as one
  PutObject.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.storage.resumable import UploadState
from proxy.storage.s3.limits import (
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    part_size_for_known_size,
    part_size_for_unknown_size,
)


def part_target(size: int, buffered: int, to_come: int | None) -> int:
    """How many bytes the part being filled should hold.

    ``size`` is the layout's size for that part, ``buffered`` what it holds already,
    ``to_come`` the bytes of this PATCH not buffered yet (None: not known). If cutting
    at ``size`` would leave 1 to MIN_PART_SIZE - 1 bytes of the PATCH behind, the part
    takes them too, so that they need no tail: up to ``size + MIN_PART_SIZE - 1``
    bytes, never over MAX_PART_SIZE.
    """
    if buffered >= size:
        return buffered  # a kept tail that fills a part already goes as it is
    if to_come is None:
        return size
    rest = buffered + to_come - size
    if 0 < rest < MIN_PART_SIZE and size + rest <= MAX_PART_SIZE:
        return size + rest
    return size


def leftover_is_part(
    *,
    buffered: int,
    number: int,
    part_size: int,
    growing: bool,
    length: int | None,
    end: int,
    max_parts: int = MAX_PARTS,
) -> bool:
    """Whether the ``buffered`` bytes left at the end of an append, up to offset
    ``end``, go to S3 now as part ``number`` instead of to a tail object.

    Only when the upload's length was known at creation (so ``part_size`` fits it in
    ``max_parts``) and is over one part (one that never fills a part ends as one
    PutObject). Then the bytes that complete the upload are its last part, of any
    size, once a part exists; other bytes only if they make a valid non-last part
    (MIN_PART_SIZE) and the rest of the upload still fits in ``max_parts`` parts.
    """
    if buffered == 0 or growing or length is None or length <= part_size or number > max_parts:
        return False
    if end >= length:
        return number > 1
    return buffered >= MIN_PART_SIZE and number + -(-(length - end) // part_size) <= max_parts


@dataclass(frozen=True)
class PartLayout:
    """What ``UploadState.backend`` records about where the upload's bytes are."""

    part_size: int
    growing: bool  # unknown length at creation: part sizes follow the growing schedule
    # The multipart upload is assembled at the upload's own object key and copied to
    # the object's key when it finishes (s3.publish); uploads created before that
    # was so assemble at the object's key.
    staged: bool = False
    upload_id: str | None = None
    parts: tuple[tuple[int, str, int], ...] = ()  # (number, ETag, size)
    tail: str | None = None

    @classmethod
    def for_new_upload(cls, length: int | None, preferred_part_size: int) -> PartLayout:
        """The layout of an upload of ``length`` bytes (None: not known yet);
        ValueError if S3 cannot hold that many."""
        if length is None:
            return cls(preferred_part_size, growing=True, staged=True)
        return cls(part_size_for_known_size(length, preferred_part_size), growing=False, staged=True)

    @classmethod
    def of(cls, state: UploadState) -> PartLayout:
        b = state.backend
        return cls(
            part_size=b["part_size"],
            growing=b["growing"],
            staged=b.get("staged", False),
            upload_id=b.get("upload_id"),
            parts=tuple((int(n), str(e), int(s)) for n, e, s in b.get("parts", [])),
            tail=b.get("tail"),
        )

    def backend(self) -> dict[str, Any]:
        record: dict[str, Any] = {"part_size": self.part_size, "growing": self.growing}
        if self.staged:
            record["staged"] = True
        if self.upload_id is not None:
            record["upload_id"] = self.upload_id
        if self.parts:
            record["parts"] = [list(p) for p in self.parts]
        if self.tail is not None:
            record["tail"] = self.tail
        return record

    def size_of(self, number: int) -> int:
        if self.growing:
            return part_size_for_unknown_size(number, self.part_size)
        return self.part_size

    @property
    def in_parts(self) -> int:
        return sum(size for _, _, size in self.parts)

    def finished(self) -> PartLayout:
        """What a finished upload keeps: the part sizes, no parts, tail or upload id."""
        return PartLayout(self.part_size, self.growing, self.staged)


@dataclass(frozen=True)
class ConcatPart:
    """One part of a final upload (tus concatenation): ``(partial, start, end)``
    byte ranges (end exclusive) of the partials' objects, in order. A part of one
    range that is a valid part on its own is copied by S3 (UploadPartCopy); the
    others are read and sent as their bytes."""

    ranges: tuple[tuple[int, int, int], ...]
    copied: bool

    @property
    def size(self) -> int:
        return sum(end - start for _, start, end in self.ranges)


def concat_parts(sizes: list[int], copy_piece: int = MAX_PART_SIZE) -> list[ConcatPart]:
    """The parts that assemble partials of ``sizes`` bytes, in order, into one object.

    A partial of at least MIN_PART_SIZE bytes is copied by S3 in pieces of at most
    ``copy_piece`` bytes (split evenly, so none is smaller than S3 takes). Smaller
    partials are gathered, consecutive ones together, into parts of at least
    MIN_PART_SIZE bytes (the last may be smaller), topped up from the start of the
    next large partial if need be: so no part that is sent as bytes is larger than
    ``2 * MIN_PART_SIZE``, and a final of large partials moves no byte through the
    proxy. ValueError if it takes more than MAX_PARTS parts."""
    parts: list[ConcatPart] = []
    pending: list[tuple[int, int, int]] = []
    pending_size = 0
    for index, size in enumerate(sizes):
        start = 0
        if pending and size:
            take = min(MIN_PART_SIZE - pending_size, size)
            pending.append((index, 0, take))
            pending_size += take
            start = take
            if pending_size >= MIN_PART_SIZE:
                parts.append(ConcatPart(tuple(pending), copied=False))
                pending, pending_size = [], 0
        rest = size - start
        if rest >= MIN_PART_SIZE:
            pieces = -(-rest // copy_piece)
            piece = -(-rest // pieces)
            for first in range(start, size, piece):
                parts.append(ConcatPart(((index, first, min(first + piece, size)),), copied=True))
        elif rest:
            pending.append((index, start, size))
            pending_size += rest
            if pending_size >= MIN_PART_SIZE:
                parts.append(ConcatPart(tuple(pending), copied=False))
                pending, pending_size = [], 0
    if pending:
        parts.append(ConcatPart(tuple(pending), copied=False))
    if len(parts) > MAX_PARTS:
        raise ValueError(f"the partial uploads make more than {MAX_PARTS} parts")
    return parts
