"""How big each S3 multipart part is: pure arithmetic, no I/O.

S3 allows at most 10,000 parts of 5 MiB to 5 GiB (the last may be smaller) and
objects of at most 5 TiB. When the size is known up front the part size is chosen
once; when it is not, the size doubles every 1,000 parts so that a small starting
size does not cap the object (6 MiB parts throughout would stop at 58.6 GiB).
"""

from __future__ import annotations

MiB = 1024 * 1024
MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_OBJECT_SIZE = 5 * 1024 * 1024 * MiB
PARTS_PER_TIER = 1_000


def part_size_for_known_size(total: int, preferred: int) -> int:
    """The smallest MiB-aligned part size >= ``preferred`` that fits ``total`` in MAX_PARTS."""
    if total > MAX_OBJECT_SIZE:
        raise ValueError(f"{total} bytes is over S3's object limit of {MAX_OBJECT_SIZE}")
    needed = -(-total // MAX_PARTS)
    needed = -(-needed // MiB) * MiB
    return min(max(preferred, needed, MIN_PART_SIZE), MAX_PART_SIZE)


def part_size_for_unknown_size(part_number: int, preferred: int) -> int:
    """Size of part ``part_number`` (1-based) when the total is not known."""
    if not 1 <= part_number <= MAX_PARTS:
        raise ValueError(f"part number {part_number} is outside 1..{MAX_PARTS}")
    tier = (part_number - 1) // PARTS_PER_TIER
    return min(max(preferred, MIN_PART_SIZE) << tier, MAX_PART_SIZE)


def max_size_for_unknown_size(preferred: int) -> int:
    """The largest object an upload of unknown size can reach with this schedule."""
    return min(
        sum(part_size_for_unknown_size(n, preferred) for n in range(1, MAX_PARTS + 1, PARTS_PER_TIER))
        * PARTS_PER_TIER,
        MAX_OBJECT_SIZE,
    )
