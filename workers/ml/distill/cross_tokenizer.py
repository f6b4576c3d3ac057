"""Recipe kd across tokenizers: TRL's Universal Logit Distillation (GOLD's `ULDLoss`) for a teacher whose
vocabulary differs from the student's.

Token-level KD compares p_teacher(v) with p_student(v) for the same token v; when the ids of the two vocabularies
mean different strings there is no such v. ULD (Boizard et al., 2024) compares the two distributions *sorted*
(an L1 distance between the probability vectors in descending order, the shorter one padded with zeros), which
needs no token correspondence, only pairs of positions that predict the same text. TRL's extended ULD finds those
pairs from byte offsets: both tokenizations of the same text are walked together and cut into groups wherever both
have a token boundary at the same byte, and a word one side splits into several tokens is merged by the chain rule.

Design, and why it differs from the same-vocabulary path (kd.py):

- Same text, two tokenizations. A training chunk is tokenised by the student (truncated to `seq_len`) and, for the
  same text, by the teacher, each token with its UTF-8 byte span in the chunk text; both sets of offsets are
  relative to the chunk's first byte, the shared coordinate system ULD aligns on.
- Context distillation as in kd.py: the teacher reads the preceding chunk(s) (its own tokens, capped at
  `context_max_tokens`) before the chunk. Only the chunk's tokens carry teacher labels, so the loss covers the
  target text only.
- Unpacked rows. ULDLoss reads a row's answer as the one contiguous run of labelled tokens, so a micro-batch row
  holds one chunk, right-padded to the longest row of the micro-batch, instead of several packed ones.
- "bayesian" token merging: the distribution at position k is the one that predicts token k (logits shifted by
  one), so a group of split tokens becomes p(last token | prefix) · Π p(earlier actual tokens) — the probability
  of the group's text. TRL's default, "observed", pairs each token's byte span with the distribution of the *next*
  token and multiplies probabilities read off by one position.
- TRL's merge is replaced by a vectorised one with the same result (`merge_aligned_probabilities`): TRL's
  backward grows as groups² × vocabulary, which makes a CPU run with 256-token rows unusable.
- No teacher cache: the cache keeps, per student token, the teacher's top-k targets as ids of the shared
  vocabulary. Across tokenizers there is no per-student-token target, the ids would be the teacher's, and ULDLoss
  takes the teacher's full logits over the teacher's own tokens (the sort compares whole distributions, the merge
  reads the actual tokens' probabilities). The teacher runs live, without gradients, on each micro-batch instead:
  one teacher forward per micro-batch and epoch, its rows packed and its output head on the chunks' positions
  only, not on the context's (`teacher_segment`; with Gemma 3's 262k vocabulary the head is most of the cost).
- loss = α·CE + (1 − α)·ULD. ULDLoss's own cross-entropy is off (`uld_crossentropy_weight=0`); ours is the CE of
  every kd run, on the student's next tokens, so α means the same with or without a shared vocabulary. ULD is
  averaged per row over its aligned groups, and rows are weighted by their labelled tokens like the CE, so a
  micro-batch's loss is a mean over tokens as the training loop expects. The temperature softens both
  distributions; there is no τ² factor (it offsets the 1/τ² of KL gradients, which an L1 between probabilities
  does not have); the training log's `divergence` is this ULD distance. `divergence`, `jsd_beta`, `teacher_cache`
  and `cache_top_k` of the settings do not apply here.
- TRL is an optional dependency (`pip install 'distillery[gold]'`), imported only when a run needs it.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from workers.ml.catalog_types import LoadedModel
from workers.ml.distill import kd as kd_recipe
from workers.ml.distill.config import DistillConfig, KDSettings
from workers.ml.distill.corpus import Chunk, CorpusSnapshot
from workers.ml.distill.errors import NoTrainingData, TokenizerMismatch
from workers.ml.distill.losses import IGNORE_INDEX, LossParts
from workers.ml.distill.packing import PackedBatch, collate
from workers.ml.distill.progress import Progress, ProgressCallback
from workers.ml.distill.teacher_cache import TeacherSegment, segment_target_logits
from workers.ml.distill.teachers import LocalTeacher
from workers.ml.distill.teachers.vocab import vocabulary_sizes
from workers.ml.distill.train import DataPlan, LossFunction

GOLD_EXTRA = "pip install 'distillery[gold]'"
QA_SUGGESTION = "use recipe 'qa', which distils through generated text and works with any teacher"
# ULD merges split tokens by the chain rule over the actual tokens; see the module docstring.
BAYESIAN = "bayesian"
MERGE_STRATEGY = BAYESIAN
MERGE_EPS = 1e-8  # TRL's floor of a merged token's probability

Offsets = tuple[tuple[int, int], ...]


# ---------------------------------------------------------------- byte offsets


def token_byte_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """The tokens of `text` (no special tokens) and each one's UTF-8 byte span (start, end) in `text`.

    From a fast tokenizer's character offsets, which give every byte-level piece of a multi-byte character (and
    every SentencePiece byte-fallback token) the whole character's span, so spans overlap. A token is cut where the
    next one starts: the shared character then belongs to its last piece, and the earlier pieces end before it
    (zero width when they hold nothing else). ULD groups tokens by where they end, so the pieces of a character
    join the group that ends with it. Ends never decrease, as ULD's alignment walk needs.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TokenizerMismatch(
            f"Cross-tokenizer kd needs a fast tokenizer (with character offsets); "
            f"{getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)} is not one. Instead, {QA_SUGGESTION}."
        )
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    char_to_byte = [0]
    for char in text:
        char_to_byte.append(char_to_byte[-1] + len(char.encode("utf-8")))
    spans = [(char_to_byte[start], char_to_byte[end]) for start, end in encoding["offset_mapping"]]
    offsets: list[tuple[int, int]] = []
    cursor = 0
    for index, (start, end) in enumerate(spans):
        if index + 1 < len(spans) and spans[index + 1][0] < end:
            end = max(start, spans[index + 1][0])  # the overlap belongs to the next piece
        start = max(start, cursor)
        end = max(end, start)
        offsets.append((start, end))
        cursor = end
    return list(encoding["input_ids"]), offsets


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class CrossRow:
    """One training chunk as both models read it."""

    student_ids: tuple[int, ...]
    student_offsets: Offsets  # byte span of each student token in the chunk text
    teacher_ids: tuple[int, ...]  # context tokens, then the chunk's tokens
    teacher_offsets: Offsets  # byte span of each of the teacher's chunk tokens (not the context's)
    target_offset: int  # index in teacher_ids where the chunk begins


