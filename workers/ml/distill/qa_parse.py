"""Recipe `qa`: reading the teacher's replies — its pairs and its grades — and how far an answer comes from its
chunk.

The parser accepts every form from every teacher: a JSON object or list, a fenced ```json block, JSON inside
prose, and `Q:`/`A:` (or `Question:`/`Answer:`) lines (`parse_pairs`; None: *unparseable*). An answer that arrives
as `<think>…</think> final answer`, or with a `reasoning` field or an `R:` line, is split into reasoning and
answer; scores compare only the text after `</think>` (`strip_reasoning`). `parse_grade` reads a 1–5 grade from
"4", "Score: 4/5", `{"score": 4}` … and refuses a numbered list or a range.

`answer_grounding` is the share of an answer's content words found in its chunk: the check of an invented answer
that needs no grader (qa_generate.py's *ungrounded*).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workers.ml.distill.config import QASettings

# qa.min_answer_grounding when it is None and the teacher does not grade. On a real SmolLM2-135M run (29 pairs
# kept, docs/benchmarks.md) the 10 answers under 0.4 that were not questions were all invented or generic
# ("… using the `DISTILLERY_EXTRESTS` command-line tool", "Optimizing a machine learning model involves …");
# the others scored 0.5 or more.
UNGRADED_MIN_GROUNDING = 0.4
# Words too common to show that an answer comes from its chunk (English; in other languages the filter is milder).
_COMMON_WORDS_TEXT = (
    "the and for are was were been being has have had this that these those with from into onto than then there "
    "their they them its you your yours our can could should would will may might must not but also about which "
    "what when where who whom why how does did doing done use used using uses yes"
)
_COMMON_WORDS = frozenset(_COMMON_WORDS_TEXT.split())


def min_answer_grounding(settings: QASettings, *, graded: bool) -> float:
    """qa.min_answer_grounding, its default resolved: checked when nobody grades the pairs, off when the teacher
    does."""
    if settings.min_answer_grounding is not None:
        return settings.min_answer_grounding
    return 0.0 if graded else UNGRADED_MIN_GROUNDING


@dataclass(frozen=True)
class ParsedPair:
    question: str
    answer: str
    reasoning: str = ""


_THINK_RE = re.compile(r"<think>(.*?)</think>", re.S | re.I)
_LEADING_THINK_RE = re.compile(r"^\s*<think>.*?</think>", re.S | re.I)
_FENCE_RE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.S)
_QUESTION_KEYS = ("question", "q", "query", "prompt")
_ANSWER_KEYS = ("answer", "a", "response", "final_answer")
_REASONING_KEYS = ("reasoning", "rationale", "thinking", "thoughts", "explanation")
# A "Q:"-style label at the start of a line, after optional list markers, numbering and Markdown emphasis.
_LINE_LABEL_RE = re.compile(
    r"^\s*(?:[-*•>]\s*|\d+[.)]\s*|#+\s*)*[*_]{0,2}\s*"
    r"(?P<label>question|answer|reasoning|q|a|r)\s*\d*\s*[*_]{0,2}\s*[:：.)]\s*[*_]{0,2}\s*(?P<rest>.*)$",
    re.I,
)
_LABELS = {"q": "q", "question": "q", "a": "a", "answer": "a", "r": "r", "reasoning": "r"}
# A list marker opening a question ("Q: 1. What …", `{"question": "2) What …"}`): small teachers number their
# questions, and a kept "1. What is X?" would teach the student to number its own questions and escape the
# duplicate filter as "2. What is X?". A question never opens with one.
_QUESTION_ENUMERATOR_RE = re.compile(r"^\s*(?:\(?\d{1,3}[.):]|[-*•])\s+")


def _clean_question(text: str) -> str:
    return _QUESTION_ENUMERATOR_RE.sub("", text.strip(), count=1).strip()


def content_words(text: str) -> list[str]:
    """The words of `text` that can tie it to a source: lower-cased, 3+ letters, not among _COMMON_WORDS."""
    return [word for word in re.findall(r"\w+", text.lower()) if len(word) > 2 and word not in _COMMON_WORDS]


def answer_grounding(answer: str, chunk_text: str) -> float:
    """The share of the answer's content words found in the chunk (1.0 for an answer with none, e.g. "Yes.")."""
    words = content_words(answer)
    if not words:
        return 1.0
    source = set(content_words(chunk_text))
    return sum(word in source for word in words) / len(words)


