from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from tests.workers.ml.ingest.files import pdf_bytes, write, zip_bytes
from workers.ml.ingest.archive import ArchiveBudget, BudgetExhausted, MemberRefused, read_member
from workers.ml.ingest.extract import ExtractOptions, extract_file
from workers.ml.ingest.limits import IngestLimits
from workers.ml.ingest.report import FileReport, FileStatus

GOOD = b"Staff get 25 days of leave per year.\n"


def by_name(report: FileReport) -> dict[str, FileReport]:
    return {member.name: member for member in report.members}


def test_it_reads_every_member_of_nested_folders_and_skips_os_litter(tmp_path: Path) -> None:
    data = zip_bytes(
        {
            "handbook/policies/leave.md": b"# Leave\n\n" + GOOD,
            "handbook/intro.txt": b"Welcome.\n",
            "handbook/guide.pdf": pdf_bytes(["Hello world"]),
            "__MACOSX/handbook/._intro.txt": b"\x00\x05\x16\x07",
            "handbook/.DS_Store": b"\x00\x00\x00\x01Bud1",
        },
        directories=["handbook/", "handbook/policies/"],
    )
    report = extract_file(write(tmp_path, "handbook.zip", data), "handbook.zip")
    assert report.status == FileStatus.OK
    assert report.detected_type == "zip"
    assert report.message == "Read 3 files from the archive."
    assert [member.name for member in report.members] == [
        "handbook.zip/handbook/policies/leave.md",
        "handbook.zip/handbook/intro.txt",
        "handbook.zip/handbook/guide.pdf",
    ]
    assert [(document.name, document.kind) for document in report.documents] == [
        ("handbook.zip/handbook/policies/leave.md", "markdown"),
        ("handbook.zip/handbook/intro.txt", "text"),
        ("handbook.zip/handbook/guide.pdf", "pdf"),
    ]
    assert report.details["files"] == 3
    assert report.details["skipped_entries"] == 4  # two directories, two pieces of litter


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ("../evil.txt", "Refused: the path leads outside the archive ('..')."),
        ("docs/../../evil.txt", "Refused: the path leads outside the archive ('..')."),
        ("..\\evil.txt", "Refused: the path leads outside the archive ('..')."),
        ("/etc/x", "Refused: the path inside the archive is absolute."),
        ("C:/Windows/x.txt", "Refused: the path inside the archive is absolute."),
    ],
)
def test_it_rejects_zip_with_path_traversal_or_absolute_paths_and_keeps_the_rest(
    tmp_path: Path, member: str, message: str
) -> None:
    data = zip_bytes({member: b"gotcha", "good.txt": GOOD})
    report = extract_file(write(tmp_path, "upload.zip", data), "upload.zip")
    assert report.status == FileStatus.PARTIAL
    assert report.message == "Kept 1 of 2 files; 1 could not be used (see below)."
    refused = report.members[0]
    assert refused.name == f"upload.zip/{member.replace(chr(92), '/')}"
    assert refused.status == FileStatus.FAILED
    assert refused.message == message
    assert [document.text for document in report.documents] == [GOOD.decode()]


def test_it_rejects_a_symlink_member(tmp_path: Path) -> None:
    data = zip_bytes({"good.txt": GOOD}, symlinks={"passwords.txt": "/etc/passwd"})
    report = extract_file(write(tmp_path, "links.zip", data), "links.zip")
    assert report.status == FileStatus.PARTIAL
    assert by_name(report)["links.zip/passwords.txt"].message == "Refused: the archive entry is a symbolic link."
    assert [document.name for document in report.documents] == ["links.zip/good.txt"]


