"""Recipe `qa`, part 1: the teacher writes grounded question–answer pairs per chunk and grades them.

Prompts and grading decisions: qa_prompts.py. Reading the replies (pairs, grades, reasoning): qa_parse.py.

Filters, before any grading: an empty question or answer (*empty*), an answer that is only a question
(*no_answer*: SmolLM2-135M numbers its lines and may write "Q: 1. What is X?" then "A: 2. What is Y?"; 4 of the
29 pairs it had kept in a real run were such), when nobody grades
the pairs an answer whose chunk holds under `qa.min_answer_grounding` of its content words (*ungrounded*: an
invented answer shares few words with the chunk), and a question asked before in the run (*duplicate*).

Reasoning (`qa.reasoning`). The teacher is asked for a `reasoning` field (JSON) or an `R:` line before the
answer; an answer that arrives as `<think>…</think> final answer` is split the same way. The training target
is then R1-style, `<think>\\n{reasoning}\\n</think>\\n\\n{answer}`, so the student learns to reason before it
answers; scores compare only the text after `</think>` (`strip_reasoning`).

Self-reward (`qa.self_reward`). The teacher grades each remaining pair 1–5 for groundedness in the chunk and
usefulness (`parse_grade` reads the number from "4", "Score: 4/5", `{"score": 4}` …); pairs graded under
`qa.reward_threshold` are dropped as *below_threshold*, and unreadable grades as *ungraded*. By default (auto)
only a teacher able to grade does: an endpoint, or a local model of 1B+ parameters (`grader_decision`).

Failing fast. When the first HOPELESS_AFTER_CHUNKS chunks give no kept pair at all, generation stops there
(`stats.abandoned`) and the run fails with the counts, instead of asking about the rest of the corpus.

Only what training reads. Chunks are asked about in a seeded shuffle of the corpus (`generation_order`), so any
prefix of the order is a sample across all documents. Under a token budget (`TokenTarget`) generation stops once
the kept pairs hold as many training tokens as the budget trains on: a 12k-token budget over a corpus of 10,000
chunks asks about the ~60 chunks it needs, not all 10,000 (a paid teacher is paid for those). A later run with a
larger budget continues the same order where this one stopped.

Every generated pair — kept or dropped, with its grade and drop reason and its chunk's doc_id/position — is
written to `work/qa_data.jsonl`; `work/qa_state.json` records how far generation got. A retried or resumed
run with the same teacher, corpus and settings reads them back instead of asking the teacher again (so a
resumed training run sees exactly the data its checkpoint was trained on, and a paid teacher is paid once).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workers.ml.distill.config import DistillConfig, QASettings
from workers.ml.distill.corpus import Chunk
from workers.ml.distill.progress import Progress, ProgressCallback, Stage, StopCallback
from workers.ml.distill.qa_parse import (
    ParsedPair,
    answer_grounding,
    min_answer_grounding,
    only_a_question,
    parse_grade,
    parse_pairs,
)
from workers.ml.distill.qa_prompts import (
    PROMPT_VERSION,
    generation_prompt,
    grading_prompt,
    self_reward_decision,
    user_turn,
    uses_simple_prompt,
)
from workers.ml.distill.teachers import ChatCancelled, ChatProgress, LocalTeacher, Teacher, TeacherBudgetExhausted

DATA_FILE = "qa_data.jsonl"
STATE_FILE = "qa_state.json"
RAW_KEEP_CHARS = 2000  # unparseable outputs are kept in qa_data.jsonl up to this length
# Generation gives up when the teacher's first chunks gave no kept pair at all: a teacher that cannot write one
# usable pair in 32 chunks (one batch; SmolLM2-135M on a 2-core CPU: ~4 minutes) would spend the rest of the
# corpus (184 chunks: ~23 minutes) to the same end. The run then fails with the counts, as when all are dropped.
HOPELESS_AFTER_CHUNKS = 32
DROP_REASONS = ("unparseable", "empty", "no_answer", "ungrounded", "duplicate", "below_threshold", "ungraded")
TeacherMode = Callable[[], AbstractContextManager[Any]]


# ---------------------------------------------------------------- records and stats


@dataclass
class QARecord:
    """One line of qa_data.jsonl: a generated pair (kept or dropped), or a reply that did not parse."""

    chunk: int  # index of the chunk in the list generated from (corpus.train for training data)
    doc_id: str
    position: int
    question: str | None
    answer: str | None
    reasoning: str = ""
    grade: int | None = None
    grade_reply: str | None = None  # the grader's words, when self-reward ran
    kept: bool = False
    drop_reason: str | None = None
    raw: str | None = None  # the teacher's reply, for unparseable outputs only

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QARecord:
        names = {item for item in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass
class GenerationStats:
    """What the teacher produced and why pairs were dropped; goes to metrics.json and the expert card."""

    chunks: int = 0
    chunks_done: int = 0
    pairs_per_chunk: int = 0
    pairs_requested: int = 0  # chunks_done × pairs_per_chunk
    outputs: int = 0  # teacher replies received
    outputs_unparseable: int = 0
    pairs_generated: int = 0  # pairs parsed from the replies (at most pairs_per_chunk each)
    pairs_kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    grades: dict[str, int] = field(default_factory=dict)  # histogram of the grades given, "1".."5"
    self_reward: bool = False
    self_reward_why: str = ""  # why the teacher graded or did not (qa.self_reward auto decides by its size)
    min_answer_grounding: float = 0.0  # the share of an answer's words its chunk had to hold (0: not checked)
    reward_threshold: int = 0
    budget_exhausted: bool = False  # the teacher's spend cap stopped generation early
    abandoned: bool = False  # stopped early: the first HOPELESS_AFTER_CHUNKS chunks gave no kept pair
    prompt_format: str = "json"
    target_tokens: int | None = None  # the training tokens the kept pairs had to reach (a token budget), if any
    kept_tokens: int = 0  # training tokens of the kept pairs (counted only under a target)

    @property
    def target_reached(self) -> bool:
        return self.target_tokens is not None and self.kept_tokens >= self.target_tokens

    @property
    def finished(self) -> bool:
        """Nothing more would be generated, whatever the target: the whole corpus, the spend cap, or given up."""
        return self.chunks_done >= self.chunks or self.budget_exhausted or self.abandoned

    @property
    def pairs_dropped(self) -> int:
        return sum(self.dropped.values())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["pairs_dropped"] = self.pairs_dropped
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationStats:
        names = {item for item in cls.__dataclass_fields__}
        stats = cls(**{key: value for key, value in data.items() if key in names})
        stats.dropped = {**dict.fromkeys(DROP_REASONS, 0), **stats.dropped}
        return stats


@dataclass
class Generation:
    records: list[QARecord]
    stats: GenerationStats
    cancelled: bool = False

    @property
    def kept(self) -> list[QARecord]:
        return [record for record in self.records if record.kept]


def _normalise(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


class _PairFilter:
    """Drops empty pairs, answers that are only a question, answers whose words are mostly not in their chunk
    (under `min_grounding`), and duplicates (by normalised question, across the whole run)."""

    def __init__(self, seen: set[str] | None = None, min_grounding: float = 0.0) -> None:
        self.seen = set(seen or ())
        self.min_grounding = min_grounding

    def reason(self, pair: ParsedPair, chunk_text: str = "") -> str | None:
        if not _normalise(pair.question) or not _normalise(pair.answer):
            return "empty"
        if only_a_question(pair.answer):
            return "no_answer"
        if self.min_grounding > 0 and answer_grounding(pair.answer, chunk_text) < self.min_grounding:
            return "ungrounded"
        key = _normalise(pair.question)
        if key in self.seen:
            return "duplicate"
        self.seen.add(key)
        return None


# ---------------------------------------------------------------- the generation pass


def chat_within_budget(
    teacher: Teacher,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int,
    mode: TeacherMode,
    *,
    should_stop: StopCallback | None = None,
    on_progress: ChatProgress | None = None,
) -> tuple[list[str | None], bool]:
    """(replies, budget exhausted): on the spend cap, the replies that came back and None for the rest.

    `should_stop` and `on_progress` go to the teacher (ChatCancelled passes through).
    """
    if not conversations:
        return [], False
    try:
        with mode():
            replies = teacher.chat(
                conversations, max_new_tokens=max_new_tokens, should_stop=should_stop, on_progress=on_progress
            )
            return list(replies), False
    except TeacherBudgetExhausted as exc:
        partial = list(exc.partial_results) + [None] * len(conversations)
        return [item if isinstance(item, str) else None for item in partial[: len(conversations)]], True


@dataclass(frozen=True)
class TokenTarget:
    """Enough data for a token budget: generation stops once the kept pairs' `measure`s add up to `tokens`."""

    tokens: int  # the training tokens the run reads (training.token_budget)
    measure: Callable[[QARecord], int]  # a kept pair's training tokens (0 when it does not fit a row)


