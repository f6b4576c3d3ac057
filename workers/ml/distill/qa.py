"""Recipe `qa`: sequence-level distillation — the student is fine-tuned on question–answer pairs the teacher wrote.

1. generating — the teacher writes `qa.pairs_per_chunk` grounded pairs per training chunk and (self-reward)
   grades them; see qa_generate.py for the drop reasons, qa_prompts.py and qa_parse.py for prompts, parsing
   and the reasoning format. All pairs are saved to `work/qa_data.jsonl` (export copies it into the expert).
   If none is kept, NoTrainingData says how many were dropped and why, and nothing is trained.
2. data — each kept pair becomes one segment in the student's chat template (SmolLM2's): the question as the
   user turn, the answer as the assistant turn. `QADataPlan` packs segments like recipe kd (packing.py) and
   masks the prompt: only the assistant's answer tokens (up to and including its end-of-turn token) have
   labels, the system/user turn is -100, and `labels()` counts exactly those positions for train.py.
3. loss — cross-entropy on the answer tokens; with answer KD (`qa.answer_kd`, a LocalTeacher sharing the
   student's vocabulary) plus losses.distillation_loss against the teacher's full logits on the same answer
   tokens, the teacher seeing the chunk first (context distillation: teacher input = its chat template with
   the chunk and the question as the user turn, then the very same answer tokens; the student sees only the
   question). The teacher runs live on each micro-batch (one packed inference-mode forward pass over the
   teacher sequences of the micro-batch, its output head on the answer positions only; no disk cache: answers
   are short and one epoch is typical); α, τ and the divergence are `config.kd`'s.
   When the teacher is the student's own base (same model object), it runs as the trained model with its
   adapter disabled.
4. evaluating — qa_eval.py (called from run._evaluate): blind answers of base, expert and teacher scored
   against the teacher's references.

A finished generation is read back from `work/` by a retried or resumed run with the same teacher, corpus and
settings, so a resumed training run sees the data its checkpoint was trained on (qa_generate.GenerationStore).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from workers.ml.catalog_types import LoadedModel
from workers.ml.distill.config import DistillConfig, KDSettings, TrainingSettings
from workers.ml.distill.corpus import Chunk, CorpusSnapshot
from workers.ml.distill.errors import NoTrainingData
from workers.ml.distill.losses import IGNORE_INDEX, LossParts, distillation_loss
from workers.ml.distill.packing import PackedBatch
from workers.ml.distill.progress import ProgressCallback, StopCallback
from workers.ml.distill.qa_generate import (
    Generation,
    GenerationStats,
    GenerationStore,
    QARecord,
    TokenTarget,
    drop_summary,
    fingerprint,
    generate_pairs,
    generation_order,
    load_stats,
)
from workers.ml.distill.qa_prompts import (
    reference_prompt,
    user_turn,
)
from workers.ml.distill.teacher_cache import TeacherSegment, segment_target_logits
from workers.ml.distill.teachers import LocalTeacher, Teacher, same_vocabulary
from workers.ml.distill.train import DataPlan, LossFunction

logger = logging.getLogger(__name__)
LARGER_TEACHER_ADVICE = (
    "Small models rarely follow the pair format or grade reliably: use a larger teacher (about 1–3B parameters "
    "or more, or an endpoint model)."
)


# ---------------------------------------------------------------- the student's chat format


def training_target(answer: str, reasoning: str = "") -> str:
    """The assistant turn trained on: the answer, after `<think>` reasoning when there is some (R1-style)."""
    if reasoning.strip():
        return f"<think>\n{reasoning.strip()}\n</think>\n\n{answer.strip()}"
    return answer.strip()


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer: Any, question: str) -> str:
    """What the student reads before answering: its chat template up to the assistant's turn."""
    if _has_chat_template(tokenizer):
        text: str = tokenizer.apply_chat_template(user_turn(question), add_generation_prompt=True, tokenize=False)
        return text
    return f"Question: {question}\nAnswer: "  # a base model without a chat template


