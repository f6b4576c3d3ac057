"""Batched generation with a KV cache: rows join, decode together one token per forward, and leave on their own.

`Batch` holds the running rows, their shared `DynamicCache` and a left-padded attention mask. A step is one
forward pass for every row, whatever expert each uses (the LoRA pool's assignment says which). New rows are
prefilled in one forward of their own and merged into the running cache (left-padded to the longer length), so a
request arriving mid-generation starts at the next step instead of waiting for the batch to drain. Finished and
cancelled rows are dropped from the cache at once, so they cost nothing afterwards.

Text is streamed per row by `TextStream`: it decodes all generated ids and emits the new suffix, so a character
spread over several tokens is never split, and holds back any tail that could be the start of a stop sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard

import torch
from transformers import DynamicCache
from transformers.cache_utils import CacheLayerMixin

from workers.moe.lora import NO_ADAPTERS, LoraAssignment, LoraPool

__all__ = ["Batch", "Row", "SamplingParams", "TextStream", "forward_last", "left_pad", "sample_tokens"]

REPLACEMENT_CHAR = "\ufffd"  # what a decoder returns for the incomplete start of a multi-byte character


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks: every row generates exactly max_tokens


class TextStream:
    """Incremental detokenisation of one row, with string-level stop sequences (the stop text is not returned)."""

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""  # everything decoded so far that forms whole characters
        self.emitted = 0  # characters of `text` already handed out
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; return the text that is now safe to emit (maybe empty)."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith(REPLACEMENT_CHAR):  # the rest of the character is in the next token(s)
            return ""
        self.text = text
        if self.stop:
            # A stop sequence may straddle what was emitted only by less than its length: search from there.
            start = max(0, self.emitted - max(len(s) for s in self.stop) + 1)
            hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.stopped = True
                self.text = text[: min(hits)]
                return self._emit(len(self.text))
            return self._emit(len(text) - self._held_back(text))
        return self._emit(len(text))

    def flush(self) -> str:
        """The text held back so far (at the end of the row)."""
        return self._emit(len(self.text))

    def _held_back(self, text: str) -> int:
        """The longest tail of `text` that is a proper prefix of a stop sequence."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _emit(self, end: int) -> str:
        end = max(end, self.emitted)
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta


@dataclass(eq=False)
class Row:
    """One request inside a batch. The callbacks connect it to whoever waits for its text."""

    prompt_ids: list[int]
    params: SamplingParams
    adapters: tuple[tuple[int, float], ...]  # (pool slot, weight) per expert; empty = the base alone
    text: TextStream
    on_delta: Callable[[str], None]
    # finish_reason ("stop", "length" or "cancelled"), prompt_tokens, completion_tokens, text; called once
    on_finish: Callable[[str, int, int, str], None]
    is_cancelled: Callable[[], bool] = lambda: False
    generated: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    position: int = 0  # position id of the last sampled token (the next step's input)
    finish_reason: str | None = None

    def __post_init__(self) -> None:
        if self.params.temperature > 0:
            self.generator = torch.Generator()
            if self.params.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(self.params.seed)


def sample_tokens(logits: torch.Tensor, rows: Sequence[Row]) -> list[int]:
    """One next token per row from `logits` (B, V): greedy, or temperature + top-p with the row's generator."""
    tokens = logits.argmax(dim=-1).tolist()  # (B,) greedy for every row; sampling rows overwrite theirs
    for i, row in enumerate(rows):
        params = row.params
        if params.temperature <= 0:
            continue
        probs = torch.softmax(logits[i].float().cpu() / params.temperature, dim=-1)  # (V,)
        if params.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)  # (V,), (V,)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            outside = sorted_probs.cumsum(0) - sorted_probs >= params.top_p
            sorted_probs[outside] = 0.0
            choice = torch.multinomial(sorted_probs, 1, generator=row.generator)
            tokens[i] = int(order[choice])
        else:
            tokens[i] = int(torch.multinomial(probs, 1, generator=row.generator))
    return tokens