def generation_order(count: int, seed: int) -> list[int]:
    """The order chunks are asked about: a seeded shuffle, so that any prefix samples every document."""
    order = list(range(count))
    random.Random(f"{seed}:qa").shuffle(order)  # noqa: S311 - data order, not security
    return order


# Under a token target the last call asks about this many times the chunks the kept tokens per chunk so far say
# are still needed: a call that falls a little short costs a whole extra call, a few more chunks in the same
# batch cost little (a batch of 32 takes far less than 4/3 of a batch of 24's time).
TARGET_MARGIN = 1.25


def _chunks_still_needed(stats: GenerationStats, target: TokenTarget | None) -> int | None:
    """Under a target, the chunks the kept tokens per chunk so far say are still needed (None: no estimate yet)."""
    if target is None or stats.kept_tokens <= 0 or stats.chunks_done == 0:
        return None
    return max(0, math.ceil(stats.chunks_done * (target.tokens - stats.kept_tokens) / stats.kept_tokens))


def _planned_chunks(stats: GenerationStats, target: TokenTarget | None) -> int:
    """The chunks generation expects to ask about: all of them, or under a target as many as the kept tokens per
    chunk so far say it needs (the progress bar's total and its ETA's)."""
    needed = _chunks_still_needed(stats, target)
    return stats.chunks if needed is None else min(stats.chunks, stats.chunks_done + needed)