def only_a_question(text: str) -> bool:
    """An "answer" that is one question and nothing else ("A: 2. How do I X?": a small teacher's next question)."""
    body = _clean_question(text)
    return body.endswith("?") and not re.search(r"[.!?:;]\s", body[:-1])


def strip_reasoning(text: str) -> str:
    """The final answer of an R1-style text: what follows the last `</think>` (the whole text if none)."""
    closing = text.lower().rfind("</think>")
    return text[closing + len("</think>") :].strip() if closing >= 0 else text.strip()


def split_reasoning(answer: str) -> tuple[str, str]:
    """(reasoning, final answer) of an answer that may open with `<think>…</think>`."""
    match = _THINK_RE.search(answer)
    if not match:
        return "", answer.strip()
    return match.group(1).strip(), strip_reasoning(answer)


def _text_field(item: dict[str, Any], keys: Sequence[str]) -> str | None:
    lowered = {str(key).strip().lower(): value for key, value in item.items()}
    for key in keys:
        if key in lowered:
            value = lowered[key]
            if isinstance(value, str):
                return value
            if isinstance(value, int | float) and not isinstance(value, bool):
                return str(value)
            return ""
    return None


def _pairs_from_json(value: Any) -> list[ParsedPair] | None:
    """Pairs in a decoded JSON value, or None when it holds nothing shaped like question–answer pairs."""
    if isinstance(value, dict):
        if _text_field(value, _QUESTION_KEYS) is not None or _text_field(value, _ANSWER_KEYS) is not None:
            items: list[Any] = [value]
        else:
            # {"pairs": [...]} as asked, else the first list of objects ({"questions": [...]}, {"data": [...]} …).
            lists = [item for key, item in value.items() if str(key).lower() == "pairs" and isinstance(item, list)]
            lists += [
                item for item in value.values() if isinstance(item, list) and any(isinstance(x, dict) for x in item)
            ]
            if not lists:
                return None
            items = lists[0]
    elif isinstance(value, list):
        items = value
    else:
        return None
    pairs = []
    for item in items:
        if not isinstance(item, dict):
            continue
        question, answer = _text_field(item, _QUESTION_KEYS), _text_field(item, _ANSWER_KEYS)
        if question is None and answer is None:
            continue
        reasoning = _text_field(item, _REASONING_KEYS) or ""
        inline_reasoning, answer_text = split_reasoning(answer or "")
        pairs.append(ParsedPair(_clean_question(question or ""), answer_text, (reasoning or inline_reasoning).strip()))
    return pairs or None


def _json_candidates(text: str) -> list[str]:
    candidates = [block.strip() for block in _FENCE_RE.findall(text)]
    candidates.append(text.strip())
    for opening, closing in (("{", "}"), ("[", "]")):
        start, end = text.find(opening), text.rfind(closing)
        if 0 <= start < end:
            candidates.append(text[start : end + 1])
    return candidates


def _pairs_from_lines(text: str) -> list[ParsedPair] | None:
    pairs: list[dict[str, list[str]]] = []
    current: dict[str, list[str]] | None = None
    field_name: str | None = None
    for line in text.splitlines():
        match = _LINE_LABEL_RE.match(line)
        if match:
            label = _LABELS[match.group("label").lower()]
            rest = match.group("rest").strip().strip("*_").strip()
            if label == "q" or current is None or current.get(label):
                current = {"q": [], "r": [], "a": []}
                pairs.append(current)
            current[label].append(rest)
            field_name = label
        elif current is not None and field_name is not None and line.strip():
            current[field_name].append(line.strip())
    result = []
    for item in pairs:
        if not item["q"] and not item["a"]:
            continue
        inline_reasoning, answer = split_reasoning(" ".join(item["a"]))
        reasoning = " ".join(item["r"]).strip() or inline_reasoning
        result.append(ParsedPair(_clean_question(" ".join(item["q"])), answer, reasoning))
    # A text needs at least one question line to count as this format.
    return result if any(pair.question for pair in result) else None