def test_it_rejects_a_zip_bomb_member_by_its_compression_ratio(tmp_path: Path) -> None:
    data = zip_bytes({"zeros.txt": bytes(20 * 2**20), "good.txt": GOOD})
    assert len(data) < 100_000  # 20 MB of zeros deflate about a thousandfold
    report = extract_file(write(tmp_path, "bomb.zip", data), "bomb.zip")
    assert report.status == FileStatus.PARTIAL
    bomb = by_name(report)["bomb.zip/zeros.txt"]
    assert bomb.status == FileStatus.FAILED
    assert bomb.message.startswith("Refused: it inflates ")
    assert bomb.message.endswith(" times its compressed size (limit 200): a likely zip bomb.")
    assert [document.name for document in report.documents] == ["bomb.zip/good.txt"]


def test_it_stops_reading_when_the_archive_total_exceeds_the_limit(tmp_path: Path) -> None:
    chunk = b"".join(b"line %d of a long file about leave\n" % number for number in range(11_000))  # ~400 KB
    data = zip_bytes({"a.txt": chunk, "b.txt": chunk, "c.txt": chunk, "d.txt": GOOD})
    options = ExtractOptions(limits=IngestLimits(max_archive_total_bytes=2**20))
    report = extract_file(write(tmp_path, "big.zip", data), "big.zip", options)
    assert report.status == FileStatus.PARTIAL
    assert report.message == (
        "Kept 2 of 4 files; 2 could not be used (see below). Stopped reading at 'c.txt': "
        "the archive holds more than 1 MB uncompressed; 1 more file not read."
    )
    assert [member.name for member in report.members] == ["big.zip/a.txt", "big.zip/b.txt", "big.zip/c.txt"]
    assert report.members[-1].message == "Not read: the archive's files together exceed 1 MB uncompressed."
    assert report.details["stopped_at"] == "c.txt"


def test_it_counts_inflated_bytes_while_reading_whatever_the_header_says(tmp_path: Path) -> None:
    data = zip_bytes({"notes.txt": GOOD * 100})
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo("notes.txt")
        budget = ArchiveBudget(limit=1000)
        with pytest.raises(BudgetExhausted):
            read_member(archive, info, ExtractOptions(), budget)
        assert budget.exhausted
        small = ExtractOptions(limits=IngestLimits(max_file_bytes=1000))
        with pytest.raises(MemberRefused, match="The file is too large"):
            read_member(archive, info, small, ArchiveBudget(limit=10**9))
        assert read_member(archive, info, ExtractOptions(), ArchiveBudget(limit=10**9)) == GOOD * 100


def test_it_reads_a_nested_archive_within_the_depth_limit(tmp_path: Path) -> None:
    inner = zip_bytes({"doc.txt": GOOD})
    data = zip_bytes({"inner.zip": inner, "top.txt": b"Top level.\n"})
    report = extract_file(write(tmp_path, "outer.zip", data), "outer.zip")
    assert report.status == FileStatus.OK
    nested = by_name(report)["outer.zip/inner.zip"]
    assert nested.detected_type == "zip"
    assert [member.name for member in nested.members] == ["outer.zip/inner.zip/doc.txt"]
    assert [document.name for document in report.documents] == ["outer.zip/inner.zip/doc.txt", "outer.zip/top.txt"]


def test_it_refuses_an_archive_nested_deeper_than_the_limit_and_keeps_the_rest(tmp_path: Path) -> None:
    deep = zip_bytes({"doc.txt": b"Too deep.\n"})
    middle = zip_bytes({"deep.zip": deep, "mid.txt": b"Middle.\n"})
    data = zip_bytes({"middle.zip": middle, "top.txt": b"Top.\n"})
    report = extract_file(write(tmp_path, "outer.zip", data), "outer.zip")
    assert report.status == FileStatus.PARTIAL
    assert report.message == "Read 2 files from the archive, 1 of them only in part (see below)."
    middle_report = by_name(report)["outer.zip/middle.zip"]
    assert middle_report.status == FileStatus.PARTIAL
    too_deep = by_name(middle_report)["outer.zip/middle.zip/deep.zip"]
    assert too_deep.status == FileStatus.FAILED
    assert too_deep.message == "Nested archive deeper than 2 levels: unpack it and upload its files."
    assert [document.name for document in report.documents] == ["outer.zip/middle.zip/mid.txt", "outer.zip/top.txt"]