def _call_size(stats: GenerationStats, target: TokenTarget | None, batch_size: int) -> int:
    """Chunks the next teacher call asks about: a batch, or fewer when a target is nearly reached."""
    size = min(batch_size, stats.chunks - stats.chunks_done)
    needed = _chunks_still_needed(stats, target)
    return size if needed is None else max(1, min(size, math.ceil(needed * TARGET_MARGIN)))


def generate_pairs(
    chunks: Sequence[Chunk],
    teacher: Teacher,
    settings: QASettings,
    *,
    on_progress: ProgressCallback,
    should_stop: StopCallback,
    teacher_mode: TeacherMode = nullcontext,
    start: Generation | None = None,
    on_batch: Callable[[Generation, list[QARecord]], None] | None = None,
    on_regrade: Callable[[Generation], None] | None = None,
    message: str = "The teacher is writing question–answer pairs",
    stage: Stage = "generating",
    order: Sequence[int] | None = None,
    target: TokenTarget | None = None,
) -> Generation:
    """Ask the teacher for pairs about each chunk (teacher.batch_size chunks per call), filter and grade them.

    `order` lists the chunk indices in the order they are asked about (default: as given); `start` continues
    an earlier, unfinished generation in the same order. Stops early when `should_stop()` says so
    (cancelled=True; asked during a call too: a local teacher's stopped call gives nothing, an endpoint's
    gives the leading replies that came back, which are kept with every earlier call's), when the teacher's
    spend cap is hit (stats.budget_exhausted), or when the kept pairs reach `target` (stats.target_reached).
    `on_batch(generation, new records)` runs after every call (to save progress). The progress bar moves
    during a call, by the share of it done.

    Self-reward grades each call's pairs in a second call, which a cancel stops too: the pairs whose grade
    did not come back are saved pending and graded first when a `start` generation continues
    (`on_regrade(generation)` then runs, to save the records that changed).
    """
    grading = self_reward_decision(teacher, settings)
    grade = grading.run
    min_grounding = min_answer_grounding(settings, graded=grade)
    simple = uses_simple_prompt(teacher)
    order = list(range(len(chunks))) if order is None else list(order)
    generation = start or Generation(
        records=[],
        stats=GenerationStats(
            chunks=len(chunks),
            pairs_per_chunk=settings.pairs_per_chunk,
            self_reward=grade,
            self_reward_why=grading.why,
            min_answer_grounding=min_grounding,
            reward_threshold=settings.reward_threshold,
            prompt_format="lines" if simple else "json",
        ),
    )
    stats = generation.stats
    if target is not None:  # counted afresh: a larger budget than the saved generation's continues it
        stats.target_tokens = target.tokens
        stats.kept_tokens = sum(target.measure(record) for record in generation.kept)
    # The questions a continued generation has seen: all but those the filter dropped before counting them.
    uncounted = ("empty", "no_answer", "ungrounded")
    asked_before = {_normalise(r.question or "") for r in generation.records if r.drop_reason not in uncounted}
    pair_filter = _PairFilter(asked_before - {""}, min_grounding)
    started, done_at_start = time.perf_counter(), stats.chunks_done
    shown = stats.chunks_done  # the progress bar's position, in whole chunks

    def more_to_do() -> bool:
        return stats.chunks_done < len(chunks) and not stats.budget_exhausted and not stats.target_reached

    def report(done: float, planned: int, text: str) -> None:
        nonlocal shown
        shown = int(done)
        elapsed, done_here = time.perf_counter() - started, done - done_at_start
        eta = elapsed / done_here * (planned - done) if done_here > 0 else None
        on_progress(Progress(stage, shown, planned, eta_s=eta, message=text))

    def tally() -> str:
        tokens = f", {stats.kept_tokens:,}/{target.tokens:,} tokens" if target is not None else ""
        return f"{message}: {stats.pairs_kept} kept, {stats.pairs_dropped} dropped{tokens}"

    def settle(candidates: list[QARecord]) -> bool:
        """Grade the candidates (under self-reward) and keep the good ones; False when a cancel stopped the
        grading (the rest stay pending)."""
        finished = True
        if grade and candidates:
            text = f"{tally()} (grading {len(candidates)} pair{'s' if len(candidates) != 1 else ''})"

            def grading(fraction: float) -> None:
                report(stats.chunks_done, _planned_chunks(stats, target), f"{text}: {fraction:.0%}")

            finished = _grade(
                candidates,
                chunks,
                teacher,
                settings,
                teacher_mode,
                stats,
                should_stop=should_stop,
                on_progress=grading,
            )
        for record in candidates:
            if record.drop_reason is None and (record.grade is not None or not grade):
                record.kept = True
                stats.pairs_kept += 1
                if target is not None:
                    stats.kept_tokens += target.measure(record)
        return finished

    pending = awaiting_grade(generation.records) if grade else []
    if pending:  # a cancel stopped the grading of the last call: its pairs are graded before anything new
        if should_stop():
            generation.cancelled = True
            return generation
        generation.cancelled = not settle(pending)
        if on_regrade is not None:
            on_regrade(generation)
        if generation.cancelled:
            return generation
    if more_to_do():
        # Said before the first call: a batch of a small local teacher on a CPU takes minutes, and until it
        # returns the job page would still show the previous stage.
        planned = _planned_chunks(stats, target)
        on_progress(Progress(stage, stats.chunks_done, planned, message=f"{message} (first batch)"))
    while more_to_do():
        if should_stop():
            generation.cancelled = True
            return generation
        first = stats.chunks_done
        batch = order[first : first + _call_size(stats, target, teacher.batch_size)]
        conversations = [user_turn(generation_prompt(chunks[i].text, settings, simple=simple)) for i in batch]
        text = tally() if stats.outputs else f"{message} (first batch)"

        def during_call(fraction: float, first: int = first, size: int = len(batch), text: str = text) -> None:
            if first + int(fraction * size) > shown:
                report(first + fraction * size, _planned_chunks(stats, target), text)

        try:
            replies, exhausted = chat_within_budget(
                teacher,
                conversations,
                settings.max_new_tokens,
                teacher_mode,
                should_stop=should_stop,
                on_progress=during_call,
            )
        except ChatCancelled as stopped:
            # An endpoint's replies that came back were paid for: the leading ones are kept (generation resumes
            # after them); a local teacher's stopped batch has none.
            generation.cancelled = True
            replies = list(itertools.takewhile(lambda reply: reply is not None, stopped.partial_results))
            if not replies:
                return generation
            batch, exhausted = batch[: len(replies)], False
        new_records: list[QARecord] = []
        candidates: list[QARecord] = []
        for done, index, reply in zip(range(first + 1, first + len(batch) + 1), batch, replies, strict=True):
            if reply is None:  # the spend cap stopped this request (generation ends with this batch)
                continue
            chunk = chunks[index]
            stats.chunks_done = done
            stats.outputs += 1
            stats.pairs_requested += settings.pairs_per_chunk
            pairs = parse_pairs(reply)
            if pairs is None:
                stats.outputs_unparseable += 1
                stats.dropped["unparseable"] += settings.pairs_per_chunk
                unparseable = QARecord(index, chunk.doc_id, chunk.position, None, None, raw=reply[:RAW_KEEP_CHARS])
                unparseable.drop_reason = "unparseable"
                new_records.append(unparseable)
                continue
            for pair in pairs[: settings.pairs_per_chunk]:
                stats.pairs_generated += 1
                record = QARecord(index, chunk.doc_id, chunk.position, pair.question, pair.answer, pair.reasoning)
                reason = pair_filter.reason(pair, chunk.text)
                if reason is not None:
                    record.drop_reason = reason
                    stats.dropped[reason] += 1
                else:
                    candidates.append(record)
                new_records.append(record)
        stats.budget_exhausted = stats.budget_exhausted or exhausted
        if not settle(candidates):
            generation.cancelled = True
        generation.records.extend(new_records)
        if stats.pairs_kept == 0 and HOPELESS_AFTER_CHUNKS <= stats.chunks_done < len(chunks):
            stats.abandoned = not generation.cancelled  # pending grades may still keep some
        if on_batch is not None:
            on_batch(generation, new_records)
        planned = stats.chunks_done if stats.target_reached else _planned_chunks(stats, target)
        report(stats.chunks_done, planned, tally())
        if stats.abandoned or generation.cancelled:
            break
    return generation