def parse_pairs(text: str) -> list[ParsedPair] | None:
    """The question–answer pairs in a teacher's reply, or None when it is unparseable.

    Accepts a JSON object (`{"pairs": [...]}`, or any object holding one list of pairs, or one pair), a JSON
    list of pairs, either inside a fenced block or surrounded by prose, and `Q:`/`A:` (or `Question:`/`Answer:`,
    numbered or in Markdown bold) lines. A teacher's own `<think>` preamble is skipped. Pairs with a missing
    field come back with an empty string there (the caller drops them as empty).
    """
    body = _LEADING_THINK_RE.sub("", text, count=1).strip()
    if body.lower().startswith("<think>"):  # an unterminated preamble: the reply was cut while thinking
        return None
    for candidate in _json_candidates(body):
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        pairs = _pairs_from_json(value)
        if pairs is not None:
            return pairs
    return _pairs_from_lines(body)


_GRADE_OUT_OF_RE = re.compile(r"(?<![\d.])([1-5](?:\.\d+)?)\s*(?:/|out\s+of)\s*5(?!\d)", re.I)
_GRADE_LABEL_RE = re.compile(
    r"(?:score|rating|grade|rate)\w*[\"']?\s*(?:is|of|:|=)?\s*[*_\"']*\s*([1-5](?:\.\d+)?)(?![\d])", re.I
)
_RANGE_RE = re.compile(r"(?<![\d.])[0-5]\s*(?:-|–|—|to)\s*(?:5|10)(?![\d.])", re.I)
_NUMBER_RE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)(?![\d])")


_LIST_ITEM_RE = re.compile(r"^\s*(\d{1,2})[.)]\s+\S", re.M)


def _is_numbered_list(text: str) -> bool:
    """Whether lines open with 1., 2., … in turn (at least two of them)."""
    numbers = [int(number) for number in _LIST_ITEM_RE.findall(text)]
    return len(numbers) >= 2 and numbers == list(range(1, len(numbers) + 1))


def parse_grade(text: str) -> int | None:
    """A 1–5 grade read from a teacher's reply, or None when there is none (or several disagreeing ones).

    Tried in order: "4/5" or "4 out of 5"; a labelled number ("Score: 4", "rating of 4", `{"grade": 4}`);
    otherwise the numbers 1–5 in the text once ranges like "1-5" or "1 to 5" are removed, when they agree
    (or the reply opens with one), unless the reply is a numbered list (small teachers answer the question
    instead of grading it: its "1." is no grade). Fractions are rounded (4.5 → 5, halves up).
    """
    body = strip_reasoning(text)

    def to_grade(value: str) -> int | None:
        number = float(value)
        grade = int(number + 0.5)
        return grade if 1 <= grade <= 5 else None

    for pattern in (_GRADE_OUT_OF_RE, _GRADE_LABEL_RE):
        match = pattern.search(body)
        if match:
            return to_grade(match.group(1))
    if _is_numbered_list(body):  # "1. The purpose is …\n2. The …": the grader wrote a list, not a grade
        return None
    cleaned = _RANGE_RE.sub(" ", body)
    numbers = [value for value in _NUMBER_RE.findall(cleaned) if 1 <= float(value) <= 5]
    if not numbers:
        return None
    grades = {to_grade(value) for value in numbers}
    if len(grades) == 1:
        return grades.pop()
    first = _NUMBER_RE.match(cleaned.strip())
    return to_grade(first.group(1)) if first and first.group(1) in numbers else None
