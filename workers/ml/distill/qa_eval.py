"""Recipe `qa`, evaluation: base, expert and teacher answer questions blind and are scored against references.

Held-out questions: the teacher writes pairs from held-out chunks exactly as for training (qa_generate, with
self-reward when it is on), then — seeing the chunk — writes the reference answer to each question. Base and
expert (the peft model with its adapter off and on, through the student's chat template) and the teacher
(`teacher.chat`, without the chunk) answer each question blind; ROUGE-L F1 (evaluate.score_qa) against the
references says how much of the chunks' content each carries. `<think>` reasoning is removed before scoring.
A capable teacher also judges each answer 1–5 against its reference (qa_judge; `evaluation.teacher_judge`).
When the teacher is the student's own base, its blind answers are the base's (same weights, same template,
greedy) and are not generated twice.

A user-supplied eval set (`evaluation.eval_set`, JSONL of question/answer) is scored the same way for base,
expert and teacher, and is then the headline QA score of metrics.json (the company's own yardstick); the
held-out scores stay under `qa_evaluation`. A kd expert is scored on the eval set too (`heldout_questions=False`:
its teacher writes no questions); a teacher that cannot chat (a base model) is then left out, with a note.
The five best and five worst expert answers are kept as examples.

A spent teacher budget skips what needs the teacher (questions, references, its blind answers) and says so.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workers.ml.catalog_types import LoadedModel
from workers.ml.distill.config import DistillConfig
from workers.ml.distill.corpus import CorpusSnapshot
from workers.ml.distill.errors import DistillError, TeacherError
from workers.ml.distill.evaluate import QAExample, best_and_worst, load_eval_set, score_qa
from workers.ml.distill.progress import Progress, ProgressCallback, never_stop
from workers.ml.distill.qa import prompt_ids
from workers.ml.distill.qa_generate import (
    TeacherMode,
    chat_within_budget,
    generate_pairs,
)
from workers.ml.distill.qa_judge import JudgeDecision, Judgement, judge_answers, judge_decision
from workers.ml.distill.qa_parse import (
    strip_reasoning,
)
from workers.ml.distill.qa_prompts import (
    reference_prompt,
    user_turn,
)
from workers.ml.distill.teachers import Teacher, default_generation_batch

EXAMPLES_EACH_WAY = 5
BUDGET_SPENT = "the teacher's token budget was spent"


@dataclass
class QAEvaluation:
    """What build_metrics takes for the QA section (qa, qa_examples, qa_source) and extra metrics."""

    qa: dict[str, float | None] | None = None
    examples: list[QAExample] = field(default_factory=list)
    source: str | None = None
    judge: dict[str, Any] | None = None  # Judgement.summary() when the teacher judged
    extra: dict[str, Any] = field(default_factory=dict)

    def metrics_arguments(self) -> dict[str, Any]:
        """The qa_* arguments of export.build_metrics."""
        return {"qa": self.qa, "qa_examples": self.examples, "qa_source": self.source, "qa_judge": self.judge}


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(item) for item in value)
    return sorted(ids)


def _answered(answers: list[str]) -> Callable[[list[str]], list[str]]:
    """score_qa's answer_fn for answers already generated: returns them whatever the questions."""
    return lambda _questions: answers


def generate_answers(
    model: Any, tokenizer: Any, questions: Sequence[str], *, max_new_tokens: int, batch_size: int | None = None
) -> list[str]:
    """Greedy answers of `model` (e.g. the peft model, adapter on or off) to each question in its chat template."""
    if not questions:
        return []
    prompts = [prompt_ids(tokenizer, question) for question in questions]
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    config = copy.deepcopy(model.generation_config)
    config.update(do_sample=False, temperature=None, top_p=None, top_k=None, min_p=None, typical_p=None)
    config.update(max_new_tokens=max_new_tokens, pad_token_id=pad_id, num_beams=1, num_return_sequences=1)
    if eos_ids:
        config.update(eos_token_id=eos_ids)
    device = next(model.parameters()).device
    batch_size = batch_size or default_generation_batch(device.type)
    order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]), reverse=True)
    answers = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(prompts[index]) for index in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):  # left padding: every prompt ends where its answer starts
                input_ids[row, width - len(prompts[index]) :] = torch.tensor(prompts[index], dtype=torch.long)
                attention_mask[row, width - len(prompts[index]) :] = 1
            with torch.no_grad():
                output = model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
                )
            texts = tokenizer.batch_decode(output[:, width:].cpu(), skip_special_tokens=True)
            for index, text in zip(batch, texts, strict=True):
                answers[index] = text.strip()
    finally:
        model.train(was_training)
    return answers


