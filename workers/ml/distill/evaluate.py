"""Evaluation of an expert: perplexity and bits per byte on held-out text, KL to the teacher, QA ROUGE-L.

Pure functions over models and tokenizers; nothing here trains or writes files.

Scoring convention (shared by `score_lm` and `mean_kl`): a text is tokenized on its own, without special tokens,
and scored after a prefix of BOS (when the tokenizer has one) followed by its context (when given). Tokenizing the
text separately keeps its tokens — and so the scored positions — identical with and without a context. Contexts
are prepended as they are: a caller that wants a separator (a newline between chunks) puts it in the context. The
first token of a text with neither BOS nor context has nothing to be predicted from and is not scored.
When a row exceeds `max_length`, the text is kept first (cut at the end) and the context is cut from its start,
so the most recent context survives.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from workers.ml.distill.errors import DistillError, TokenizerMismatch

__all__ = [
    "EvalSetFile",
    "LMScores",
    "QAExample",
    "TeacherComparison",
    "best_and_worst",
    "compare_with_teacher",
    "gap_closed",
    "load_eval_set",
    "mean_kl",
    "read_eval_set",
    "rouge_l",
    "score_lm",
    "score_qa",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- language-model scores


@dataclass(frozen=True)
class LMScores:
    perplexity: float  # exp(mean NLL per scored token); only comparable between models sharing a tokenizer
    bits_per_byte: float  # total NLL in bits / UTF-8 bytes of the scored text; comparable across tokenizers
    mean_nll: float  # nats per scored token
    tokens: int  # scored tokens
    bytes: int  # UTF-8 bytes those tokens cover

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Row:
    """One sequence to run: prefix + text tokens, and which positions are scored."""

    input_ids: list[int]
    first_target: int  # index in input_ids of the first scored token (always >= 1)
    n_targets: int
    scored_bytes: int


def _encode(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    """Token ids of `text` without special tokens, plus character offsets when the tokenizer is a fast one."""
    try:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoding["input_ids"]), [tuple(span) for span in encoding["offset_mapping"]]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        # Slow (Python) tokenizers have no offsets; bytes are then measured by decoding.
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]), None


def _scored_bytes(
    tokenizer: Any, text: str, ids: list[int], offsets: list[tuple[int, int]] | None, start: int, end: int
) -> int:
    """UTF-8 bytes covered by text tokens [start, end): the whole text when every token is scored."""
    if start >= end:
        return 0
    if start == 0 and end == len(ids):
        return len(text.encode("utf-8"))
    if offsets is not None:
        first = 0 if start == 0 else offsets[start][0]
        last = len(text) if end == len(ids) else offsets[end - 1][1]
        return len(text[first:last].encode("utf-8"))
    return len(tokenizer.decode(ids[start:end]).encode("utf-8"))


def _bos_id(tokenizer: Any) -> int | None:
    return getattr(tokenizer, "bos_token_id", None)


def _build_row(
    tokenizer: Any,
    text: str,
    context: str | None,
    max_length: int,
    *,
    skip_first: bool | None = None,
) -> _Row:
    """Lay out BOS + context + text within max_length. `skip_first` forces (or forbids) scoring text token 0;
    by default it is skipped only when nothing precedes it."""
    if max_length < 2:
        raise ValueError("max_length must be at least 2.")
    ids, offsets = _encode(tokenizer, text)
    bos = _bos_id(tokenizer)
    head = [bos] if bos is not None else []
    ids_kept = ids[: max_length - len(head)]
    budget = max_length - len(head) - len(ids_kept)
    context_ids = _encode(tokenizer, context)[0] if context else []
    context_ids = context_ids[len(context_ids) - budget :] if budget > 0 else []
    prefix = head + context_ids
    if skip_first is None:
        skip_first = not prefix
    skip = 1 if skip_first else 0
    n_targets = max(0, len(ids_kept) - skip)
    return _Row(
        input_ids=prefix + ids_kept,
        first_target=len(prefix) + skip,
        n_targets=n_targets,
        scored_bytes=_scored_bytes(tokenizer, text, ids, offsets, skip, len(ids_kept)),
    )


def _device_of(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    parameter: torch.nn.Parameter = next(model.parameters())
    return parameter.device


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


@contextmanager
def _eval_mode(*models: Any) -> Iterator[None]:
    """Dropout (LoRA's included) off while scoring, and the callers' training mode restored afterwards."""
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)


def _forward(model: Any, rows: Sequence[_Row], pad_id: int) -> torch.Tensor:
    """Logits of one right-padded batch. (B, T, V)"""
    device = _device_of(model)
    length = max(len(row.input_ids) for row in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)  # (B, T)
    for index, row in enumerate(rows):
        input_ids[index, : len(row.input_ids)] = torch.tensor(row.input_ids, dtype=torch.long)
        attention_mask[index, : len(row.input_ids)] = 1
    output = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
    logits: torch.Tensor = output.logits  # (B, T, V)
    return logits


def _row_logprobs(logits: torch.Tensor, row: _Row, vocab: int | None = None) -> torch.Tensor:
    """Log-probs predicting the row's scored tokens, in fp32: one row at a time bounds the temporaries. (n, V)"""
    # The logit at position p predicts token p + 1.
    start = row.first_target - 1
    selected = logits[start : start + row.n_targets]  # (n, V)
    if vocab is not None:
        selected = selected[:, :vocab]
    return F.log_softmax(selected.float(), dim=-1)


def _check_contexts(texts: Sequence[str], contexts: Sequence[str | None] | None, name: str) -> list[str | None]:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string.")
    if contexts is None:
        return [None] * len(texts)
    if len(contexts) != len(texts):
        raise ValueError(f"{name} has {len(contexts)} entries for {len(texts)} texts.")
    return list(contexts)


def score_lm(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    contexts: Sequence[str | None] | None = None,
    batch_size: int = 8,
    max_length: int = 1024,
) -> LMScores:
    """Perplexity, bits per byte and mean NLL of `model` on `texts`, each optionally after an unscored context.

    Memory: one batch of logits, batch_size × longest row × vocabulary floats (8 × 1024 × 49152 fp32 ≈ 1.6 GB
    on the CPU), plus one row's log-softmax at a time; lower batch_size or max_length on small machines.
    Raises DistillError when no token at all can be scored (no texts, or only empty ones).
    """
    context_list = _check_contexts(texts, contexts, "contexts")
    rows = [_build_row(tokenizer, text, context, max_length) for text, context in zip(texts, context_list, strict=True)]
    rows = [row for row in rows if row.n_targets > 0]
    if not rows:
        raise DistillError("There is no text to score: every held-out text is empty.")
    rows.sort(key=lambda row: len(row.input_ids), reverse=True)  # similar lengths together; OOM shows up first
    pad_id = _pad_id(tokenizer)
    total_nll = 0.0
    with _eval_mode(model), torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            logits = _forward(model, batch, pad_id)  # (B, T, V)
            for index, row in enumerate(batch):
                total_nll += _nll(_row_logprobs(logits[index], row), row)
            del logits
    return _scores(total_nll, rows)


def mean_kl(
    teacher_model: Any,
    student_model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    teacher_contexts: Sequence[str | None] | None = None,
    batch_size: int = 8,
    max_length: int = 1024,
) -> float:
    """Mean per-token forward KL(teacher ‖ student) in nats over the texts' tokens.

    The teacher sees each text after its context, the student sees the text alone (context distillation), and
    both score the same text tokens. They must share `tokenizer`'s vocabulary.
    """
    context_list = _check_contexts(texts, teacher_contexts, "teacher_contexts")
    pairs = []
    for text, context in zip(texts, context_list, strict=True):
        student_row = _build_row(tokenizer, text, None, max_length)
        # The teacher scores exactly the student's tokens: token 0 too iff the student has a BOS before it.
        teacher_row = _build_row(tokenizer, text, context, max_length, skip_first=_bos_id(tokenizer) is None)
        if student_row.n_targets > 0 and teacher_row.n_targets == student_row.n_targets:
            pairs.append((teacher_row, student_row))
    if not pairs:
        raise DistillError("There is no text to compare teacher and student on: every held-out text is empty.")
    pairs.sort(key=lambda pair: len(pair[0].input_ids), reverse=True)
    pad_id = _pad_id(tokenizer)
    total_kl = 0.0
    tokens = 0
    with _eval_mode(teacher_model, student_model), torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            teacher_logits = _forward(teacher_model, [pair[0] for pair in batch], pad_id)  # (B, Tt, Vt)
            student_logits = _forward(student_model, [pair[1] for pair in batch], pad_id)  # (B, Ts, Vs)
            vocab = _shared_vocab(teacher_logits.shape[-1], student_logits.shape[-1], len(tokenizer))
            for index, (teacher_row, student_row) in enumerate(batch):
                student_logprobs = _row_logprobs(student_logits[index], student_row, vocab)  # (n, V)
                teacher_logprobs = _row_logprobs(teacher_logits[index], teacher_row, vocab)  # (n, V)
                teacher_logprobs = teacher_logprobs.to(student_logprobs.device)
                # KL(p_t ‖ p_s) = Σ p_t (log p_t − log p_s); kl_div(input=log q, target=log p) computes exactly that.
                kl = F.kl_div(student_logprobs, teacher_logprobs, reduction="sum", log_target=True)
                total_kl += kl.item()
                tokens += student_row.n_targets
            del teacher_logits, student_logits
    return total_kl / tokens


@dataclass(frozen=True)
class TeacherComparison:
    """Held-out scores of a teacher seeing its contexts and of students reading the texts alone, with the mean
    KL(teacher ‖ student) of each student: what score_lm and mean_kl give, from fewer forward passes."""

    teacher: LMScores
    students: dict[str, LMScores]
    kl: dict[str, float]


def compare_with_teacher(
    teacher_model: Any,
    students: Mapping[str, Any],
    tokenizer: Any,
    texts: Sequence[str],
    *,
    teacher_contexts: Sequence[str | None] | None = None,
    batch_size: int = 8,
    max_length: int = 1024,
) -> TeacherComparison:
    """score_lm of the teacher (with `teacher_contexts`) and of each student, and mean_kl(teacher, student).

    One teacher forward and one forward per student per batch: 1 + S passes over the texts, where score_lm and
    mean_kl called apart take 1 + S for the scores and 2·S more for the KLs (the teacher again for each KL).
    Memory: a batch's teacher logits stay while the students run (batch_size × longest row × vocabulary).
    The teacher and the students must share `tokenizer`'s vocabulary.
    """
    context_list = _check_contexts(texts, teacher_contexts, "teacher_contexts")
    pairs = []
    for text, context in zip(texts, context_list, strict=True):
        pair = (_build_row(tokenizer, text, context, max_length), _build_row(tokenizer, text, None, max_length))
        if pair[0].n_targets > 0 or pair[1].n_targets > 0:
            pairs.append(pair)
    if not any(student_row.n_targets for _, student_row in pairs):
        raise DistillError("There is no text to score: every held-out text is empty.")
    pairs.sort(key=lambda pair: len(pair[0].input_ids), reverse=True)
    pad_id = _pad_id(tokenizer)
    teacher_nll = 0.0
    student_nll = dict.fromkeys(students, 0.0)
    total_kl = dict.fromkeys(students, 0.0)
    with _eval_mode(teacher_model, *students.values()), torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            teacher_logits = _forward(teacher_model, [pair[0] for pair in batch], pad_id)  # (B, Tt, V)
            teacher_lps = [_row_logprobs(teacher_logits[index], row) for index, (row, _) in enumerate(batch)]
            teacher_nll += sum(_nll(lp, row) for lp, (row, _) in zip(teacher_lps, batch, strict=True))
            for name, model in students.items():
                student_logits = _forward(model, [pair[1] for pair in batch], pad_id)  # (B, Ts, V')
                vocab = _shared_vocab(teacher_logits.shape[-1], student_logits.shape[-1], len(tokenizer))
                for index, (teacher_row, student_row) in enumerate(batch):
                    if student_row.n_targets == 0:
                        continue
                    student_lp = _row_logprobs(student_logits[index], student_row)  # (n, V')
                    student_nll[name] += _nll(student_lp, student_row)
                    # The teacher may score one more leading text token (its context precedes it): the KL takes
                    # the student's positions, as mean_kl does.
                    skip = teacher_row.n_targets - student_row.n_targets
                    teacher_lp = teacher_lps[index]
                    if vocab is not None:
                        student_lp = _row_logprobs(student_logits[index], student_row, vocab)
                        teacher_lp = _row_logprobs(teacher_logits[index], teacher_row, vocab)
                    kl = F.kl_div(student_lp, teacher_lp[skip:].to(student_lp.device), reduction="sum", log_target=True)
                    total_kl[name] += kl.item()
                del student_logits
            del teacher_logits, teacher_lps
    student_rows = [row for _, row in pairs if row.n_targets > 0]
    teacher_rows = [row for row, _ in pairs if row.n_targets > 0]
    tokens = sum(row.n_targets for row in student_rows)
    return TeacherComparison(
        teacher=_scores(teacher_nll, teacher_rows),
        students={name: _scores(student_nll[name], student_rows) for name in students},
        kl={name: total_kl[name] / tokens for name in students},
    )


def _nll(logprobs: torch.Tensor, row: _Row) -> float:
    """Summed NLL of the row's scored tokens from their log-probs (n, V)."""
    targets = torch.tensor(row.input_ids[row.first_target : row.first_target + row.n_targets], device=logprobs.device)
    return -logprobs.gather(1, targets[:, None]).sum().item()


def _scores(total_nll: float, rows: Sequence[_Row]) -> LMScores:
    tokens = sum(row.n_targets for row in rows)
    scored_bytes = sum(row.scored_bytes for row in rows)
    mean_nll = total_nll / tokens
    return LMScores(
        perplexity=math.exp(mean_nll),
        bits_per_byte=total_nll / math.log(2) / scored_bytes if scored_bytes else math.nan,
        mean_nll=mean_nll,
        tokens=tokens,
        bytes=scored_bytes,
    )


def _shared_vocab(teacher_vocab: int, student_vocab: int, tokenizer_size: int) -> int | None:
    """The logit columns to compare: all of them, or the tokenizer's when one model pads its vocabulary."""
    if teacher_vocab == student_vocab:
        return None
    if min(teacher_vocab, student_vocab) < tokenizer_size:
        raise TokenizerMismatch(
            f"The teacher ({teacher_vocab} logits) and the student ({student_vocab} logits) do not share a "
            "vocabulary, so their token distributions cannot be compared."
        )
    return tokenizer_size


def gap_closed(ppl_base: float, ppl_expert: float, ppl_teacher: float) -> float | None:
    """Share of the base→teacher perplexity gap the expert closed (1: as good as the teacher, < 0: worse than
    the base); None when the teacher is no better than the base, so there was no gap to close."""
    values = (ppl_base, ppl_expert, ppl_teacher)
    if not all(math.isfinite(value) for value in values) or ppl_teacher >= ppl_base:
        return None
    return (ppl_base - ppl_expert) / (ppl_base - ppl_teacher)


# ---------------------------------------------------------------- question answering


_WORD_RE = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of lowercased word tokens, as a harmonic mean of precision
    (over the candidate) and recall (over the reference). Two empty texts score 1, one empty text 0."""
    cand, ref = _words(candidate), _words(reference)
    if not cand or not ref:
        return 1.0 if not cand and not ref else 0.0
    # Classic O(m·n) dynamic programme, one row at a time.
    previous = [0] * (len(ref) + 1)
    for word in cand:
        current = [0] * (len(ref) + 1)
        for j, ref_word in enumerate(ref, start=1):
            current[j] = previous[j - 1] + 1 if word == ref_word else max(previous[j], current[j - 1])
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class QAExample:
    question: str
    reference: str
    answer: str
    score: float  # ROUGE-L F1 of answer against reference
    judge_grade: int | None = None  # the teacher's 1–5 grade against the reference, when it judged (qa_judge)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def score_qa(
    answer_fn: Callable[[list[str]], list[str]], questions: Sequence[str], references: Sequence[str]
) -> tuple[float, list[QAExample]]:
    """Mean ROUGE-L of `answer_fn`'s answers, and every example, best first (ties keep the question order)."""
    questions, references = list(questions), list(references)
    if len(questions) != len(references):
        raise ValueError(f"{len(questions)} questions but {len(references)} references.")
    if not questions:
        raise ValueError("score_qa needs at least one question.")
    answers = list(answer_fn(questions))
    if len(answers) != len(questions):
        raise ValueError(f"answer_fn returned {len(answers)} answers for {len(questions)} questions.")
    examples = [
        QAExample(question, reference, answer, rouge_l(answer, reference))
        for question, reference, answer in zip(questions, references, answers, strict=True)
    ]
    mean = sum(example.score for example in examples) / len(examples)
    return mean, sorted(examples, key=lambda example: example.score, reverse=True)


def best_and_worst(examples: Sequence[QAExample], n: int = 5) -> tuple[list[QAExample], list[QAExample]]:
    """The n best (highest first) and the n worst (lowest first); no example appears in both lists."""
    ranked = sorted(examples, key=lambda example: example.score, reverse=True)
    best = ranked[:n]
    rest = ranked[len(best) :]
    worst = rest[::-1][:n]
    return best, worst


# ---------------------------------------------------------------- the company's eval set


@dataclass(frozen=True)
class EvalSetFile:
    pairs: list[tuple[str, str]]  # (question, answer)
    skipped: int  # malformed lines (blank lines are not counted)


def read_eval_set(path: Path) -> EvalSetFile:
    """Read a JSONL file of {"question": …, "answer": …} objects, skipping (and counting) malformed lines.

    Raises DistillError if the file cannot be read or holds no usable pair.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DistillError(f"The eval set {path.name} could not be read ({type(exc).__name__}).") from exc
    pairs: list[tuple[str, str]] = []
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        question = item.get("question") if isinstance(item, dict) else None
        answer = item.get("answer") if isinstance(item, dict) else None
        if not isinstance(question, str) or not isinstance(answer, str) or not question.strip() or not answer.strip():
            skipped += 1
            continue
        pairs.append((question.strip(), answer.strip()))
    if not pairs:
        raise DistillError(
            f"The eval set {path.name} has no usable line: each line must be a JSON object with non-empty "
            f'"question" and "answer" strings ({skipped} malformed line{"s" if skipped != 1 else ""}).'
        )
    return EvalSetFile(pairs=pairs, skipped=skipped)


def load_eval_set(path: Path) -> list[tuple[str, str]]:
    """The (question, answer) pairs of a JSONL eval set; malformed lines are skipped and logged as a count."""
    result = read_eval_set(path)
    if result.skipped:
        logger.warning("Skipped %d malformed line(s) of the eval set %s.", result.skipped, Path(path).name)
    return result.pairs