def test_it_refuses_an_encrypted_member(tmp_path: Path) -> None:
    data = bytearray(zip_bytes({"locked.txt": b"ciphertext", "good.txt": GOOD}))
    # zipfile cannot write encrypted members: set the "encrypted" flag bit of the first member by hand, in
    # its local header (flags at byte 6) and its central directory entry (flags at byte 8).
    data[6] |= 0x1
    data[data.index(b"PK\x01\x02") + 8] |= 0x1
    report = extract_file(write(tmp_path, "locked.zip", bytes(data)), "locked.zip")
    assert by_name(report)["locked.zip/locked.txt"].message == (
        "The file is encrypted inside the archive: upload an archive without a password."
    )
    assert report.status == FileStatus.PARTIAL
    assert [document.name for document in report.documents] == ["locked.zip/good.txt"]


def test_it_reports_a_damaged_member_and_keeps_the_rest(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("broken.txt", b"ORIGINAL CONTENT")
        archive.writestr("good.txt", GOOD)
    data = buffer.getvalue().replace(b"ORIGINAL CONTENT", b"TAMPERED CONTENT")  # CRC no longer matches
    report = extract_file(write(tmp_path, "crc.zip", data), "crc.zip")
    broken = by_name(report)["crc.zip/broken.txt"]
    assert (
        broken.message
        == "Could not read this file: it is damaged inside the archive (Bad CRC-32 for file 'broken.txt')."
    )
    assert report.status == FileStatus.PARTIAL


def test_it_gives_every_failing_member_its_own_verdict(tmp_path: Path) -> None:
    data = zip_bytes({"image.txt": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "empty.md": b"", "good.txt": GOOD})
    report = extract_file(write(tmp_path, "mixed.zip", data), "mixed.zip")
    members = by_name(report)
    assert members["mixed.zip/image.txt"].message.startswith("Unsupported file type (binary data)")
    assert members["mixed.zip/empty.md"].message == "The file is empty."
    assert report.message == "Kept 1 of 3 files; 2 could not be used (see below)."


def test_it_fails_when_no_member_is_usable(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "bad.zip", zip_bytes({"../x.txt": GOOD})), "bad.zip")
    assert report.status == FileStatus.FAILED
    assert report.message == "None of the 1 file in the archive could be used (see below)."
    assert report.documents == []


def test_it_refuses_an_archive_with_too_many_members(tmp_path: Path) -> None:
    data = zip_bytes({f"{number}.txt": GOOD for number in range(4)})
    options = ExtractOptions(limits=IngestLimits(max_archive_members=3))
    report = extract_file(write(tmp_path, "many.zip", data), "many.zip", options)
    assert report.status == FileStatus.FAILED
    assert report.message == "The archive lists 4 files, more than the limit of 3: split it into smaller archives."


def test_it_refuses_an_archive_of_only_directories_and_litter(tmp_path: Path) -> None:
    data = zip_bytes({".DS_Store": b"\x00\x00\x00\x01"}, directories=["empty/"])
    report = extract_file(write(tmp_path, "hollow.zip", data), "hollow.zip")
    assert report.status == FileStatus.FAILED
    assert report.message == "The archive contains no files."


def test_it_refuses_a_damaged_archive(tmp_path: Path) -> None:
    data = zip_bytes({"a.txt": GOOD, "b.txt": GOOD})
    report = extract_file(write(tmp_path, "cut.zip", data[: len(data) // 2]), "cut.zip")
    assert report.status == FileStatus.FAILED
    assert report.message == "The ZIP archive is damaged and could not be read."


def test_it_refuses_text_named_zip(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "fake.zip", "hello\n"), "fake.zip")
    assert report.message == "The file is named .zip but is not a ZIP archive."


def test_it_reads_an_archive_by_content_whatever_its_name(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "backup.dat", zip_bytes({"good.txt": GOOD})), "backup.dat")
    assert report.detected_type == "zip"
    assert report.status == FileStatus.OK