def _answer_text(tokenizer: Any, question: str, target: str) -> str:
    """The assistant turn as the template writes it after `prompt_text` (answer + end-of-turn token)."""
    eos = tokenizer.eos_token or ""
    if _has_chat_template(tokenizer):
        prompt = prompt_text(tokenizer, question)
        full: str = tokenizer.apply_chat_template(
            [*user_turn(question), {"role": "assistant", "content": target}], tokenize=False
        )
        if full.startswith(prompt):
            # SmolLM2: "answer<|im_end|>\n"; the newline after the end of turn is never generated, not trained.
            return full[len(prompt) :].rstrip()
    return target + eos


def prompt_ids(tokenizer: Any, question: str) -> list[int]:
    return list(tokenizer(prompt_text(tokenizer, question), add_special_tokens=False)["input_ids"])


def encode_pair(tokenizer: Any, question: str, target: str, seq_len: int) -> tuple[list[int], int] | None:
    """(prompt + answer tokens cut to seq_len, prompt length), or None when not one answer token fits.

    Prompt and answer are tokenised separately, so the boundary between them is exact.
    """
    prompt = prompt_ids(tokenizer, question)
    answer = list(tokenizer(_answer_text(tokenizer, question, target), add_special_tokens=False)["input_ids"])
    if not answer or len(prompt) + 1 > seq_len:
        return None
    return (prompt + answer)[:seq_len], len(prompt)


def teacher_prompt_ids(tokenizer: Any, chunk_text: str, question: str) -> list[int]:
    """The teacher's view before the answer: its chat template with the chunk and the question."""
    content = reference_prompt(chunk_text, question)
    if _has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(user_turn(content), add_generation_prompt=True, tokenize=False)
    else:
        text = f"{content}\nAnswer: "
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# ---------------------------------------------------------------- training data


@dataclass(frozen=True)
class QAData:
    records: tuple[QARecord, ...]  # the pairs trained on, in segment order
    segments: tuple[tuple[int, ...], ...]  # student tokens: chat prompt + answer
    prompt_lengths: tuple[int, ...]  # tokens of each segment's prompt (no labels there)
    teacher_segments: tuple[TeacherSegment, ...] | None  # answer KD: chunk + question + the same answer tokens
    too_long: int  # kept pairs left out because not one answer token fitted in seq_len

    @property
    def answer_tokens(self) -> int:
        return sum(len(segment) - prompt for segment, prompt in zip(self.segments, self.prompt_lengths, strict=True))


def build_qa_data(
    records: Sequence[QARecord],
    chunks: Sequence[Chunk],
    tokenizer: Any,
    seq_len: int,
    *,
    teacher_tokenizer: Any = None,
) -> QAData:
    """Segments of the kept pairs; with a `teacher_tokenizer` (same vocabulary) also the teachers' segments.

    A teacher segment is the teacher's prompt (chunk + question) followed by the student's answer tokens, with
    target_offset at the prompt's last token: its target rows 0..n−1 predict answer tokens 0..n−1, exactly the
    student's rows prompt_length−1 … prompt_length+n−2.
    """
    kept, segments, prompts, teacher_segments = [], [], [], []
    too_long = 0
    for record in records:
        question = record.question or ""
        encoded = encode_pair(tokenizer, question, training_target(record.answer or "", record.reasoning), seq_len)
        if encoded is None:
            too_long += 1
            continue
        ids, prompt_length = encoded
        kept.append(record)
        segments.append(tuple(ids))
        prompts.append(prompt_length)
        if teacher_tokenizer is not None:
            teacher_prompt = teacher_prompt_ids(teacher_tokenizer, chunks[record.chunk].text, question)
            answer = ids[prompt_length:]
            teacher_segments.append(
                TeacherSegment(tokens=tuple(teacher_prompt + answer), target_offset=len(teacher_prompt) - 1)
            )
    return QAData(
        tuple(kept),
        tuple(segments),
        tuple(prompts),
        tuple(teacher_segments) if teacher_tokenizer is not None else None,
        too_long,
    )


