"""The teacher as judge of blind answers: when it judges, what it is shown, and what its grades become."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import pytest

from workers.ml.catalog import LoadedModel
from workers.ml.distill.config import EvalSettings, QASettings
from workers.ml.distill.qa_judge import JUDGE_MIN_PARAMETERS, judge_answers, judge_decision
from workers.ml.distill.qa_prompts import (
    GraderDecision,
    self_reward_decision,
)
from workers.ml.distill.teachers import LocalTeacher, Teacher, TeacherBudgetExhausted, TokenUsage

QUESTIONS = ["What is the alpha code?", "What is the beta code?", "What is the gamma code?"]
REFERENCES = ["The alpha code is alpha.", "The beta code is beta.", "The gamma code is gamma."]


def _field(name: str, prompt: str) -> str:
    match = re.search(rf"^{name}: (.*)$", prompt, re.M)
    assert match, f"{name} missing from the judging prompt"
    return match.group(1)


def exact_judge(conversation: list[dict[str, str]]) -> str:
    """5 for the reference word for word, "Score: 2/5" for anything else, no grade for an empty answer."""
    prompt = conversation[-1]["content"]
    answer, reference = _field("Candidate answer", prompt), _field("Reference answer", prompt)
    if answer == "(no answer)":
        return "I cannot grade this."
    return "5" if answer == reference else "Score: 2/5"


class ScriptedTeacher(Teacher):
    """A teacher whose replies come from `reply`; records each chat call. `budget` replies, then the cap."""

    def __init__(self, reply: Callable[[list[dict[str, str]]], str], budget: int | None = None) -> None:
        self.reply, self.budget = reply, budget
        self.label = "scripted judge"
        self.usage = TokenUsage()
        self.calls: list[int] = []

    def chat(
        self, conversations: Sequence[Any], *, max_new_tokens: int, temperature: float = 0.0, **_: Any
    ) -> list[str]:
        self.calls.append(len(conversations))
        replies = [self.reply(list(conversation)) for conversation in conversations]
        if self.budget is not None and self.budget < len(replies):
            partial = replies[: self.budget] + [None] * (len(replies) - self.budget)
            raise TeacherBudgetExhausted("budget spent", partial_results=partial)
        return replies

    def close(self) -> None:
        pass


def test_it_grades_every_models_answers_against_the_reference_in_one_call() -> None:
    teacher = ScriptedTeacher(exact_judge)
    answers = {
        "base": ["The alpha code is beta.", "", "I do not know."],
        "expert": ["The alpha code is alpha.", "The beta code is beta.", "The gamma code is delta."],
        "teacher_blind": ["I do not know."] * 3,
    }
    judgement = judge_answers(teacher, nullcontext, QUESTIONS, REFERENCES, answers)
    assert teacher.calls == [9]
    assert judgement.grades == {"base": [2, None, 2], "expert": [5, 5, 2], "teacher_blind": [2, 2, 2]}
    assert judgement.means() == {"base": 2.0, "expert": 4.0, "teacher_blind": 2.0}
    summary = judgement.summary("scripted judge")
    assert summary["graded"] == {"base": 2, "expert": 3, "teacher_blind": 3}
    assert summary["unreadable"] == {"base": 1, "expert": 0, "teacher_blind": 0}
    assert summary["budget_exhausted"] is False


def test_it_shows_the_judge_the_question_its_reference_and_the_answer() -> None:
    prompts: list[str] = []

    def recording(conversation: list[dict[str, str]]) -> str:
        prompts.append(conversation[-1]["content"])
        return "4"

    judge_answers(ScriptedTeacher(recording), nullcontext, QUESTIONS[:1], REFERENCES[:1], {"expert": ["Alpha."]})
    (prompt,) = prompts
    assert _field("Question", prompt) == QUESTIONS[0]
    assert _field("Reference answer", prompt) == REFERENCES[0]
    assert _field("Candidate answer", prompt) == "Alpha."
    assert "1 to 5" in prompt


def test_it_judges_answers_a_model_shares_with_another_once() -> None:
    teacher = ScriptedTeacher(exact_judge)
    base = ["The alpha code is alpha.", "No.", "No."]
    answers = {"base": base, "expert": list(REFERENCES), "teacher_blind": base}
    judgement = judge_answers(teacher, nullcontext, QUESTIONS, REFERENCES, answers, same_as={"teacher_blind": "base"})
    assert teacher.calls == [6]
    assert judgement.grades["teacher_blind"] == judgement.grades["base"] == [5, 2, 2]
    assert list(judgement.grades) == ["base", "expert", "teacher_blind"]


def test_it_keeps_the_grades_that_came_back_when_the_budget_runs_out() -> None:
    teacher = ScriptedTeacher(exact_judge, budget=4)
    answers = {"base": list(REFERENCES), "expert": list(REFERENCES)}
    judgement = judge_answers(teacher, nullcontext, QUESTIONS, REFERENCES, answers)
    assert judgement.budget_exhausted is True
    assert judgement.grades == {"base": [5, 5, 5], "expert": [5, None, None]}
    assert judgement.unreadable == {"base": 0, "expert": 0}  # not sent is not unreadable
    assert judgement.means() == {"base": 5.0, "expert": 5.0}


def test_it_lets_only_a_teacher_large_enough_judge_under_auto(tiny_student: LoadedModel) -> None:
    small = LocalTeacher(tiny_student)
    decision = judge_decision(small, "auto")
    assert decision.run is False
    assert "under the 1B a judge needs" in decision.why
    assert judge_decision(small, "on").run is True

    large_info = dataclasses.replace(tiny_student.info, num_parameters=JUDGE_MIN_PARAMETERS + 1)
    large = LocalTeacher(dataclasses.replace(tiny_student, info=large_info))
    assert judge_decision(large, "auto").run is True
    assert judge_decision(large, "off").run is False

    endpoint = ScriptedTeacher(exact_judge)
    assert judge_decision(endpoint, "auto").run is True
    assert "endpoint" in judge_decision(endpoint, "auto").why


def test_it_lets_only_a_teacher_large_enough_grade_its_own_pairs_under_auto(tiny_student: LoadedModel) -> None:
    small = LocalTeacher(tiny_student)
    decision = self_reward_decision(small, QASettings())
    assert decision.run is False
    assert "under the 1B a grader needs; qa.self_reward on forces it" in decision.why
    assert self_reward_decision(small, QASettings(self_reward="on")).run is True

    large_info = dataclasses.replace(tiny_student.info, num_parameters=JUDGE_MIN_PARAMETERS + 1)
    large = LocalTeacher(dataclasses.replace(tiny_student, info=large_info))
    assert self_reward_decision(large, QASettings()).run is True
    assert self_reward_decision(large, QASettings(self_reward="off")).why == "off in the settings (qa.self_reward)"

    endpoint = ScriptedTeacher(exact_judge)
    assert self_reward_decision(endpoint, QASettings()) == GraderDecision(
        True, "auto: an endpoint teacher grades its pairs"
    )


def test_it_refuses_an_unknown_self_reward_setting() -> None:
    with pytest.raises(ValueError, match=r"qa\.self_reward must be one of auto, on, off, not True"):
        QASettings(self_reward=True)  # type: ignore[arg-type]


def test_it_refuses_an_unknown_judge_setting() -> None:
    with pytest.raises(ValueError, match=r"evaluation\.teacher_judge must be one of auto, on, off"):
        EvalSettings(teacher_judge="sometimes")  # type: ignore[arg-type]