@dataclass
class _Block:
    """One question set scored: mean ROUGE-L per model and the expert's examples, best first."""

    source: str
    questions: int
    rouge_l: dict[str, float | None]
    expert_examples: list[QAExample]
    notes: list[str]
    judge: dict[str, Any] | None = None  # Judgement.summary() when the teacher judged

    def summary(self) -> dict[str, Any]:
        best, worst = best_and_worst(self.expert_examples, EXAMPLES_EACH_WAY)
        return {
            "source": self.source,
            "questions": self.questions,
            "rouge_l": self.rouge_l,
            "judge": self.judge,
            "examples": [example.to_json() for example in best + worst],
            "notes": self.notes,
        }


class _Answerers:
    """Blind answers of base, expert and teacher to a list of questions."""

    def __init__(
        self, config: DistillConfig, student: LoadedModel, teacher: Teacher, expert: Any, shared: bool
    ) -> None:
        self.student, self.teacher, self.expert, self.shared = student, teacher, expert, shared
        self.max_new_tokens = config.qa.max_new_tokens
        self.batch_size = config.qa.generation_batch or None  # None: by the student's device
        self.teacher_mode: TeacherMode = expert.disable_adapter if shared else nullcontext
        self.judge: JudgeDecision = judge_decision(teacher, config.evaluation.teacher_judge)

    def student_answers(self, questions: list[str], adapter_on: bool) -> list[str]:
        context = nullcontext() if adapter_on else self.expert.disable_adapter()
        with context:
            return generate_answers(
                self.expert,
                self.student.tokenizer,
                questions,
                max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size,
            )

    def teacher_answers(self, questions: list[str]) -> list[str] | str:
        """The teacher's blind answers, or why there are none (its budget ran out; a base model cannot chat)."""
        try:
            replies, _ = chat_within_budget(
                self.teacher, [user_turn(question) for question in questions], self.max_new_tokens, self.teacher_mode
            )
        except TeacherError as error:  # e.g. a kd teacher that is a base model, without a chat template
            return str(error)
        if any(reply is None for reply in replies):
            return BUDGET_SPENT
        return [reply or "" for reply in replies]

    def score(self, source: str, questions: list[str], references: list[str], say: Any) -> _Block:
        notes: list[str] = []
        say(f"Base and expert answer {len(questions)} question(s) ({source})")
        answers: dict[str, list[str] | None] = {
            "base": self.student_answers(questions, adapter_on=False),
            "expert": self.student_answers(questions, adapter_on=True),
        }
        if self.shared:
            answers["teacher_blind"] = answers["base"]
            notes.append("the teacher is the student's base: its blind answers are the base's")
        else:
            say(f"The teacher answers {len(questions)} question(s) without the documents ({source})")
            blind = self.teacher_answers(questions)
            answers["teacher_blind"] = blind if isinstance(blind, list) else None
            if isinstance(blind, str):
                notes.append(f"teacher not scored: {blind}")
        final = {name: [strip_reasoning(answer) for answer in given] for name, given in answers.items() if given}
        rouge: dict[str, float | None] = {name: None for name in answers}
        expert_examples: list[QAExample] = []
        for name, given in final.items():
            mean, examples = score_qa(_answered(given), questions, references)
            rouge[name] = mean
            if name == "expert":
                expert_examples = examples
        judgement = self._judge(source, questions, references, final, say) if self.judge.run else None
        if isinstance(judgement, str):
            notes.append(f"not judged: {judgement}")
        if not isinstance(judgement, Judgement):
            return _Block(source, len(questions), rouge, expert_examples, notes)
        if judgement.budget_exhausted:
            notes.append(f"the judge stopped: {BUDGET_SPENT}")
        grade_of = dict(zip(zip(questions, final["expert"], strict=True), judgement.grades["expert"], strict=True))
        expert_examples = [
            dataclasses.replace(example, judge_grade=grade_of.get((example.question, example.answer)))
            for example in expert_examples
        ]
        return _Block(source, len(questions), rouge, expert_examples, notes, judgement.summary(self.teacher.label))

    def _judge(
        self, source: str, questions: list[str], references: list[str], answers: dict[str, list[str]], say: Any
    ) -> Judgement | str:
        """The judge's grades, or why it could not give them (a teacher that cannot chat)."""
        same_as = {"teacher_blind": "base"} if self.shared and "teacher_blind" in answers else None
        count = len(questions) * (len(answers) - len(same_as or {}))
        say(f"The teacher judges {count} answer(s) against the references ({source})")
        try:
            return judge_answers(self.teacher, self.teacher_mode, questions, references, answers, same_as=same_as)
        except TeacherError as error:
            return str(error)