class QADataPlan(DataPlan):
    """DataPlan of recipe qa: same packing, but labels only on the answer tokens (the prompt is -100)."""

    def __init__(self, data: QAData, settings: TrainingSettings, pad_token_id: int) -> None:
        self.prompt_lengths = data.prompt_lengths
        super().__init__(data.segments, settings, pad_token_id)

    def labels(self, rows: list[list[int]]) -> int:
        """Labelled positions: the last prompt token and every answer token but the last predict an answer token."""
        return sum(self.lengths[index] - self.prompt_lengths[index] for row in rows for index in row)

    def collate(self, rows: list[list[int]]) -> PackedBatch:
        batch = super().collate(rows)
        for placement in batch.placements:
            # Positions start … start+p−2 predict prompt tokens 1 … p−1: no loss there.
            prompt = self.prompt_lengths[placement.segment]
            batch.labels[placement.row, placement.start : placement.start + prompt - 1] = IGNORE_INDEX
        return batch


# ---------------------------------------------------------------- loss


def _answer_ce(logits: torch.Tensor, labels: torch.Tensor, positions: int) -> LossParts:
    """Mean cross-entropy over the `positions` labelled tokens (counted on the host by the batch)."""
    flat_labels = labels.reshape(-1)
    if positions == 0:
        zero = logits.sum() * 0.0
        return LossParts(zero, zero.detach(), zero.detach(), 0)
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), flat_labels, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    mean = total / positions
    return LossParts(mean, mean.detach(), torch.zeros((), device=mean.device), positions)


def _teacher_answer_logits(
    teacher_model: Any, data: QAData, indices: Sequence[int], pad_token_id: int
) -> dict[int, torch.Tensor]:
    """Per segment index, the teacher's logits from the last prompt token on ((answer tokens + 1), V).

    The output head runs on those positions only: the chunk and question before them (~90% of a teacher
    segment) never become full-vocabulary logits.
    """
    assert data.teacher_segments is not None
    return segment_target_logits(teacher_model, data.teacher_segments, indices, pad_token_id)


def aligned_teacher_logits(teacher_model: Any, data: QAData, batch: PackedBatch, pad_token_id: int) -> torch.Tensor:
    """Teacher logits laid out like the student's batch (B, T, V): rows only where answer tokens are predicted.

    The teacher's segments are packed into rows (no attention across segments) and run in one forward pass
    under inference mode; the copy into this (normal) tensor is what the loss saves for backward.
    """
    indices = [placement.segment for placement in batch.placements]
    per_segment = _teacher_answer_logits(teacher_model, data, indices, pad_token_id)
    some = next(iter(per_segment.values()))
    rows, cols = batch.input_ids.shape
    aligned = torch.zeros((rows, cols, some.shape[-1]), dtype=some.dtype, device=some.device)  # (B, T, V)
    for placement in batch.placements:
        prompt = data.prompt_lengths[placement.segment]
        count = placement.length - prompt  # answer tokens in this segment
        begin = placement.start + prompt - 1
        aligned[placement.row, begin : begin + count] = per_segment[placement.segment][:count]
    return aligned


def qa_loss(
    data: QAData,
    *,
    kd: KDSettings | None = None,
    teacher_model: Any = None,
    pad_token_id: int = 0,
) -> LossFunction:
    """Cross-entropy on the answer tokens; with `kd` (and teacher segments) plus KD against a live teacher.

    A `teacher_model` of None with `kd` means the teacher is the student's own base: it then runs as the
    trained (peft) model with its adapter disabled.
    """
    if kd is not None and data.teacher_segments is None:
        raise ValueError("answer KD needs the teacher segments (build_qa_data with teacher_tokenizer)")

    def loss(model: Any, batch: PackedBatch) -> LossParts:
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits  # (B,T,V)
        if kd is None:
            return _answer_ce(logits, batch.labels, batch.label_count)
        if teacher_model is None:
            with model.disable_adapter():
                teacher_logits = aligned_teacher_logits(model, data, batch, pad_token_id)
        else:
            teacher_logits = aligned_teacher_logits(teacher_model, data, batch, pad_token_id)
        vocab = min(logits.shape[-1], teacher_logits.shape[-1])  # a model may pad its output beyond the vocabulary
        return distillation_loss(
            logits[..., :vocab],
            batch.labels,
            teacher_logits=teacher_logits[..., :vocab].to(logits.device),
            alpha=kd.alpha,
            temperature=kd.temperature,
            kind=kd.divergence,
            beta=kd.jsd_beta,
            positions=batch.label_count,
        )

    return loss


