"""JSONL: one JSON object per line, in one of four shapes, detected per file.

- `text`: {"text": ...} records;
- `messages`: chat transcripts, {"messages": [{"role": ..., "content": ...}, ...]};
- `prompt_completion`: {"prompt": ..., "completion": ...};
- `question_answer`: {"question": ..., "answer": ...}.

The shape most valid lines have is the file's shape; a line that is not JSON, not an object or lacks that
shape's fields is skipped and reported by its 1-based line number (blank lines are not lines of data).
Records become paragraphs of ONE document, so the chunker packs short records together instead of making a
tiny chunk of each; conversations and pairs also become `Example`s shown on the corpus page.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from workers.ml.ingest import messages
from workers.ml.ingest.messages import line_list, plural
from workers.ml.ingest.options import ExtractOptions
from workers.ml.ingest.report import Example, ExtractedDocument, FileReport, FileStatus, failed
from workers.ml.ingest.text_reader import decode_text

FORMATS = ("text", "messages", "prompt_completion", "question_answer")  # ties go to the earlier one
LISTED_LINES = 20

_PAIR_FIELDS = {"prompt_completion": ("prompt", "completion"), "question_answer": ("question", "answer")}


def _string(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _content(value: Any) -> str | None:
    """A message's content: a string, or OpenAI-style parts [{"type": "text", "text": ...}, ...]."""
    if isinstance(value, list):
        parts = [_string(part.get("text")) for part in value if isinstance(part, dict)]
        value = "\n".join(part for part in parts if part)
    return _string(value)


def formats_of(record: dict[str, Any]) -> list[str]:
    """The shapes a record's keys announce (before checking their values)."""
    found = []
    if "text" in record:
        found.append("text")
    if "messages" in record:
        found.append("messages")
    found.extend(kind for kind, (first, second) in _PAIR_FIELDS.items() if first in record and second in record)
    return found


def _read_record(record: dict[str, Any], kind: str) -> tuple[str, Example | None] | None:
    """(paragraphs of the record, example) in the file's shape, or None when the record does not fit it."""
    if kind == "text":
        text = _string(record.get("text"))
        return (text, None) if text else None
    if kind == "messages":
        return _read_conversation(record.get("messages"))
    first, second = _PAIR_FIELDS[kind]
    prompt, response = _string(record.get(first)), _string(record.get(second))
    if not prompt or not response:
        return None
    # Bare question/answer text loses which is which; a prompt already reads as an instruction.
    text = f"Question: {prompt}\n\nAnswer: {response}" if kind == "question_answer" else f"{prompt}\n\n{response}"
    return text, Example(prompt=prompt, response=response, kind=kind)


def _read_conversation(turns: Any) -> tuple[str, Example] | None:
    if not isinstance(turns, list) or not turns:
        return None
    rendered: list[tuple[str, str]] = []
    for turn in turns:
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str):
            return None
        content = _content(turn.get("content"))
        if content:
            rendered.append((turn["role"].strip().lower(), content))
    user_turns = [content for role, content in rendered if role == "user"]
    assistant_turns = [content for role, content in rendered if role == "assistant"]
    if not user_turns or not assistant_turns:
        return None
    text = "\n\n".join(f"{role.capitalize()}: {content}" for role, content in rendered)
    return text, Example(prompt="\n\n".join(user_turns), response=assistant_turns[-1], kind="messages")


def read_jsonl(data: bytes, name: str, detected_type: str, options: ExtractOptions) -> FileReport:
    decoded = decode_text(data)
    if decoded is None:
        return failed(name, "binary", messages.NO_ENCODING)
    # split("\n"), not splitlines(): U+2028 and friends are legal inside JSON strings and must not cut a record.
    lines = [(number, line.strip()) for number, line in enumerate(decoded[0].split("\n"), start=1) if line.strip()]
    if not lines:
        return failed(name, "empty", messages.EMPTY)
    objects: list[tuple[int, dict[str, Any]]] = []
    broken: list[int] = []
    for number, line in lines:
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            broken.append(number)
            continue
        if isinstance(value, dict):
            objects.append((number, value))
        else:
            broken.append(number)
    votes = Counter(kind for _, record in objects for kind in formats_of(record))
    if not votes:
        if not objects:
            return _all_broken(name, sorted(broken))
        return failed(name, "jsonl", messages.JSONL_NO_FORMAT, records=0)
    kind = max(FORMATS, key=lambda candidate: (votes[candidate], -FORMATS.index(candidate)))
    texts: list[str] = []
    examples: list[Example] = []
    for number, record in objects:
        read = _read_record(record, kind)
        if read is None:
            broken.append(number)
            continue
        texts.append(read[0])
        if read[1] is not None:
            examples.append(read[1])
    broken.sort()
    if not texts:
        return _all_broken(name, broken, format=kind)
    details = {
        "format": kind,
        "records": len(texts),
        "skipped_lines": broken[:LISTED_LINES],
        "skipped_count": len(broken),
    }
    records = plural(len(texts), "record")
    label = messages.JSONL_LABELS[kind]
    if broken:
        status = FileStatus.PARTIAL
        skipped = plural(len(broken), "broken line")
        listed = line_list(broken[:LISTED_LINES], len(broken))
        message = messages.JSONL_PARTIAL.format(skipped=skipped, lines=listed, records=records, label=label)
    else:
        status, message = FileStatus.OK, messages.JSONL_OK.format(records=records, label=label)
    return FileReport(
        name=name,
        detected_type="jsonl",
        status=status,
        message=message,
        documents=[ExtractedDocument(name=name, text="\n\n".join(texts), kind="jsonl", examples=examples)],
        details=details,
    )


def _all_broken(name: str, broken: list[int], **details: Any) -> FileReport:
    listed = line_list(broken[:LISTED_LINES], len(broken))
    return failed(
        name,
        "jsonl",
        messages.JSONL_ALL_BROKEN.format(skipped=plural(len(broken), "line"), lines=listed),
        records=0,
        skipped_lines=broken[:LISTED_LINES],
        skipped_count=len(broken),
        **details,
    )