def _heldout_block(
    config: DistillConfig, corpus: CorpusSnapshot, answerers: _Answerers, say: Any, on_progress: ProgressCallback
) -> _Block | str:
    """Scores on questions the teacher wrote from held-out chunks, or why there are none."""
    settings = config.evaluation
    wanted_chunks = math.ceil(settings.max_eval_questions / max(1, config.qa.pairs_per_chunk))
    limit = min(settings.max_heldout_chunks, wanted_chunks)
    chunks = list(corpus.heldout[:limit] or corpus.train[:limit])
    if not chunks or settings.max_eval_questions <= 0:
        return "no chunk to write questions from"
    say(f"The teacher writes questions from {len(chunks)} held-out chunk(s)")
    generation = generate_pairs(
        chunks,
        answerers.teacher,
        # Only the questions are used (the references are written again below, the chunk in view): an answer
        # that strays from its chunk says little about its question, so the grounding filter is not applied.
        dataclasses.replace(config.qa, min_answer_grounding=0.0),
        on_progress=on_progress,
        should_stop=never_stop,
        teacher_mode=answerers.teacher_mode,
        message="The teacher is writing held-out questions",
        stage="evaluating",
    )
    kept = generation.kept[: settings.max_eval_questions]
    if not kept:
        reason = BUDGET_SPENT if generation.stats.budget_exhausted else "the teacher wrote no usable question"
        return f"no held-out question: {reason}"
    say(f"The teacher writes reference answers to {len(kept)} question(s), seeing their chunks")
    conversations = [user_turn(reference_prompt(chunks[record.chunk].text, record.question or "")) for record in kept]
    replies, _ = chat_within_budget(answerers.teacher, conversations, config.qa.max_new_tokens, answerers.teacher_mode)
    pairs = [
        (record.question or "", strip_reasoning(reply))
        for record, reply in zip(kept, replies, strict=True)
        if reply is not None and strip_reasoning(reply)
    ]
    if not pairs:
        return f"no reference answer: {BUDGET_SPENT}" if any(r is None for r in replies) else "no reference answer"
    source = f"questions the teacher wrote from {len(chunks)} held-out chunk(s)"
    if not corpus.heldout:
        source = f"questions the teacher wrote from {len(chunks)} training chunk(s) (no held-out chunk)"
    block = answerers.score(source, [q for q, _ in pairs], [a for _, a in pairs], say)
    if len(pairs) < len(kept):
        block.notes.append(f"{len(kept) - len(pairs)} question(s) without a reference answer left out")
    return block


def evaluate_qa(
    config: DistillConfig,
    corpus: CorpusSnapshot,
    student: LoadedModel,
    teacher: Teacher,
    expert: Any,
    *,
    shared: bool,
    on_progress: ProgressCallback,
    heldout_questions: bool = True,
) -> QAEvaluation:
    """QA scores of base, expert and teacher (see the module docstring) for build_metrics.

    `heldout_questions=False` scores the user's eval set only (recipe kd: its teacher writes no questions).
    """

    def say(message: str) -> None:
        on_progress(Progress("evaluating", 0, 0, message=message))

    answerers = _Answerers(config, student, teacher, expert, shared)
    heldout = _heldout_block(config, corpus, answerers, say, on_progress) if heldout_questions else None
    eval_set: _Block | str | None = None
    if config.evaluation.eval_set is not None:
        path = Path(config.evaluation.eval_set)
        try:
            pairs = load_eval_set(path)[: config.evaluation.max_eval_questions]
        except DistillError as error:  # a broken eval set should not cost the trained expert
            eval_set = str(error)
        else:
            eval_set = answerers.score(f"eval set {path.name}", [q for q, _ in pairs], [a for _, a in pairs], say)
    summary: dict[str, Any] = {
        "heldout": heldout.summary() if isinstance(heldout, _Block) else {"skipped": heldout} if heldout else None,
        "eval_set": eval_set.summary() if isinstance(eval_set, _Block) else {"skipped": eval_set} if eval_set else None,
        "teacher_judge": {"run": answerers.judge.run, "why": answerers.judge.why},
    }
    primary = eval_set if isinstance(eval_set, _Block) else heldout if isinstance(heldout, _Block) else None
    if primary is None:
        return QAEvaluation(extra={"qa_evaluation": summary})
    best, worst = best_and_worst(primary.expert_examples, EXAMPLES_EACH_WAY)
    return QAEvaluation(
        qa=primary.rouge_l,
        examples=best + worst,
        source=primary.source,
        judge=primary.judge,
        extra={"qa_evaluation": summary},
    )