@dataclass(frozen=True)
class CrossData:
    chunks: tuple[Chunk, ...]  # the chunks kept, in row order
    rows: tuple[CrossRow, ...]

    @property
    def segments(self) -> tuple[tuple[int, ...], ...]:
        return tuple(row.student_ids for row in self.rows)


def build_cross_data(
    chunks: Sequence[Chunk],
    corpus: CorpusSnapshot,
    student_tokenizer: Any,
    teacher_tokenizer: Any,
    settings: KDSettings,
    seq_len: int,
) -> CrossData:
    """Tokenise each chunk for the student (truncated to seq_len) and the same text for the teacher, context first."""
    kept, rows = [], []
    for chunk in chunks:
        student_ids, student_offsets = token_byte_offsets(student_tokenizer, chunk.text)
        if len(student_ids) < 2:  # nothing to predict
            continue
        text = chunk.text
        if len(student_ids) > seq_len:
            student_ids, student_offsets = student_ids[:seq_len], student_offsets[:seq_len]
            # The teacher reads the text the student's tokens cover (a character cut in two is left out).
            text = text.encode("utf-8")[: student_offsets[-1][1]].decode("utf-8", errors="ignore")
        teacher_ids, teacher_offsets = token_byte_offsets(teacher_tokenizer, text)
        context = kd_recipe.context_tokens(
            teacher_tokenizer, kd_recipe.context_text(corpus, chunk, settings), settings.context_max_tokens
        )
        kept.append(chunk)
        rows.append(
            CrossRow(
                student_ids=tuple(student_ids),
                student_offsets=tuple(student_offsets),
                teacher_ids=context + tuple(teacher_ids),
                teacher_offsets=tuple(teacher_offsets),
                target_offset=len(context),
            )
        )
    return CrossData(tuple(kept), tuple(rows))


