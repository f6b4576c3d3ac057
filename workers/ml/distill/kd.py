"""Recipe `kd`: token-level logit distillation of the corpus text, with optional context distillation.

The student reads a chunk alone; the teacher reads the chunk after the preceding chunk(s) of its document.
With the same model as teacher and student (the packaged SmolLM2 default), the teacher's only advantage is the
document it can see, and the LoRA expert learns to answer as if it had read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workers.ml.distill.config import KDSettings
from workers.ml.distill.corpus import Chunk, CorpusSnapshot
from workers.ml.distill.losses import LossParts, distillation_loss, log_tail_mass
from workers.ml.distill.packing import PackedBatch
from workers.ml.distill.teacher_cache import Targets, TargetSource, TeacherCache, TeacherSegment, live_teacher_logits
from workers.ml.distill.train import LossFunction

CONTEXT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class KDData:
    chunks: tuple[Chunk, ...]  # the chunks kept, in segment order
    segments: tuple[tuple[int, ...], ...]  # student tokens per chunk
    teacher_segments: tuple[TeacherSegment, ...]  # context + chunk tokens per chunk

    @property
    def tokens(self) -> int:
        return sum(len(segment) for segment in self.segments)


def context_text(corpus: CorpusSnapshot, chunk: Chunk, settings: KDSettings) -> str:
    """What the teacher reads before `chunk` ('' when context distillation is off or the chunk opens its doc)."""
    if settings.context_chunks <= 0:
        return ""
    preceding = corpus.preceding(chunk, settings.context_chunks)
    return CONTEXT_SEPARATOR.join(item.text for item in preceding)


def context_tokens(tokenizer: Any, text: str, max_tokens: int) -> tuple[int, ...]:
    if not text or max_tokens <= 0:
        return ()
    ids = tokenizer(text + CONTEXT_SEPARATOR, add_special_tokens=False)["input_ids"]
    return tuple(ids[-max_tokens:])  # the end of the context is what matters for the next chunk


def build_kd_data(
    chunks: Sequence[Chunk], corpus: CorpusSnapshot, tokenizer: Any, settings: KDSettings, seq_len: int
) -> KDData:
    """Tokenise chunks for the student (truncated to seq_len) and for the teacher (context first)."""
    kept, segments, teacher_segments = [], [], []
    for chunk in chunks:
        ids = tuple(tokenizer(chunk.text, add_special_tokens=False)["input_ids"][:seq_len])
        if len(ids) < 2:  # nothing to predict
            continue
        context = context_tokens(tokenizer, context_text(corpus, chunk, settings), settings.context_max_tokens)
        kept.append(chunk)
        segments.append(ids)
        teacher_segments.append(TeacherSegment(tokens=context + ids, target_offset=len(context)))
    return KDData(tuple(kept), tuple(segments), tuple(teacher_segments))


# vLLM returns at most --max-logprobs (default 20) log-probs per prompt position.
ENDPOINT_MAX_TOP_K = 20


def endpoint_targets(teacher: Any, segments: Sequence[TeacherSegment], top_k: int) -> TargetSource:
    """Teacher-cache targets from an OpenAI-compatible endpoint's prompt logprobs (vLLM's prompt_logprobs).

    `teacher.prompt_topk_logprobs` aligns row t with token t + 1 like local logits; the rows of the segment's
    own tokens are kept and the tail is derived from the top-k mass (the endpoint reports nothing else).
    """

    def source(indices: Sequence[int]) -> list[Targets]:
        results = teacher.prompt_topk_logprobs([segments[i].tokens for i in indices], top_k)
        out = []
        for index, (values, ids) in zip(indices, results, strict=True):
            span = slice(segments[index].target_offset, len(segments[index].tokens))
            kept = values[span].float()  # (L, k)
            out.append((index, kept.half(), ids[span].int(), log_tail_mass(kept)))
        return out

    return source


def kd_loss(
    settings: KDSettings,
    *,
    cache: TeacherCache | None,
    teacher_model: Any = None,
    teacher_segments: Sequence[TeacherSegment] = (),
    pad_token_id: int = 0,
) -> LossFunction:
    """The training loss of recipe kd, reading teacher targets from the cache or running the teacher live.

    A live `teacher_model` of None means the teacher is the student's own base: it then runs as the trained
    model with its adapter disabled.
    """

    def loss(model: Any, batch: PackedBatch) -> LossParts:
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits  # (B,T,V)
        positions = batch.label_count
        if cache is not None:
            values, ids, tail = (tensor.to(logits.device) for tensor in cache.gather(batch))
            return distillation_loss(
                logits,
                batch.labels,
                teacher_topk_logprobs=values,
                teacher_topk_ids=ids,
                teacher_topk_tail=tail,
                alpha=settings.alpha,
                temperature=settings.temperature,
                kind=settings.divergence,
                beta=settings.jsd_beta,
                positions=positions,
            )
        if teacher_model is None:
            with model.disable_adapter():
                teacher_logits = live_teacher_logits(model, teacher_segments, batch, pad_token_id)
        else:
            teacher_logits = live_teacher_logits(teacher_model, teacher_segments, batch, pad_token_id)
        return distillation_loss(
            logits,
            batch.labels,
            teacher_logits=teacher_logits.to(logits.device),
            alpha=settings.alpha,
            temperature=settings.temperature,
            kind=settings.divergence,
            beta=settings.jsd_beta,
            positions=positions,
        )

    return loss