def _grade(
    records: list[QARecord],
    chunks: Sequence[Chunk],
    teacher: Teacher,
    settings: QASettings,
    teacher_mode: TeacherMode,
    stats: GenerationStats,
    *,
    should_stop: StopCallback | None = None,
    on_progress: ChatProgress | None = None,
) -> bool:
    """Self-reward: the teacher grades each record 1–5; below the threshold or unreadable → dropped.

    Returns False when `should_stop` stopped the grading: the records whose grade did not come back are left
    pending (`awaiting_grade`), to be graded when generation continues.
    """
    if not records:
        return True
    replies: list[str | None] = [None] * len(records)
    finished = True
    if not stats.budget_exhausted:
        conversations = [
            user_turn(grading_prompt(chunks[record.chunk].text, record.question or "", record.answer or ""))
            for record in records
        ]
        try:
            # A grade is a digit or a short sentence; 16 tokens leave room for "Score: 4/5".
            replies, exhausted = chat_within_budget(
                teacher,
                conversations,
                min(16, settings.max_new_tokens),
                teacher_mode,
                should_stop=should_stop,
                on_progress=on_progress,
            )
            stats.budget_exhausted = stats.budget_exhausted or exhausted
        except ChatCancelled as stopped:  # an endpoint's grades that came back are kept (paid for)
            finished = False
            replies = [item if isinstance(item, str) else None for item in stopped.partial_results]
            replies += [None] * (len(records) - len(replies))
    for record, reply in zip(records, replies, strict=True):
        if reply is None and not finished:
            continue  # pending: graded when generation continues
        record.grade_reply = None if reply is None else reply.strip()[:200]
        record.grade = None if reply is None else parse_grade(reply)
        if record.grade is None:
            record.drop_reason = "ungraded"
            stats.dropped["ungraded"] += 1
            continue
        stats.grades[str(record.grade)] = stats.grades.get(str(record.grade), 0) + 1
        if record.grade < settings.reward_threshold:
            record.drop_reason = "below_threshold"
            stats.dropped["below_threshold"] += 1
    return finished


