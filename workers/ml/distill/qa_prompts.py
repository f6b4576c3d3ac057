"""Recipe `qa`: what the teacher is asked, and whether it grades.

A capable teacher (an endpoint, or a local model of ~1B parameters and more) is asked for strict JSON,
`{"pairs": [{"question": …, "answer": …}]}`. Models below that size rarely keep to JSON (SmolLM2-135M writes
"Question: … Answer: …" prose instead), so they get the simpler `Q: … / A: …` line format (`uses_simple_prompt`);
qa_parse.py reads every form from every teacher. With `qa.reasoning` the teacher is asked for its step-by-step
reasoning before each answer.

Grading (`grader_decision`): the teacher grades its own pairs under self-reward (`qa.self_reward`) and the blind
answers as judge (`evaluation.teacher_judge`). By default (auto) only a teacher able to grade does: an endpoint, or
a local model of 1B+ parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.ml.distill.config import QASettings
from workers.ml.distill.teachers import LocalTeacher, Teacher

PROMPT_VERSION = 2  # part of the generation fingerprint: a new prompt (2: the shuffled order) means new data
SMALL_TEACHER_PARAMETERS = 1_000_000_000  # below this, a local teacher gets the simple Q:/A: line format


def _document(chunk_text: str) -> str:
    return f"Here is an excerpt of a company document:\n\n<document>\n{chunk_text.strip()}\n</document>\n\n"


def generation_prompt(chunk_text: str, settings: QASettings, *, simple: bool) -> str:
    """The user turn asking the teacher for `pairs_per_chunk` grounded pairs about one chunk."""
    n = settings.pairs_per_chunk
    if simple:
        reasoning = "R: <how the excerpt answers it, step by step>\n" if settings.reasoning else ""
        return (
            f"{_document(chunk_text)}Write {n} questions about this text and answer each one using the text. "
            f"Use this format:\nQ: <question>\n{reasoning}A: <answer>"
        )
    if settings.reasoning:
        shape = '{"pairs": [{"question": "...", "reasoning": "...", "answer": "..."}]}'
        reasoning = (
            'Before each answer, give in "reasoning" the step-by-step reasoning from the excerpt that leads to it. '
        )
    else:
        shape = '{"pairs": [{"question": "...", "answer": "..."}]}'
        reasoning = ""
    return (
        f"{_document(chunk_text)}Write {n} question–answer pair{'s' if n != 1 else ''} about this excerpt. "
        "Each question must be answerable from the excerpt alone, as someone who needs this document would ask "
        "it; each answer must be correct according to the excerpt, self-contained, and one to three sentences "
        f"long. {reasoning}Reply with JSON only, in exactly this shape:\n{shape}"
    )


def grading_prompt(chunk_text: str, question: str, answer: str) -> str:
    return (
        f"{_document(chunk_text)}Question: {question}\nAnswer: {answer}\n\n"
        "Grade this question–answer pair from 1 to 5. 5: the answer is fully supported by the excerpt and the "
        "question is useful to someone who needs this document. 1: the answer is not supported by the excerpt, "
        "or the question is useless. Reply with the grade only, a single digit."
    )


def reference_prompt(chunk_text: str, question: str) -> str:
    """The teacher answering with the chunk in view (the reference answers of evaluation)."""
    return f"{_document(chunk_text)}Answer this question using the excerpt, in one to three sentences.\n\n{question}"


def user_turn(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def local_parameters(teacher: Teacher) -> int | None:
    """A local teacher's parameter count (None for an endpoint, or when the catalog does not know it)."""
    if not isinstance(teacher, LocalTeacher):
        return None
    parameters = getattr(teacher.loaded.info, "num_parameters", None)
    return parameters if isinstance(parameters, int) else None


def uses_simple_prompt(teacher: Teacher) -> bool:
    """Small local teachers get the Q:/A: line format (they rarely produce valid JSON)."""
    parameters = local_parameters(teacher)
    return parameters is not None and parameters < SMALL_TEACHER_PARAMETERS


@dataclass(frozen=True)
class GraderDecision:
    """Whether the teacher grades (its own pairs under self-reward, or the answers as judge), and why."""

    run: bool
    why: str


def grader_decision(teacher: Teacher, setting: str, *, setting_name: str, role: str, noun: str) -> GraderDecision:
    """Grade under `setting` (auto, on, off)? auto: an endpoint, or a local teacher of SMALL_TEACHER_PARAMETERS
    or more. A smaller one grades no better than chance (bench/judge.py: SmolLM2-135M gives a right and a wrong
    answer the same grade; as self-reward it kept 1 of 64 pairs, most "graded" with a numbered list)."""
    if setting == "off":
        return GraderDecision(False, f"off in the settings ({setting_name})")
    if setting == "on":
        return GraderDecision(True, f"on in the settings ({setting_name})")
    if setting != "auto":
        raise ValueError(f"Unknown {setting_name} setting {setting!r}: use one of auto, on, off.")
    if not isinstance(teacher, LocalTeacher):
        return GraderDecision(True, f"auto: an endpoint teacher {role}")
    parameters = local_parameters(teacher)
    minimum = f"{SMALL_TEACHER_PARAMETERS / 1e9:g}B"
    if parameters is not None and parameters >= SMALL_TEACHER_PARAMETERS:
        return GraderDecision(
            True, f"auto: the local teacher has {parameters / 1e9:.2f}B parameters (at least {minimum})"
        )
    size = "an unknown number of" if parameters is None else f"{parameters / 1e6:.0f}M"
    return GraderDecision(
        False,
        f"auto: the local teacher has {size} parameters, under the {minimum} a {noun} needs; "
        f"{setting_name} on forces it",
    )


def self_reward_decision(teacher: Teacher, settings: QASettings) -> GraderDecision:
    """Does the teacher grade its own pairs (qa.self_reward)?"""
    return grader_decision(
        teacher, settings.self_reward, setting_name="qa.self_reward", role="grades its pairs", noun="grader"
    )