class Batch:
    """The rows being generated and their shared KV cache; `add` and `step` run on one thread."""

    def __init__(self, model: Any, pool: LoraPool | None, eos_ids: set[int], pad_id: int, max_positions: int) -> None:
        self.model = model
        self.pool = pool
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.max_positions = max_positions
        self.device = next(model.parameters()).device
        self.rows: list[Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (B, L): 1 where the cache holds a real token, 0 for left padding
        self.assignment: LoraAssignment = NO_ADAPTERS
        self.forward_passes = 0

    def __len__(self) -> int:
        return len(self.rows)

    # ------------------------------------------------------------ the two kinds of forward pass

    def add(self, new_rows: Sequence[Row]) -> None:
        """Prefill `new_rows` (one forward), emit their first tokens, and merge them into the running batch."""
        new_rows = [row for row in new_rows if not self._drop_if_cancelled(row)]
        if not new_rows:
            return
        for row in new_rows:
            row.position = len(row.prompt_ids)
        input_ids, mask, positions = left_pad([row.prompt_ids for row in new_rows], self.pad_id, self.device)
        cache = DynamicCache()
        logits = self._forward(input_ids, mask, positions, cache, self._assignment(new_rows))  # (b, V)
        keep = self._advance(new_rows, logits)
        if not keep:
            return
        index = torch.tensor(keep, device=self.device)
        cache.batch_select_indices(index)
        self._merge([new_rows[i] for i in keep], cache, mask[index])

    def step(self) -> None:
        """Decode one token for every running row (one forward), then drop the rows that finished."""
        cancelled = [i for i, row in enumerate(self.rows) if self._drop_if_cancelled(row)]
        if cancelled:
            self._keep([i for i in range(len(self.rows)) if i not in cancelled])
        if not self.rows:
            return
        assert self.cache is not None
        assert self.mask is not None
        input_ids = torch.tensor([[row.generated[-1]] for row in self.rows], device=self.device)  # (B, 1)
        positions = torch.tensor([[row.position] for row in self.rows], device=self.device)  # (B, 1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)  # (B, L + 1)
        logits = self._forward(input_ids, self.mask, positions, self.cache, self.assignment)  # (B, V)
        for row in self.rows:
            row.position += 1  # the position of the token about to be sampled, which the next step feeds
        keep = self._advance(self.rows, logits)
        if len(keep) < len(self.rows):
            self._keep(keep)

    def fail(self, error: BaseException) -> list[Row]:
        """Drop every row (after a failed forward); the caller tells their owners."""
        rows, self.rows, self.cache, self.mask = self.rows, [], None, None
        self.assignment = NO_ADAPTERS
        if self.pool is not None:
            self.pool.clear_gathered()
        return rows

    # ------------------------------------------------------------ helpers

    def _forward(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        assignment: LoraAssignment,
    ) -> torch.Tensor:
        self.forward_passes += 1
        return forward_last(self.model, self.pool, assignment, input_ids, mask, positions, cache)

    def _assignment(self, rows: Sequence[Row]) -> LoraAssignment:
        return self.pool.prepare([row.adapters for row in rows]) if self.pool is not None else NO_ADAPTERS

    def _drop_if_cancelled(self, row: Row) -> bool:
        if row.is_cancelled():
            row.finish_reason = "cancelled"
            row.on_finish("cancelled", len(row.prompt_ids), len(row.generated), row.text.text[: row.text.emitted])
            return True
        return False

    def _advance(self, rows: Sequence[Row], logits: torch.Tensor) -> list[int]:
        """Append each row's next token, stream its text, finish it when due; the indices of rows that go on."""
        tokens = sample_tokens(logits, rows)
        keep = []
        for i, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            if token in self.eos_ids and not row.params.ignore_eos:
                self._finish(row, "stop")
                continue
            row.generated.append(token)
            delta = row.text.push(token)
            if delta:
                row.on_delta(delta)
            if row.text.stopped:
                self._finish(row, "stop")
            elif len(row.generated) >= row.params.max_tokens or row.position >= self.max_positions:
                self._finish(row, "length")
            else:
                keep.append(i)
        return keep

    def _finish(self, row: Row, reason: str) -> None:
        rest = row.text.flush()
        if rest:
            row.on_delta(rest)
        row.finish_reason = reason
        row.on_finish(reason, len(row.prompt_ids), len(row.generated), row.text.text[: row.text.emitted])

    def _keep(self, keep: list[int]) -> None:
        """Keep only the rows at `keep` (in the cache too), and cut padding columns no row needs any more."""
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache, self.mask, self.assignment = None, None, NO_ADAPTERS
            if self.pool is not None:
                self.pool.clear_gathered()
            return
        assert self.cache is not None
        assert self.mask is not None
        index = torch.tensor(keep, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]  # (B', L)
        first = int(self.mask.any(dim=0).nonzero()[0])  # leading columns that are padding in every row
        if first > 0:
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                assert _filled_attention(layer)
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        self.assignment = self._assignment(self.rows)

    def _merge(self, rows: list[Row], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append prefilled rows to the running batch, left-padding the shorter side's cache and mask."""
        if self.cache is None or self.mask is None:
            self.rows, self.cache, self.mask = rows, cache, mask
        else:
            length = max(self.mask.shape[1], mask.shape[1])
            for old, new in zip(self.cache.layers, cache.layers, strict=True):
                assert _filled_attention(old)
                assert _filled_attention(new)
                old.keys = torch.cat([_left_pad(old.keys, length), _left_pad(new.keys, length)])  # (B+b, H, L, D)
                old.values = torch.cat([_left_pad(old.values, length), _left_pad(new.values, length)])
            self.mask = torch.cat([_left_pad(self.mask, length, dim=1), _left_pad(mask, length, dim=1)])
            self.rows = self.rows + rows
        self.assignment = self._assignment(self.rows)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """input_ids, attention mask and position ids (each (B, L)) of `prompts` padded on the left to one length."""
    length = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)  # (B, L)
    for i, prompt in enumerate(prompts):
        input_ids[i, length - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[i, length - len(prompt) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, L): each row counts from its first real token
    return input_ids.to(device), mask.to(device), positions.to(device)


def forward_last(
    model: Any,
    pool: LoraPool | None,
    assignment: LoraAssignment,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    cache: DynamicCache | None,
) -> torch.Tensor:
    """One forward pass with `assignment`'s adapters; the logits of the last position, (B, V)."""
    with torch.inference_mode():
        if pool is None:
            out = model(
                input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                use_cache=cache is not None, logits_to_keep=1,
            )  # fmt: skip
        else:
            # The pool's lock keeps a concurrent adapter load from reallocating slots mid-forward, and keeps
            # two threads' forwards (the scheduler's, a test's `Engine.logits`) from swapping assignments.
            with pool.lock, pool.state.use(assignment):
                out = model(
                    input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                    use_cache=cache is not None, logits_to_keep=1,
                )  # fmt: skip
    logits: torch.Tensor = out.logits  # (B, 1, V)
    return logits[:, -1, :]  # (B, V)


class _FilledAttentionLayer(Protocol):
    """A cache layer after a prefill: the keys and values of every position so far, (B, H, L, D) each."""

    keys: torch.Tensor
    values: torch.Tensor


def _filled_attention(layer: object) -> TypeGuard[_FilledAttentionLayer]:
    """Whether `layer` holds keys and values: every layer of the cache a prefill filled does (a hybrid model's
    linear-attention layers would hold a recurrent state instead, which a Batch cannot pad or trim)."""
    return isinstance(layer, CacheLayerMixin) and layer.keys is not None and layer.values is not None


def _left_pad(tensor: torch.Tensor, length: int, dim: int = 2) -> torch.Tensor:
    """Zeros before `tensor` along `dim` up to `length` (cache: (B, H, L, D) on dim 2; mask: (B, L) on dim 1)."""
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
