"""Recipe `qa`, evaluation: the teacher as judge of blind answers, when it is large enough to judge.

ROUGE-L counts shared words, so a right answer in other words scores low and a fluent wrong one can score
high. A judge reads meaning: the teacher is shown the question, the reference answer (which it wrote seeing the
chunk) and a candidate answer (base, expert or its own blind one, reasoning removed), and grades the candidate
1–5 against the reference; `qa_parse.parse_grade` reads the grade. The mean grade per model goes next to
ROUGE-L in metrics.json, the card and the job page, and each kept example carries its grade.

Only a capable teacher judges (`evaluation.teacher_judge`, default auto): an endpoint teacher (hosted and vLLM
models are the large ones) or a local model of at least JUDGE_MIN_PARAMETERS. Below that a judge is noise —
SmolLM2-135M gives a right and a wrong answer the same grade — and would only cost time. When the teacher is the
student's base its blind answers are the base's, so they are judged once. A spent token budget leaves the rest
unjudged and says so; an unreadable grade is counted, never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.ml.distill.qa_generate import (
    TeacherMode,
    chat_within_budget,
)
from workers.ml.distill.qa_parse import (
    parse_grade,
)
from workers.ml.distill.qa_prompts import (
    SMALL_TEACHER_PARAMETERS,
    GraderDecision,
    grader_decision,
    user_turn,
)
from workers.ml.distill.teachers import Teacher

JUDGE_MIN_PARAMETERS = SMALL_TEACHER_PARAMETERS  # the size from which a local teacher also writes usable JSON pairs
JUDGE_MAX_NEW_TOKENS = 16  # a grade is a digit or a short sentence ("Score: 4/5")


def judging_prompt(question: str, reference: str, answer: str) -> str:
    return (
        f"Question: {question}\nReference answer: {reference}\nCandidate answer: {answer or '(no answer)'}\n\n"
        "Grade the candidate answer from 1 to 5 against the reference answer. 5: it says what the reference says "
        "and nothing that contradicts it. 3: partly right. 1: wrong, empty or unrelated to the question. "
        "Reply with the grade only, a single digit."
    )


JudgeDecision = GraderDecision  # whether the teacher judges the answers, and why (metrics.json shows it as is)


def judge_decision(teacher: Teacher, setting: str) -> JudgeDecision:
    """Run the judge under `setting` (auto, on, off) with this teacher?"""
    return grader_decision(teacher, setting, setting_name="evaluation.teacher_judge", role="judges", noun="judge")


@dataclass
class Judgement:
    """The judge's grades of each model's answers, aligned with the questions (None: not graded)."""

    grades: dict[str, list[int | None]]
    unreadable: dict[str, int] = field(default_factory=dict)  # replies with no grade in them
    budget_exhausted: bool = False

    def means(self) -> dict[str, float | None]:
        """Mean grade (1–5) per model over the answers it got a grade for; None when it got none."""
        means: dict[str, float | None] = {}
        for name, grades in self.grades.items():
            given = [grade for grade in grades if grade is not None]
            means[name] = sum(given) / len(given) if given else None
        return means

    def summary(self, judge: str) -> dict[str, Any]:
        return {
            "judge": judge,
            "scale": "1-5, against the reference answer",
            "mean_grade": self.means(),
            "graded": {name: sum(grade is not None for grade in grades) for name, grades in self.grades.items()},
            "unreadable": dict(self.unreadable),
            "budget_exhausted": self.budget_exhausted,
        }


def judge_answers(
    teacher: Teacher,
    mode: TeacherMode,
    questions: Sequence[str],
    references: Sequence[str],
    answers: Mapping[str, Sequence[str]],
    *,
    same_as: Mapping[str, str] | None = None,
) -> Judgement:
    """Grade every model's answers in one teacher call. `same_as` maps a model to one whose answers it shares
    (the teacher as the student's base answers as the base), which is judged once."""
    same_as = dict(same_as or {})
    judged = [name for name in answers if name not in same_as]
    conversations = [
        user_turn(judging_prompt(question, reference, answer))
        for name in judged
        for question, reference, answer in zip(questions, references, answers[name], strict=True)
    ]
    replies, exhausted = chat_within_budget(teacher, conversations, JUDGE_MAX_NEW_TOKENS, mode)
    grades: dict[str, list[int | None]] = {}
    unreadable: dict[str, int] = {}
    for position, name in enumerate(judged):
        own = replies[position * len(questions) : (position + 1) * len(questions)]
        grades[name] = [None if reply is None else parse_grade(reply) for reply in own]
        read = zip(own, grades[name], strict=True)
        unreadable[name] = sum(reply is not None and grade is None for reply, grade in read)
    for name, source in same_as.items():
        grades[name], unreadable[name] = list(grades[source]), unreadable[source]
    ordered = {name: grades[name] for name in answers}
    return Judgement(ordered, {name: unreadable[name] for name in answers}, exhausted)