# ---------------------------------------------------------------- the recipe


def _no_data_message(stats: GenerationStats, teacher: Teacher) -> str:
    budget = ""
    if stats.budget_exhausted:
        budget = (
            f" The teacher's token budget ran out after {stats.chunks_done} of {stats.chunks} chunks; raise "
            "max_tokens_budget to let it write more."
        )
    if stats.outputs == 0:
        return (
            f"The teacher {teacher.label} wrote no question–answer pair, so nothing was trained.{budget} "
            + LARGER_TEACHER_ADVICE
        )
    if stats.abandoned:
        budget += (
            f" Generation stopped after the first {stats.chunks_done} of {stats.chunks} chunks, as none of them "
            "gave a usable pair."
        )
    advice = ""  # the settings that would keep more of this teacher's pairs
    if stats.dropped["ungrounded"]:
        advice += (
            f" {stats.dropped['ungrounded']} answers had under {stats.min_answer_grounding:.0%} of their words in "
            "their chunk: a lower qa.min_answer_grounding (--min-answer-grounding) keeps more of them."
        )
    if stats.self_reward and stats.dropped["below_threshold"]:
        advice += (
            " Lowering the self-reward threshold (qa.reward_threshold), or turning self-reward off (qa.self_reward "
            "off; --self-reward off on the command line), keeps more of a weak teacher's pairs."
        )
    return (
        f"The teacher {teacher.label} wrote no usable question–answer pair, so nothing was trained: asked for "
        f"{stats.pairs_requested} pairs from {stats.chunks_done} chunks, {stats.pairs_dropped} were dropped and "
        f"none kept ({drop_summary(stats)}).{budget} {LARGER_TEACHER_ADVICE}{advice}"
    )


def token_target(config: DistillConfig, tokenizer: Any) -> TokenTarget | None:
    """Under a token budget, the training tokens generation has to reach (a kept pair counts as trained)."""
    budget = config.training.token_budget
    if budget is None:
        return None
    seq_len = config.training.seq_len

    def measure(record: QARecord) -> int:
        target = training_target(record.answer or "", record.reasoning)
        encoded = encode_pair(tokenizer, record.question or "", target, seq_len)
        return len(encoded[0]) if encoded is not None else 0

    return TokenTarget(budget, measure)


def _generate(
    config: DistillConfig,
    corpus: CorpusSnapshot,
    teacher: Teacher,
    on_progress: ProgressCallback,
    should_stop: StopCallback,
    target: TokenTarget | None,
) -> Generation | None:
    """The training pairs: read back from work/ when a saved generation matches and holds enough, else
    generated (continuing a saved one where it stopped)."""
    order = generation_order(len(corpus.train), config.training.seed)
    store = GenerationStore(config.work, fingerprint(config, teacher, corpus.fingerprint), order)
    saved = store.load()
    if saved is not None and saved[1]:
        return saved[0]
    start = saved[0] if saved is not None else None
    if start is None:
        store.start()
    else:
        store.rewrite(start, complete=False)  # without lines of a batch whose state was never written
    generation = generate_pairs(
        corpus.train,
        teacher,
        config.qa,
        on_progress=on_progress,
        should_stop=should_stop,
        start=start,
        on_batch=store.append,
        on_regrade=lambda changed: store.rewrite(changed, complete=False),
        order=order,
        target=target,
    )
    if generation.cancelled:
        return None
    store.rewrite(generation, complete=generation.stats.finished)
    return generation


