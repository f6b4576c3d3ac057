from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.workers.ml.ingest.files import write
from workers.ml.ingest.extract import extract_file
from workers.ml.ingest.report import Example, FileStatus


def jsonl(*records: Any) -> str:
    return "".join((record if isinstance(record, str) else json.dumps(record)) + "\n" for record in records)


def test_it_joins_text_records_into_one_document_of_paragraphs(tmp_path: Path) -> None:
    path = write(tmp_path, "notes.jsonl", jsonl({"text": "First note."}, {"text": "Second note.", "id": 2}))
    report = extract_file(path, "notes.jsonl")
    assert report.status == FileStatus.OK
    assert report.detected_type == "jsonl"
    assert report.message == "Kept 2 records (text records)."
    assert len(report.documents) == 1
    assert report.documents[0].text == "First note.\n\nSecond note."
    assert report.documents[0].examples == []
    assert report.details == {"format": "text", "records": 2, "skipped_lines": [], "skipped_count": 0}


def test_it_turns_conversations_into_examples_and_text(tmp_path: Path) -> None:
    conversation = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "How many days of leave?"},
            {"role": "assistant", "content": "25."},
            {"role": "user", "content": [{"type": "text", "text": "And carry-over?"}]},
            {"role": "assistant", "content": "Up to 5 days."},
        ]
    }
    report = extract_file(write(tmp_path, "chat.jsonl", jsonl(conversation)), "chat.jsonl")
    assert report.status == FileStatus.OK
    assert report.message == "Kept 1 record (conversations)."
    assert report.details["format"] == "messages"
    document = report.documents[0]
    assert document.examples == [
        Example(prompt="How many days of leave?\n\nAnd carry-over?", response="Up to 5 days.", kind="messages")
    ]
    assert document.text == (
        "System: Be brief.\n\nUser: How many days of leave?\n\nAssistant: 25.\n\n"
        "User: And carry-over?\n\nAssistant: Up to 5 days."
    )


def test_it_reads_prompt_completion_pairs(tmp_path: Path) -> None:
    path = write(tmp_path, "pairs.jsonl", jsonl({"prompt": "Capital of France?", "completion": "Paris."}))
    report = extract_file(path, "pairs.jsonl")
    assert report.message == "Kept 1 record (prompt/completion pairs)."
    assert report.documents[0].examples == [
        Example(prompt="Capital of France?", response="Paris.", kind="prompt_completion")
    ]
    assert report.documents[0].text == "Capital of France?\n\nParis."


def test_it_reads_question_answer_pairs(tmp_path: Path) -> None:
    path = write(tmp_path, "qa.jsonl", jsonl({"question": "Leave days?", "answer": "25."}))
    report = extract_file(path, "qa.jsonl")
    assert report.message == "Kept 1 record (question/answer pairs)."
    assert report.documents[0].examples == [Example(prompt="Leave days?", response="25.", kind="question_answer")]
    assert report.documents[0].text == "Question: Leave days?\n\nAnswer: 25."


def test_it_skips_broken_lines_and_names_them(tmp_path: Path) -> None:
    good = {"question": "Q?", "answer": "A."}
    lines = jsonl(good, good, "{not json", good, "", "[1, 2]", good, {"question": "no answer"}, good)
    report = extract_file(write(tmp_path, "qa.jsonl", lines), "qa.jsonl")
    # Line 5 is blank: ignored silently, but it still counts in the numbering.
    assert report.status == FileStatus.PARTIAL
    assert report.message == "Skipped 3 broken lines (3, 6, 8); kept 5 records (question/answer pairs)."
    assert report.details == {
        "format": "question_answer",
        "records": 5,
        "skipped_lines": [3, 6, 8],
        "skipped_count": 3,
    }
    assert len(report.documents[0].examples) == 5


def test_it_lists_only_the_first_twenty_broken_lines(tmp_path: Path) -> None:
    lines = jsonl({"text": "kept"}, *["oops"] * 25)
    report = extract_file(write(tmp_path, "many.jsonl", lines), "many.jsonl")
    first = ", ".join(str(number) for number in range(2, 22))
    assert report.message == f"Skipped 25 broken lines ({first}, … (first 20 of 25)); kept 1 record (text records)."
    assert report.details["skipped_lines"] == list(range(2, 22))
    assert report.details["skipped_count"] == 25


def test_it_picks_the_shape_most_records_have(tmp_path: Path) -> None:
    lines = jsonl({"text": "odd one"}, {"prompt": "P1", "completion": "C1"}, {"prompt": "P2", "completion": "C2"})
    report = extract_file(write(tmp_path, "mixed.jsonl", lines), "mixed.jsonl")
    assert report.details["format"] == "prompt_completion"
    assert report.message == "Skipped 1 broken line (1); kept 2 records (prompt/completion pairs)."


def test_it_fails_when_every_line_is_broken(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "bad.jsonl", "{oops\nnope\n\n42\n"), "bad.jsonl")
    assert report.status == FileStatus.FAILED
    assert report.message == "No usable record in 3 lines: every line is broken (1, 2, 4)."
    assert report.documents == []


def test_it_fails_when_no_record_has_a_known_shape(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "odd.jsonl", jsonl({"title": "x"}, {"body": "y"})), "odd.jsonl")
    assert report.status == FileStatus.FAILED
    assert report.message == (
        "No record has a 'text', 'messages', 'prompt'/'completion' or 'question'/'answer' field: "
        "cannot tell what to train on."
    )


def test_it_does_not_cut_a_record_at_a_unicode_line_separator(tmp_path: Path) -> None:
    report = extract_file(write(tmp_path, "ls.jsonl", '{"text": "one\u2028two"}\n'), "ls.jsonl")
    assert report.status == FileStatus.OK
    assert report.documents[0].text == "one\u2028two"


def test_it_refuses_a_conversation_without_an_assistant_turn(tmp_path: Path) -> None:
    lines = jsonl(
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"messages": [{"role": "user", "content": "Anyone?"}]},
    )
    report = extract_file(write(tmp_path, "chat.jsonl", lines), "chat.jsonl")
    assert report.message == "Skipped 1 broken line (2); kept 1 record (conversations)."