def awaiting_grade(records: Sequence[QARecord]) -> list[QARecord]:
    """Pairs that passed the filters but were not yet graded (a cancel stopped the grading of their call)."""
    return [
        record
        for record in records
        if record.question is not None and record.drop_reason is None and not record.kept and record.grade is None
    ]


# ---------------------------------------------------------------- saved generation (work/qa_data.jsonl)


def fingerprint(config: DistillConfig, teacher: Teacher, corpus_fingerprint: str) -> dict[str, Any]:
    """What the generated data depends on; a saved generation with another fingerprint is thrown away."""
    teacher_hash = teacher.loaded.info.content_hash if isinstance(teacher, LocalTeacher) else None
    settings = config.qa
    data: dict[str, Any] = {
        "version": PROMPT_VERSION,
        "teacher": teacher.label,
        "teacher_hash": teacher_hash,
        "budget": getattr(config.teacher, "max_tokens_budget", None),
        "corpus": corpus_fingerprint,
        "pairs_per_chunk": settings.pairs_per_chunk,
        "reasoning": settings.reasoning,
        "self_reward": self_reward_decision(teacher, settings).run,  # what was done, whatever the setting's spelling
        "reward_threshold": settings.reward_threshold,
        "max_new_tokens": settings.max_new_tokens,
        "order_seed": config.training.seed,  # generation_order: which chunks a partial generation holds
    }
    grounding = min_answer_grounding(settings, graded=bool(data["self_reward"]))
    if grounding:  # named only when checked, so generations saved before the check existed stay usable
        data["min_answer_grounding"] = grounding
    return data


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class GenerationStore:
    """qa_data.jsonl (one record a line, appended per batch) and qa_state.json (how far generation got).

    `order` is the generation's chunk order: a saved generation holds the chunks of its first `chunks_done`.
    """

    def __init__(self, work: Path, fingerprint: dict[str, Any], order: Sequence[int] | None = None) -> None:
        self.data_path = work / DATA_FILE
        self.state_path = work / STATE_FILE
        self.fingerprint = fingerprint
        self.order = order

    def load(self) -> tuple[Generation, bool] | None:
        """(saved generation, complete) when one with the same fingerprint exists, else None.

        Complete: nothing more would be generated (GenerationStats.finished). A generation that stopped at a
        token target is not complete: a larger budget continues it.
        """
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            lines = self.data_path.read_text(encoding="utf-8").splitlines()
        except (OSError, ValueError):
            return None
        if state.get("fingerprint") != self.fingerprint:
            return None
        stats = GenerationStats.from_json(state["stats"])
        # Lines of chunks past chunks_done were appended by a batch whose state was never written: done again.
        asked = set(range(stats.chunks_done) if self.order is None else self.order[: stats.chunks_done])
        records = [QARecord.from_json(json.loads(line)) for line in lines if line.strip()]
        records = [record for record in records if record.chunk in asked]
        return Generation(records, stats), bool(state.get("complete"))

    def start(self) -> None:
        self.data_path.parent.mkdir(parents=True, exist_ok=True)
        self.data_path.write_text("", encoding="utf-8")
        self.save_state(GenerationStats(), complete=False)

    def append(self, generation: Generation, new_records: list[QARecord]) -> None:
        with self.data_path.open("a", encoding="utf-8") as out:
            for record in new_records:
                out.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
        self.save_state(generation.stats, complete=False)

    def rewrite(self, generation: Generation, *, complete: bool) -> None:
        text = "".join(json.dumps(record.to_json(), ensure_ascii=False) + "\n" for record in generation.records)
        _write_atomic(self.data_path, text)
        self.save_state(generation.stats, complete=complete)

    def save_state(self, stats: GenerationStats, *, complete: bool) -> None:
        state = {"fingerprint": self.fingerprint, "complete": complete, "stats": stats.to_json()}
        _write_atomic(self.state_path, json.dumps(state, indent=2))


def load_stats(work: Path) -> GenerationStats | None:
    """The stats of the generation saved in `work` (None when there is none)."""
    try:
        state = json.loads((work / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return GenerationStats.from_json(state["stats"])


def drop_summary(stats: GenerationStats) -> str:
    """'27 of 27 teacher replies unparseable (54 pairs), 0 with an empty question or answer, …'"""
    dropped = stats.dropped
    parts = [
        f"{stats.outputs_unparseable} of {stats.outputs} teacher replies unparseable ({dropped['unparseable']} pairs)",
        f"{dropped['empty']} with an empty question or answer",
        f"{dropped['no_answer']} whose answer was only a question",
        f"{dropped['ungrounded']} with answers mostly not in their chunk",
        f"{dropped['duplicate']} duplicates",
    ]
    if stats.self_reward:
        parts += [
            f"{dropped['below_threshold']} graded below {stats.reward_threshold}",
            f"{dropped['ungraded']} ungraded",
        ]
    return ", ".join(parts)