class UnpackedPlan(DataPlan):
    """A DataPlan with one chunk per row (ULD needs each row's answer region), rows padded to the longest.

    The epoch's order is the same seeded shuffle packing uses, so a run stays reproducible and resumable.
    """

    def epoch(self, number: int) -> list[list[list[int]]]:
        if self._cached_epoch is None or self._cached_epoch[0] != number:
            order = list(range(len(self.lengths)))
            random.Random(f"{self.settings.seed}:{number}").shuffle(order)  # noqa: S311 - data order, not security
            size = self.settings.micro_batch_size
            rows = [[index] for index in order]
            self._cached_epoch = (number, [rows[i : i + size] for i in range(0, len(rows), size)])
        return self._cached_epoch[1]

    def collate(self, rows: list[list[int]]) -> PackedBatch:
        width = max(self.lengths[index] for row in rows for index in row)
        return collate(self.segments, rows, width, self.pad_token_id)


# ---------------------------------------------------------------- TRL's ULD loss


def _missing_trl_message(
    teacher_tokenizer: Any, student_tokenizer: Any, names: tuple[str, str], error: Exception
) -> str:
    sizes = vocabulary_sizes(teacher_tokenizer, student_tokenizer, teacher_name=names[0], student_name=names[1])
    if (error_name := getattr(error, "name", None)) and error_name.split(".")[0] == "trl":
        problem = "TRL's cross-tokenizer GOLD (ULD) loss, which is not installed"
    else:
        problem = f"TRL's cross-tokenizer GOLD (ULD) loss, which does not import here ({error})"
    return (
        f"The teacher's vocabulary differs from the student's ({sizes}): recipe kd then needs {problem}. "
        f"Enable it with `{GOLD_EXTRA}`, or {QA_SUGGESTION}."
    )


def merge_aligned_probabilities(
    probs: torch.Tensor, groups: Sequence[Sequence[int]], token_ids: Sequence[int] | None, strategy: str
) -> torch.Tensor:
    """ULDLoss's merge of split tokens, vectorised: (n, V) probabilities -> (G, V), one row per alignment group.

    The same result as TRL 1.16's `ULDLoss._merge_probabilities_with_alignment_groups` (tested against it): a group
    of one token keeps its distribution; a longer one takes the distribution at its base position (the last for
    "bayesian", the first for "observed") times the probabilities, floored at 1e-8, of the actual tokens at its
    other positions; an empty group is zero. TRL writes each group into a zero tensor in place, which autograd
    undoes with one copy of the whole (G, V) gradient per group: backward grows as G²·V, half a minute for one
    256-token row on a CPU. A gather and an index_add keep forward and backward at O(G·V).
    """
    if not groups:
        return probs
    if token_ids is None and any(len(group) > 1 for group in groups):
        raise ValueError("token_ids must be provided when merging multi-token groups.")
    bayesian = strategy == BAYESIAN
    base, owners, positions = [], [], []
    for number, group in enumerate(groups):
        base.append((group[-1] if bayesian else group[0]) if group else 0)
        for position in group[:-1] if bayesian else group[1:]:
            owners.append(number)
            positions.append(position)
    device = probs.device
    merged = probs[torch.tensor(base, device=device)]  # (G, V)
    if positions:
        assert token_ids is not None
        picked = torch.tensor(positions, device=device)  # (S,)
        actual = torch.tensor([token_ids[position] for position in positions], device=device)  # (S,)
        log_scalars = probs[picked, actual].clamp_min(MERGE_EPS).log()  # (S,)
        factor = probs.new_zeros(len(groups)).index_add(0, torch.tensor(owners, device=device), log_scalars).exp()
        merged = merged * factor.unsqueeze(-1)  # (G, V)
    empty = [number for number, group in enumerate(groups) if not group]
    if empty:
        keep = torch.ones(len(groups), 1, dtype=probs.dtype, device=device)
        keep[torch.tensor(empty, device=device)] = 0
        merged = merged * keep
    return merged


