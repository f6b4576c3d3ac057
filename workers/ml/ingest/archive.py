"""ZIP archives, read safely: members go to memory, never to paths taken from the archive.

What a hostile or careless archive can do, and what stops it:

- path traversal (`../x`), absolute paths (`/etc/x`, `C:\\x`) and symbolic links: nothing is ever written to
  disk, but such a member is still refused with its own report: it shows the archive was not made for us;
- zip bombs: a member inflating more than `max_archive_ratio` times is refused, and the total inflated over all
  nesting levels is capped by `max_archive_total_bytes` (reading stops there, and the report says so). Both are
  enforced on the bytes actually inflated, counted while reading, not on what the headers claim;
- too many members (`max_archive_members`), too deep nesting (`max_archive_depth`), encrypted members.

Directories and operating-system litter (`__MACOSX/`, `.DS_Store`, AppleDouble `._*`, `Thumbs.db`) are
skipped silently. Every other member gets a report from the same extraction as a top-level file (a callback
from `extract`, which also recurses into nested archives), named "archive.zip/folder/file.md".
"""

from __future__ import annotations

import io
import re
import stat
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from workers.ml.ingest import messages
from workers.ml.ingest.messages import human_bytes, plural
from workers.ml.ingest.options import ExtractOptions
from workers.ml.ingest.report import FileReport, FileStatus, failed

_READ_BLOCK = 2**20
_LITTER_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass
class ArchiveBudget:
    """Uncompressed bytes still allowed for one uploaded archive, shared by its nested archives."""

    limit: int
    used: int = 0
    exhausted: bool = False


# (member bytes, display name, depth of the archive holding it, budget) -> the member's report
MemberExtractor = Callable[[bytes, str, int, ArchiveBudget], FileReport]


class MemberRefused(Exception):
    """A member refused while reading it (too large, or inflating like a bomb); `message` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BudgetExhausted(Exception):
    """Reading stopped: the archive's total uncompressed budget is spent (`ArchiveBudget.exhausted` is set)."""


def _path(info: zipfile.ZipInfo) -> str:
    return info.filename.replace("\\", "/")  # archives made on Windows may use backslashes


def is_litter(info: zipfile.ZipInfo) -> bool:
    path = PurePosixPath(_path(info))
    return info.is_dir() or path.parts[:1] == ("__MACOSX",) or path.name in _LITTER_NAMES or path.name.startswith("._")


def _too_large(size: str, options: ExtractOptions) -> str:
    return messages.TOO_LARGE.format(size=size, limit=human_bytes(options.limits.max_file_bytes))


def _not_read(member_name: str, options: ExtractOptions) -> FileReport:
    limit = human_bytes(options.limits.max_archive_total_bytes)
    return failed(member_name, "unknown", messages.MEMBER_TOTAL_EXCEEDED.format(limit=limit))


def header_refusal(info: zipfile.ZipInfo, options: ExtractOptions) -> str | None:
    """Why a member is refused before reading a byte of it, or None."""
    path = _path(info)
    limits = options.limits
    if path.startswith("/") or _DRIVE.match(path):
        return messages.MEMBER_ABSOLUTE
    if ".." in path.split("/"):
        return messages.MEMBER_TRAVERSAL
    if stat.S_ISLNK(info.external_attr >> 16):
        return messages.MEMBER_SYMLINK
    if info.flag_bits & 0x1:
        return messages.MEMBER_ENCRYPTED
    if info.file_size > limits.max_file_bytes:
        return _too_large(human_bytes(info.file_size), options)
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size >= limits.min_ratio_check_bytes and ratio > limits.max_archive_ratio:
        return messages.MEMBER_BOMB.format(ratio=ratio, limit=limits.max_archive_ratio)
    return None


def read_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, options: ExtractOptions, budget: ArchiveBudget
) -> bytes:
    """The member's bytes, counting what is inflated: headers can lie, the counters cannot."""
    limits = options.limits
    blocks: list[bytes] = []
    size = 0
    with archive.open(info) as stream:
        while block := stream.read(_READ_BLOCK):
            size += len(block)
            if budget.used + size > budget.limit:
                budget.exhausted = True
                raise BudgetExhausted
            if size > limits.max_file_bytes:
                raise MemberRefused(_too_large(f"over {human_bytes(size)}", options))
            ratio = size / max(info.compress_size, 1)
            if size >= limits.min_ratio_check_bytes and ratio > limits.max_archive_ratio:
                raise MemberRefused(messages.MEMBER_BOMB.format(ratio=ratio, limit=limits.max_archive_ratio))
            blocks.append(block)
    budget.used += size
    return b"".join(blocks)