def answer_kd_applies(config: DistillConfig, student: LoadedModel, teacher: Teacher) -> bool:
    return (
        config.qa.answer_kd
        and isinstance(teacher, LocalTeacher)
        and same_vocabulary(teacher.tokenizer, student.tokenizer)
    )


def prepare(
    config: DistillConfig,
    corpus: CorpusSnapshot,
    student: LoadedModel,
    teacher: Teacher,
    on_progress: ProgressCallback,
    should_stop: StopCallback,
    *,
    shared: bool | None = None,
) -> tuple[DataPlan, LossFunction] | None:
    """Data plan and loss of recipe qa; None when cancelled while the teacher was generating.

    `shared`: the teacher is the student's own base model object (default: detected by identity).
    Raises NoTrainingData when no generated pair survives (the message counts the drops by reason).
    """
    if shared is None:
        shared = isinstance(teacher, LocalTeacher) and teacher.model is student.model
    generation = _generate(config, corpus, teacher, on_progress, should_stop, token_target(config, student.tokenizer))
    if generation is None:
        return None
    kept = generation.kept
    if not kept:
        raise NoTrainingData(_no_data_message(generation.stats, teacher))
    use_kd = answer_kd_applies(config, student, teacher)
    tokenizer = student.tokenizer
    data = build_qa_data(
        kept,
        corpus.train,
        tokenizer,
        config.training.seq_len,
        teacher_tokenizer=teacher.tokenizer if use_kd and isinstance(teacher, LocalTeacher) else None,
    )
    if not data.segments:
        raise NoTrainingData(
            f"None of the {len(kept)} kept question–answer pairs fits in training.seq_len={config.training.seq_len} "
            "tokens with its chat prompt; raise training.seq_len."
        )
    if data.too_long:
        logger.warning("%d kept pair(s) left out: their prompt fills training.seq_len", data.too_long)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    plan = QADataPlan(data, config.training, pad_token_id)
    teacher_model = None if shared or not isinstance(teacher, LocalTeacher) else teacher.model
    loss = qa_loss(
        data,
        kd=config.kd if use_kd else None,
        teacher_model=teacher_model,
        pad_token_id=pad_token_id,
    )
    return plan, loss


def data_stats(config: DistillConfig) -> dict[str, Any]:
    """Lines for the expert card's "Training data": pairs kept and dropped, and whether the spend cap stopped."""
    stats = load_stats(config.work)
    if stats is None:
        return {}
    result: dict[str, Any] = {
        "qa_pairs_kept": stats.pairs_kept,
        "qa_pairs_dropped": stats.pairs_dropped,
        **{f"qa_dropped_{reason}": count for reason, count in stats.dropped.items()},
        "qa_chunks_generated_from": f"{stats.chunks_done} of {stats.chunks}",
        "qa_self_reward": f"{'on' if stats.self_reward else 'off'} ({stats.self_reward_why or 'qa.self_reward'})",
        "qa_answer_grounding": (
            f"at least {stats.min_answer_grounding:.0%} of an answer's words in its chunk"
            if stats.min_answer_grounding
            else "not checked"
        ),
        "qa_teacher_budget_exhausted": "yes" if stats.budget_exhausted else "no",
    }
    if stats.target_tokens is not None:
        # Under a token budget the teacher was asked about a shuffled sample of chunks until the kept pairs
        # held the budget's tokens: say so, or "of 180" chunks reads as a teacher that gave up.
        result["qa_training_tokens_written"] = f"{stats.kept_tokens:,} (token budget {stats.target_tokens:,})"
    return result


def generation_metrics(config: DistillConfig) -> dict[str, Any] | None:
    """metrics.json's `qa_data`: the generation stats (None when there are none)."""
    stats = load_stats(config.work)
    return stats.to_json() if stats is not None else None


__all__ = [
    "QAData",
    "QADataPlan",
    "aligned_teacher_logits",
    "build_qa_data",
    "data_stats",
    "encode_pair",
    "generation_metrics",
    "prepare",
    "prompt_ids",
    "qa_loss",
    "training_target",
]
