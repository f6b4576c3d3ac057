"""Recipe qa: reading the teacher's replies (pairs, grades, reasoning) and how far an answer comes from its chunk."""

from __future__ import annotations

import pytest

from workers.ml.distill.config import QASettings
from workers.ml.distill.qa_parse import (
    UNGRADED_MIN_GROUNDING,
    answer_grounding,
    content_words,
    min_answer_grounding,
    parse_grade,
    parse_pairs,
)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        pytest.param(
            '{"pairs": [{"question": "What is X?", "answer": "X is 1."}, {"question": "Y?", "answer": "Y is 2."}]}',
            [("What is X?", "X is 1."), ("Y?", "Y is 2.")],
            id="json-object",
        ),
        pytest.param('[{"question": "What is X?", "answer": "X is 1."}]', [("What is X?", "X is 1.")], id="json-list"),
        pytest.param(
            'Here you are:\n```json\n{"pairs": [{"Question": "What is X?", "Answer": "X is 1."}]}\n```\nEnjoy!',
            [("What is X?", "X is 1.")],
            id="fenced-block",
        ),
        pytest.param(
            "Q: What is X?\nA: X is 1.\nQ: What is Y?\nA: Y is\n2.",
            [("What is X?", "X is 1."), ("What is Y?", "Y is 2.")],
            id="q-a-lines",
        ),
        pytest.param(
            "1. **Question:** What is X?\n   **Answer:** X is 1.\n\nQuestion: What is Y?",
            [("What is X?", "X is 1."), ("What is Y?", "")],
            id="question-answer-lines-cut-short",
        ),
        pytest.param(
            '<think>The text says X.</think>\n[{"q": "What is X?", "a": "1"}]', [("What is X?", "1")], id="r1"
        ),
        pytest.param(
            "Q: 1. What is X?\nA: 2. X is 1.\nQ: 2) What is Y?\nA: Y.\nQ: - What is Z?\nA: Z.",
            [("What is X?", "2. X is 1."), ("What is Y?", "Y."), ("What is Z?", "Z.")],
            id="numbered-questions",  # SmolLM2-135M numbers them; an answer keeps its text as written
        ),
        pytest.param(
            '[{"question": "(3) What is X?", "answer": "1.5 of them."}]',
            [("What is X?", "1.5 of them.")],
            id="numbered-json-question",
        ),
    ],
)
def test_it_parses_the_reply_formats_a_teacher_may_use(reply: str, expected: list[tuple[str, str]]) -> None:
    pairs = parse_pairs(reply)
    assert pairs is not None
    assert [(pair.question, pair.answer) for pair in pairs] == expected


@pytest.mark.parametrize(
    "reply",
    ["", "I cannot help with that.", "Here is a text about X. Answer: nothing", '{"note": "no pairs"}', "<think>hmm"],
)
def test_it_calls_anything_else_unparseable(reply: str) -> None:
    assert parse_pairs(reply) is None


def test_it_measures_how_much_of_an_answer_its_chunk_holds() -> None:
    chunk = "Set STORAGE_BACKEND=s3 to keep uploads in an S3-compatible bucket; the web server then streams them."
    assert answer_grounding("Uploads go to an S3-compatible bucket when STORAGE_BACKEND is s3.", chunk) == 1.0
    # "create", "bucket", "specified", "name", "distillery_extrests", "command", "line", "tool": one of eight.
    invented = "You can create a bucket with a specified name using the DISTILLERY_EXTRESTS command-line tool."
    assert answer_grounding(invented, chunk) == pytest.approx(1 / 8)
    assert answer_grounding("Yes.", chunk) == 1.0  # nothing to check: not held against it
    assert content_words("The Bucket's NAME is ö-ü") == ["bucket", "name"]


def test_it_checks_grounding_by_default_only_when_nobody_grades_the_pairs() -> None:
    assert min_answer_grounding(QASettings(), graded=False) == UNGRADED_MIN_GROUNDING == 0.4
    assert min_answer_grounding(QASettings(), graded=True) == 0.0
    assert min_answer_grounding(QASettings(min_answer_grounding=0.7), graded=True) == 0.7
    assert min_answer_grounding(QASettings(min_answer_grounding=0.0), graded=False) == 0.0
    with pytest.raises(ValueError, match=r"qa\.min_answer_grounding must be between 0 and 1, not 1\.5"):
        QASettings(min_answer_grounding=1.5)


@pytest.mark.parametrize(
    ("reply", "grade"),
    [
        ("5", 5),
        ("Score: 4/5", 4),
        ("I would rate this pair 3 out of 5.", 3),
        ('{"score": 2}', 2),
        ("On a scale of 1 to 5, I give it a 4.", 4),
        ("Rating: **5**", 5),
        ("4. The answer is grounded in the excerpt.", 4),
        ("1. The purpose of the document is to store data.\n2. The", None),  # a list SmolLM2-135M wrote
        ("Score: 4/5\n1. Grounded.\n2. Useful.", 4),
        ("<think>Grounded, useful.</think> 5", 5),
        ("The answer is correct.", None),
        ("10", None),
        ("", None),
    ],
)
def test_it_reads_a_grade_from_what_the_teacher_replies(reply: str, grade: int | None) -> None:
    assert parse_grade(reply) == grade
