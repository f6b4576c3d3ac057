"""Size limits that keep one upload from exhausting a worker's memory or disk.

Archives are the dangerous case: a few kilobytes of ZIP can inflate to terabytes (a zip bomb), so the limits
are enforced on the bytes actually decompressed, never only on what the archive's headers claim.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class IngestLimits:
    """How much one uploaded file (and, for archives, its members) may hold."""

    max_file_bytes: int = field(
        default=512 * 2**20,
        metadata={"help": "Largest accepted file, in bytes; also the largest uncompressed archive member."},
    )
    max_archive_total_bytes: int = field(
        default=2 * 2**30,
        metadata={"help": "Total uncompressed bytes read from one archive, all nesting levels together."},
    )
    max_archive_ratio: float = field(
        default=200.0,
        metadata={"help": "An archive member inflating more than this many times its compressed size is a zip bomb."},
    )
    max_archive_members: int = field(
        default=20_000,
        metadata={"help": "Most files one archive may list (directories not counted)."},
    )
    max_archive_depth: int = field(
        default=2,
        metadata={
            "help": "Deepest accepted archive nesting: the uploaded archive is depth 1, a ZIP inside it depth 2."
        },
    )
    min_ratio_check_bytes: int = field(
        default=2**20,
        metadata={
            "help": "Members smaller than this (uncompressed) skip the ratio check: a small file cannot be a bomb, "
            "and short runs of blanks legitimately compress several hundred times."
        },
    )