def read_archive(
    source: Path | bytes,
    name: str,
    options: ExtractOptions,
    extract_member: MemberExtractor,
    depth: int = 1,
    budget: ArchiveBudget | None = None,
) -> FileReport:
    """Report on a ZIP archive (`depth` 1: the uploaded file itself) and every member in it."""
    budget = budget or ArchiveBudget(options.limits.max_archive_total_bytes)
    try:
        archive = zipfile.ZipFile(source if isinstance(source, Path) else io.BytesIO(source))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        return failed(name, "zip", messages.ARCHIVE_DAMAGED)
    with archive:
        all_infos = archive.infolist()
        infos = [info for info in all_infos if not is_litter(info)]
        details: dict[str, object] = {
            "files": len(infos),
            "skipped_entries": len(all_infos) - len(infos),
            "depth": depth,
        }
        if len(infos) > options.limits.max_archive_members:
            limit = options.limits.max_archive_members
            return failed(name, "zip", messages.ARCHIVE_TOO_MANY.format(members=len(infos), limit=limit), **details)
        if not infos:
            return failed(name, "zip", messages.ARCHIVE_NO_FILES, **details)
        members: list[FileReport] = []
        stopped_at: str | None = None
        for info in infos:
            member_name = f"{name}/{_path(info)}"
            report = _member_report(archive, info, member_name, options, extract_member, depth, budget)
            members.append(report)
            if budget.exhausted:
                stopped_at = _path(info)
                break
    if depth == 1:
        details["uncompressed_bytes"] = budget.used  # all nesting levels together
    return _summary(name, members, len(infos), stopped_at, details, options)


def _member_report(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    member_name: str,
    options: ExtractOptions,
    extract_member: MemberExtractor,
    depth: int,
    budget: ArchiveBudget,
) -> FileReport:
    refusal = header_refusal(info, options)
    # The header's size is a bound zipfile enforces (it never inflates a member past it), so a member that
    # cannot fit stops the reading before any of it is inflated.
    if refusal is None and budget.used + info.file_size > budget.limit:
        budget.exhausted = True
    if budget.exhausted:
        return _not_read(member_name, options)
    if refusal is not None:
        return failed(member_name, "unknown", refusal)
    try:
        data = read_member(archive, info, options, budget)
    except BudgetExhausted:
        return _not_read(member_name, options)
    except MemberRefused as refused:
        return failed(member_name, "unknown", refused.message)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as error:
        # A CRC mismatch, a truncated stream or an unsupported compression method costs this member only.
        return failed(member_name, "unknown", messages.MEMBER_DAMAGED.format(reason=str(error) or type(error).__name__))
    return extract_member(data, member_name, depth, budget)


def _summary(
    name: str,
    members: list[FileReport],
    files: int,
    stopped_at: str | None,
    details: dict[str, object],
    options: ExtractOptions,
) -> FileReport:
    usable = [member for member in members if member.usable]
    partial = [member for member in usable if member.status == FileStatus.PARTIAL]
    counted = plural(files, "file")
    if not usable:
        status, message = FileStatus.FAILED, messages.ARCHIVE_NONE_USABLE.format(files=counted)
    elif len(usable) < files:
        status = FileStatus.PARTIAL
        message = messages.ARCHIVE_PARTIAL.format(usable=len(usable), files=counted, failed=files - len(usable))
    elif partial:
        status = FileStatus.PARTIAL
        message = messages.ARCHIVE_PARTIAL_MEMBERS.format(files=counted, partial=len(partial))
    else:
        status, message = FileStatus.OK, messages.ARCHIVE_OK.format(files=counted)
    if stopped_at is not None:
        unread = files - len(members)
        limit = human_bytes(options.limits.max_archive_total_bytes)
        message += messages.ARCHIVE_STOPPED.format(member=stopped_at, limit=limit, unread=plural(unread, "more file"))
        details["stopped_at"] = stopped_at
    return FileReport(
        name=name,
        detected_type="zip",
        status=status,
        message=message,
        documents=[document for member in members for document in member.documents],
        details=details,
        members=members,
    )