def sorted_descending(probs: torch.Tensor) -> torch.Tensor:
    """`probs` (G, V) sorted along V, largest first, differentiable where `probs` is.

    On a CPU through NumPy, whose sort is vectorised (AVX-512/AVX2): 128 × 262,144 probabilities (a Gemma 3
    teacher's row) sort in 0.21 s there against 1.6 s with torch.sort, which took 62% of a cross-tokenizer step.
    With gradients the order comes from an argsort and a gather (its backward the scatter sort's would do).
    """
    if probs.device.type != "cpu" or probs.dtype != torch.float32:
        return probs.sort(dim=-1, descending=True).values
    values = probs.detach().numpy()
    if not probs.requires_grad:
        return torch.from_numpy(np.ascontiguousarray(np.sort(values, axis=-1)[:, ::-1]))
    order = torch.from_numpy(np.argsort(-values, axis=-1))  # (G, V)
    return probs.gather(-1, order)


def sorted_l1(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """ULD's distance: the L1 between the two (G, V) distributions sorted, the shorter padded with zeros.

    The padding is not built: beyond the shorter vocabulary (n entries) each side's entries meet zeros, so they
    add their own sum. For a Gemma 3 teacher (262,144) and a SmolLM2 student (49,152) that spares five sixths
    of the element-wise work, with the same value and gradient.
    """
    student_sorted, teacher_sorted = sorted_descending(student), sorted_descending(teacher)  # (G, Vs), (G, Vt)
    n = min(student_sorted.shape[-1], teacher_sorted.shape[-1])
    distance = (student_sorted[:, :n] - teacher_sorted[:, :n]).abs().sum()
    return distance + student_sorted[:, n:].abs().sum() + teacher_sorted[:, n:].abs().sum()


def load_uld_loss(
    settings: KDSettings,
    student_tokenizer: Any,
    teacher_tokenizer: Any,
    device: torch.device,
    *,
    teacher_name: str | None = None,
    student_name: str | None = None,
) -> Any:
    """TRL's ULDLoss (merge vectorised) for these tokenizers, without its own CE.

    Raises TokenizerMismatch, saying how to enable it and suggesting recipe qa, when TRL cannot be imported.
    """
    try:
        with warnings.catch_warnings():
            # trl.experimental warns once on import that its API may change: this module pins the TRL version.
            warnings.filterwarnings("ignore", message=".*trl.experimental.*")
            from trl.experimental.gold.gold_config import GOLDConfig
            from trl.experimental.gold.gold_trainer import ULDLoss
    except ImportError as error:
        names = (teacher_name or "", student_name or "")
        raise TokenizerMismatch(_missing_trl_message(teacher_tokenizer, student_tokenizer, names, error)) from error
    with warnings.catch_warnings():
        # GOLDConfig is a TrainingArguments: its deprecation notices concern the trainer, which is not used here.
        warnings.filterwarnings("ignore", category=FutureWarning)
        gold = GOLDConfig(
            output_dir="gold-unused",  # GOLDConfig is a TrainingArguments; nothing is written there
            report_to="none",
            bf16=False,  # its default asks TrainingArguments for a bf16 device; our loop does the autocast
            use_uld_loss=True,
            use_extended_uld=True,
            uld_token_merge_strategy=MERGE_STRATEGY,
            uld_crossentropy_weight=0.0,
            uld_distillation_weight=1.0,
            uld_student_temperature=settings.temperature,
            uld_teacher_temperature=settings.temperature,
            # Chunks carry no end-of-sequence token, so there is none to skip.
            uld_skip_student_eos=False,
            uld_skip_teacher_eos=False,
        )

    class VectorisedULDLoss(ULDLoss):
        """TRL's ULDLoss with its split-token merge vectorised (see merge_aligned_probabilities) and its sorted
        distance computed faster (sorted_l1); the same value and gradient as TRL's (tested)."""

        def _merge_probabilities_with_alignment_groups(
            self, probs: torch.Tensor, alignment_groups: Any, token_ids: Any = None
        ) -> torch.Tensor:
            return merge_aligned_probabilities(probs, alignment_groups, token_ids, self.token_merge_strategy)

        def _compute_distillation_loss(
            self,
            student_logits: torch.Tensor,
            teacher_logits: torch.Tensor,
            student_labels: torch.Tensor,
            teacher_labels: torch.Tensor,
            student_input_ids: torch.Tensor,
            teacher_input_ids: torch.Tensor,
            student_byte_offsets: torch.Tensor | None = None,
            teacher_byte_offsets: torch.Tensor | None = None,
        ) -> torch.Tensor:
            return extended_uld_distance(
                self,
                student_logits,
                teacher_logits,
                (student_labels, teacher_labels),
                (student_input_ids, teacher_input_ids),
                (student_byte_offsets, teacher_byte_offsets),
            )

    return VectorisedULDLoss(
        gold, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer, device=device
    )


def extended_uld_distance(
    uld: Any,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: tuple[torch.Tensor, torch.Tensor],
    input_ids: tuple[torch.Tensor, torch.Tensor],
    byte_offsets: tuple[torch.Tensor | None, torch.Tensor | None],
) -> torch.Tensor:
    """TRL 1.16's `ULDLoss._compute_distillation_loss` for the settings load_uld_loss uses (extended ULD, no
    hybrid loss, no EOS skipped), its sort and padding replaced by sorted_l1. Per row:

    1. the answer regions (labelled tokens) of both sides;
    2. "bayesian" merging has no prediction for a region starting at index 0: the first aligned group is dropped
       on both sides (the student's chunk always starts there);
    3. the probabilities at the region's positions (one earlier for "bayesian"), with each side's temperature;
    4. the byte-offset alignment groups, pairs with an empty side dropped, split tokens merged;
    5. sorted L1 over the groups, divided by their number. The rows' mean, times the distillation weight.
    """
    if uld.use_hybrid_loss or not uld.use_extended_uld or uld.skip_student_eos or uld.skip_teacher_eos:
        raise ValueError("extended_uld_distance covers extended ULD without the hybrid loss or skipped EOS only.")
    student_offsets, teacher_offsets = byte_offsets
    if student_offsets is None or teacher_offsets is None:
        raise ValueError("Byte offsets are required when `use_extended_uld=True`.")
    bayesian = uld.token_merge_strategy == BAYESIAN
    student_regions = uld._get_start_and_size_answers(labels[0])
    teacher_regions = uld._get_start_and_size_answers(labels[1])
    if max([*student_regions[1], *teacher_regions[1]], default=0) <= 0:
        return torch.zeros(1, device=student_logits.device, requires_grad=True) * student_logits.sum() * 1e-8
    losses = []
    for row in range(student_logits.size(0)):
        student_start, student_size = student_regions[0][row], student_regions[1][row]
        teacher_start, teacher_size = teacher_regions[0][row], teacher_regions[1][row]
        if student_size <= 0 or teacher_size <= 0:
            losses.append(student_logits[row].sum() * 0.0)
            continue
        student_spans = student_offsets[row, student_start : student_start + student_size].tolist()
        teacher_spans = teacher_offsets[row, teacher_start : teacher_start + teacher_size].tolist()
        student_groups, teacher_groups = uld._align_by_byte_offsets(student_spans, teacher_spans)
        if bayesian and (student_start == 0 or teacher_start == 0):
            if not student_groups or not teacher_groups:
                losses.append(student_logits[row].sum() * 0.0)
                continue
            student_drop, teacher_drop = len(student_groups[0]), len(teacher_groups[0])
            student_start, student_size = student_start + student_drop, student_size - student_drop
            teacher_start, teacher_size = teacher_start + teacher_drop, teacher_size - teacher_drop
            if student_size <= 0 or teacher_size <= 0:
                losses.append(student_logits[row].sum() * 0.0)
                continue
            # TRL aligns the shortened regions again; the walk closes groups where both sides end a token, so
            # that gives the other groups, their indices moved by the tokens dropped.
            student_groups = [[i - student_drop for i in group] for group in student_groups[1:]]
            teacher_groups = [[i - teacher_drop for i in group] for group in teacher_groups[1:]]
        shift = 1 if bayesian else 0
        student_probs = F.softmax(
            student_logits[row, student_start - shift : student_start + student_size - shift] / uld.student_temperature,
            dim=-1,
        )  # (Ss, Vs)
        teacher_probs = F.softmax(
            teacher_logits[row, teacher_start - shift : teacher_start + teacher_size - shift] / uld.teacher_temperature,
            dim=-1,
        )  # (St, Vt)
        paired = [(s, t) for s, t in zip(student_groups, teacher_groups, strict=False) if s and t]
        student_ids = input_ids[0][row, student_start : student_start + student_size].tolist()
        teacher_ids = input_ids[1][row, teacher_start : teacher_start + teacher_size].tolist()
        strategy = uld.token_merge_strategy
        student_aligned = merge_aligned_probabilities(student_probs, [s for s, _ in paired], student_ids, strategy)
        teacher_aligned = merge_aligned_probabilities(teacher_probs, [t for _, t in paired], teacher_ids, strategy)
        losses.append(sorted_l1(student_aligned, teacher_aligned) / student_aligned.size(0))  # (G, V) each
    distance: torch.Tensor = uld.distillation_weight * torch.stack(losses).mean()
    return distance


@dataclass(frozen=True)
class _ULDRow:
    """ULDLoss's inputs for one row besides the logits, each (1, …) on the CPU (it reads them as Python lists)."""

    student_labels: torch.Tensor  # (1, T): the chunk's token ids (the answer region), -100 on padding
    student_offsets: torch.Tensor  # (1, T, 2) byte spans, (0, 0) on padding
    teacher_ids: torch.Tensor  # (1, L): the teacher's tokens of the chunk (its context left out)
    teacher_offsets: torch.Tensor  # (1, L, 2) byte spans of the chunk's teacher tokens


def teacher_segment(row: CrossRow) -> TeacherSegment:
    """The teacher's tokens of a row (context, then chunk), its logits wanted on the chunk's positions only.

    The context only conditions the teacher, so its positions need no output head: with a vocabulary of 262k
    (Gemma 3) the head over the context would cost more than the decoder (see teacher_cache.py). Nor is the
    distribution at the last context position, the one predicting the chunk's first token, ever read: the
    student reads the chunk from column 0 with nothing before it, so ULD's "bayesian" merge has no student
    prediction for the first aligned group and drops that group on both sides (TRL 1.16, ULDLoss). The chunk's
    logits alone therefore give the loss of the teacher's whole row (a test compares the two).
    """
    return TeacherSegment(tokens=row.teacher_ids, target_offset=row.target_offset)


def _uld_row(item: CrossRow, start: int, width: int) -> _ULDRow:
    """ULD's inputs for `item` placed at column `start` of a student row `width` wide, and for the teacher's
    logits of teacher_segment (the chunk's positions): the whole teacher side is the labelled answer."""
    student_labels = torch.full((1, width), IGNORE_INDEX, dtype=torch.long)
    student_offsets = torch.zeros((1, width, 2), dtype=torch.long)
    span = slice(start, start + len(item.student_ids))
    student_labels[0, span] = torch.tensor(item.student_ids)
    student_offsets[0, span] = torch.tensor(item.student_offsets, dtype=torch.long).reshape(-1, 2)
    teacher_ids = torch.tensor(item.teacher_ids[item.target_offset :]).unsqueeze(0)  # (1, L)
    teacher_offsets = torch.tensor(item.teacher_offsets, dtype=torch.long).reshape(1, -1, 2)  # (1, L, 2)
    return _ULDRow(student_labels, student_offsets, teacher_ids, teacher_offsets)


def cross_tokenizer_loss(
    settings: KDSettings, uld: Any, teacher: LocalTeacher, rows: Sequence[CrossRow], teacher_pad_id: int
) -> LossFunction:
    """α·CE + (1 − α)·ULD on unpacked rows, running the teacher live on each micro-batch."""
    alpha = settings.alpha
    segments = [teacher_segment(row) for row in rows]

    def loss(model: Any, batch: PackedBatch) -> LossParts:
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits  # (B,T,V)
        weights = (batch.labels != IGNORE_INDEX).sum(-1).tolist()  # labelled positions per row
        positions = sum(weights)
        if positions == 0:
            zero = logits.sum() * 0.0
            return LossParts(zero, zero.detach(), zero.detach(), 0)
        teacher_logits: dict[int, torch.Tensor] = {}
        if alpha < 1:
            # One packed teacher pass without gradients, the head on each chunk's positions only: (L, Vt) each.
            indices = [placement.segment for placement in batch.placements]
            teacher_logits = segment_target_logits(teacher.model, segments, indices, teacher_pad_id)
        input_ids = batch.input_ids.cpu()  # (B, T)
        width = input_ids.shape[1]
        total_ce = logits.new_zeros((), dtype=torch.float32)
        total_uld = logits.new_zeros((), dtype=torch.float32)
        for placement in batch.placements:  # one chunk per row (UnpackedPlan)
            row, weight = placement.row, weights[placement.row]
            if weight == 0:
                continue
            row_logits = logits[row : row + 1].float()  # (1, T, V); one row's fp32 copy at a time
            if alpha > 0:
                total_ce = total_ce + F.cross_entropy(row_logits[0], batch.labels[row], reduction="sum")
            if teacher_logits:
                inputs = _uld_row(rows[placement.segment], placement.start, width)
                # An fp32 copy beside the student's logits (a bf16 teacher's logits too; and an inference tensor
                # cannot be saved for backward).
                row_teacher = teacher_logits[placement.segment].to(logits.device, torch.float32, copy=True)
                row_teacher = row_teacher.unsqueeze(0)  # (1, L, Vt)
                uld_row = uld(
                    student_logits=row_logits,
                    teacher_logits=row_teacher,
                    student_labels=inputs.student_labels,
                    teacher_labels=inputs.teacher_ids,
                    student_input_ids=input_ids[row : row + 1],
                    teacher_input_ids=inputs.teacher_ids,
                    student_byte_offsets=inputs.student_offsets,
                    teacher_byte_offsets=inputs.teacher_offsets,
                )
                # ULD is a mean over the row's aligned groups: weigh rows by their tokens, like the CE.
                total_uld = total_uld + uld_row.sum() * weight
        ce_mean, uld_mean = total_ce / positions, total_uld / positions
        total = alpha * ce_mean + (1 - alpha) * uld_mean
        return LossParts(total=total, ce=ce_mean.detach(), divergence=uld_mean.detach(), positions=positions)

    return loss


# ---------------------------------------------------------------- recipe kd's entry point


def prepare(
    config: DistillConfig,
    corpus: CorpusSnapshot,
    student: LoadedModel,
    teacher: LocalTeacher,
    on_progress: ProgressCallback,
) -> tuple[DataPlan, LossFunction]:
    """Data and loss of recipe kd for a local teacher of another vocabulary (see the module docstring)."""
    uld = load_uld_loss(
        config.kd,
        student.tokenizer,
        teacher.tokenizer,
        student.device,
        teacher_name=teacher.label,
        student_name=config.student,
    )
    data = build_cross_data(
        corpus.train, corpus, student.tokenizer, teacher.tokenizer, config.kd, config.training.seq_len
    )
    if not data.rows:
        raise NoTrainingData("No training chunk has at least two tokens: the corpus is empty.")
    pad_token_id = student.tokenizer.pad_token_id if student.tokenizer.pad_token_id is not None else 0
    teacher_pad_id = teacher.tokenizer.pad_token_id if teacher.tokenizer.pad_token_id is not None else 0
    on_progress(
        Progress(
            "teacher",
            1,
            1,
            message="Teacher and student tokenizers differ: cross-tokenizer kd (TRL's ULD), teacher run live each step",
        )
    )
    plan = UnpackedPlan(data.segments, config.training, pad_token_id)
    return plan, cross_tokenizer_loss(config.kd, uld, teacher, data.rows, teacher_pad_id)
