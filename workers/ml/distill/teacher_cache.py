"""The teacher's next-token distributions for the training segments a run reads, computed once and kept on disk.

Later epochs, retries after a crash and resumed runs read the cache instead of running the teacher again.
Per segment and position the cache keeps the top-k log-probs (fp16), their token ids (int32) and the log of
the remaining mass (fp32; see losses.py for how the tail enters the loss). Row t of a segment is the
teacher's distribution for the segment's token t + 1, computed with the teacher seeing its context (the
preceding chunks) before the segment.

Layout: `index.json` (fingerprint + finished shards) and `shard-NNNNN.safetensors`. A shard is written only
when complete (temp file + rename), so a crash loses at most the shard in progress, and a cache whose
fingerprint differs (other teacher, k, temperature, context or data) is rebuilt rather than misused.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from workers.ml.distill.losses import teacher_topk
from workers.ml.distill.packing import PackedBatch, collate, pack_rows

SHARD_TOKENS = 200_000
# (segment index, top-k log-probs (L, k) fp16, token ids (L, k) int32, log tail mass (L,) fp32)
Targets = tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]
# Computes the targets of the given segment indices.
TargetSource = Callable[[Sequence[int]], list[Targets]]


@dataclass(frozen=True)
class TeacherSegment:
    """What the teacher reads for one training segment: context tokens, then the segment's own tokens."""

    tokens: tuple[int, ...]
    target_offset: int  # index in `tokens` where the segment (the student's text) begins

    @property
    def target_length(self) -> int:
        return len(self.tokens) - self.target_offset


# Model types whose logits are exactly lm_head(last hidden state) (checked in transformers' modeling files; Gemma 3
# when it has no final soft-capping): for them the teacher pass runs the output head on the positions it keeps.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3_text"})


def _pack(segments: Sequence[TeacherSegment], indices: Sequence[int], pad_token_id: int) -> PackedBatch:
    """The segments `indices` packed into teacher rows (no attention across segments).

    Rows are as long as the longest segment: short segments share a row, long ones get a row each, so
    same-length segments need no block-diagonal mask and keep the fast causal attention path.
    """
    lengths = [len(segment.tokens) for segment in segments]
    seq_len = max(lengths[i] for i in indices)
    return collate(
        [segment.tokens for segment in segments], pack_rows(lengths, indices, seq_len), seq_len, pad_token_id
    )


def _plain_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, output head) of a model whose logits are the head applied to the decoder's output, else None."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    if getattr(config, "final_logit_softcapping", None) is not None:
        return None
    head, decoder = model.get_output_embeddings(), model.get_decoder()
    return None if head is None or decoder is model else (decoder, head)


def _target_logits(model: Any, batch: PackedBatch, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The teacher's logits at the packed positions (rows[i], cols[i]): (N, V).

    The output head and everything after it cost a pass over the vocabulary per position. A segment's context
    positions (half the teacher's tokens with the default context of one chunk) and row padding need none, so
    where the head is plain it runs on the kept positions only.
    """
    device = next(model.parameters()).device
    inputs = {"input_ids": batch.input_ids.to(device), "position_ids": batch.position_ids.to(device)}
    plain = _plain_head(model)
    with torch.inference_mode():
        if plain is None:
            logits: torch.Tensor = model(**inputs, use_cache=False).logits  # (R, T, V)
            return logits[rows.to(logits.device), cols.to(logits.device)]  # (N, V)
        decoder, head = plain
        hidden: torch.Tensor = decoder(**inputs, use_cache=False).last_hidden_state  # (R, T, H)
        head_logits: torch.Tensor = head(hidden[rows.to(hidden.device), cols.to(hidden.device)])  # (N, V)
        return head_logits


def _target_span(segment: TeacherSegment, start: int) -> slice:
    """Columns of a packed teacher row holding the segment's own tokens (after its context)."""
    return slice(start + segment.target_offset, start + len(segment.tokens))


def teacher_targets(
    model: Any,
    segments: Sequence[TeacherSegment],
    indices: Sequence[int],
    top_k: int,
    temperature: float,
    pad_token_id: int,
) -> list[Targets]:
    """Top-k targets of each segment in `indices`: [(segment, values (L, k) fp16, ids (L, k) int32, tail (L,))].

    One output head, top-k and copy to the CPU over the whole teacher batch's kept positions, instead of one per
    segment: on a GPU the per-segment kernels and synchronisations cost more than the teacher's forward.
    """
    return launch_teacher_targets(model, segments, indices, top_k, temperature, pad_token_id).result()


class LaunchedTargets:
    """A teacher batch's targets on their way to the CPU: `result()` waits for the copy and splits them.

    On a GPU the copies into pinned memory are queued behind the batch's kernels and return at once, so the
    host can pack and launch the next batch while this one runs (see TeacherCache.open_or_build).
    """

    def __init__(
        self, order: list[int], lengths: list[int], tensors: tuple[torch.Tensor, ...], done: torch.cuda.Event | None
    ) -> None:
        self._order, self._lengths, self._tensors, self._done = order, lengths, tensors, done

    @property
    def on_device(self) -> bool:
        """Whether a GPU may still be working on it (a CPU's batch is done when launched)."""
        return self._done is not None

    def result(self) -> list[Targets]:
        if self._done is not None:
            self._done.synchronize()
        values, ids, tail = (tensor.split(self._lengths) for tensor in self._tensors)
        return list(zip(self._order, values, ids, tail, strict=True))


def launch_teacher_targets(
    model: Any,
    segments: Sequence[TeacherSegment],
    indices: Sequence[int],
    top_k: int,
    temperature: float,
    pad_token_id: int,
) -> LaunchedTargets:
    """teacher_targets without waiting for the GPU: the batch's work is queued, its result comes later."""
    order, lengths, logits = _packed_target_logits(model, segments, indices, pad_token_id)  # logits (N, V)
    with torch.inference_mode():
        values, ids, tail = teacher_topk(logits, top_k, temperature)  # (N, k), (N, k), (N,)
        del logits  # its memory goes back to the allocator for the next batch (same stream: no race)
        # non_blocking copies from a GPU land in pinned host memory; they are valid once `done` has passed.
        on_gpu = values.device.type == "cuda"
        host = tuple(tensor.to("cpu", non_blocking=on_gpu) for tensor in (values.half(), ids.int(), tail.float()))
        done = torch.cuda.Event() if on_gpu else None
        if done is not None:
            done.record()
    return LaunchedTargets(order, lengths, host, done)


def _packed_target_logits(
    model: Any, segments: Sequence[TeacherSegment], indices: Sequence[int], pad_token_id: int
) -> tuple[list[int], list[int], torch.Tensor]:
    """(segment indices in packed order, their target lengths, the logits of all their targets (N, V)):
    one packed forward pass (see _pack), the output head on the target positions only (_target_logits)."""
    batch = _pack(segments, indices, pad_token_id)
    spans = [_target_span(segments[placement.segment], placement.start) for placement in batch.placements]
    lengths = [span.stop - span.start for span in spans]
    rows = torch.cat([torch.full((length,), p.row) for length, p in zip(lengths, batch.placements, strict=True)])
    cols = torch.cat([torch.arange(span.start, span.stop) for span in spans])  # rows, cols: (N,)
    order = [placement.segment for placement in batch.placements]
    return order, lengths, _target_logits(model, batch, rows, cols)


def segment_target_logits(
    model: Any, segments: Sequence[TeacherSegment], indices: Sequence[int], pad_token_id: int
) -> dict[int, torch.Tensor]:
    """Per segment of `indices`, the teacher's logits over its target span (from target_offset on): (L, V).

    One packed forward pass (see _pack) under inference mode; the output head runs on the target positions only
    where it is plain (_target_logits), so a long context — kd's preceding chunk, qa's chunk and question —
    never becomes full-vocabulary logits. The results are inference tensors: copy them into a normal tensor
    before autograd saves them.
    """
    order, lengths, logits = _packed_target_logits(model, segments, indices, pad_token_id)  # logits (N, V)
    return dict(zip(order, logits.split(lengths), strict=True))  # (L, V) each


def live_teacher_logits(
    model: Any, segments: Sequence[TeacherSegment], batch: PackedBatch, pad_token_id: int
) -> torch.Tensor:
    """Teacher logits laid out like the student's packed batch (B, T, V), for training without a cache."""
    per_segment = segment_target_logits(model, segments, [p.segment for p in batch.placements], pad_token_id)
    some = next(iter(per_segment.values()))
    rows, cols = batch.input_ids.shape
    aligned = torch.zeros((rows, cols, some.shape[-1]), dtype=some.dtype, device=some.device)  # (B, T, V)
    for placement in batch.placements:
        aligned[placement.row, placement.start : placement.start + placement.length] = per_segment[placement.segment]
    return aligned


class TeacherCache:
    """Top-k teacher targets per segment, built once, read by every epoch."""

    def __init__(self, directory: Path, device: torch.device | str = "cpu", *, built_targets: int = 0) -> None:
        self.directory = directory
        self.device = torch.device(device)
        # Target positions the teacher computed in the open_or_build call that returned this cache (0: all were
        # on disk already): with the teacher stage's seconds, the teacher's speed (the web's estimates).
        self.built_targets = built_targets
        index = json.loads((directory / "index.json").read_text())
        self.fingerprint: dict[str, Any] = index["fingerprint"]
        self._where: dict[int, tuple[int, int, int]] = {}
        self._shards: list[dict[str, torch.Tensor]] = []
        for shard_number, shard in enumerate(index["shards"]):
            # On a GPU the whole cache lives in device memory (~400 MB per million tokens at k = 64), so a
            # training step gathers its targets without host round trips.
            self._shards.append(load_file(str(directory / shard["file"]), device=str(self.device)))
            for segment, start, length in shard["segments"]:
                self._where[segment] = (shard_number, start, length)

    def __len__(self) -> int:
        return len(self._where)

    def segment(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values (L, k) fp16, ids (L, k) int32, tail (L,) fp32) of one segment."""
        shard, start, length = self._where[index]
        tensors = self._shards[shard]
        rows = slice(start, start + length)
        return tensors["values"][rows], tensors["ids"][rows], tensors["tail"][rows]

    def gather(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Targets laid out like the packed batch: values (B, T, k) fp32, ids (B, T, k) int64, tail (B, T).

        On the cache's device. Positions without a segment (row padding) get an empty target, masked anyway.
        """
        rows, cols = batch.input_ids.shape
        k = int(self.fingerprint["top_k"])
        values = torch.zeros((rows, cols, k), dtype=torch.float16, device=self.device)
        ids = torch.zeros((rows, cols, k), dtype=torch.int32, device=self.device)
        tail = torch.full((rows, cols), float("-inf"), dtype=torch.float32, device=self.device)
        for placement in batch.placements:
            seg_values, seg_ids, seg_tail = self.segment(placement.segment)
            span = slice(placement.start, placement.start + placement.length)
            values[placement.row, span] = seg_values
            ids[placement.row, span] = seg_ids
            tail[placement.row, span] = seg_tail
        return values.float(), ids.long(), tail

    @classmethod
    def open_or_build(
        cls,
        directory: Path,
        fingerprint: dict[str, Any],
        model: Any,
        segments: Sequence[TeacherSegment],
        *,
        top_k: int,
        temperature: float,
        batch_tokens: int,
        pad_token_id: int,
        on_progress: Callable[[int, int, int], None] = lambda done, total, tokens: None,
        should_stop: Callable[[], bool] = lambda: False,
        source: TargetSource | None = None,
        needed: Sequence[int] | None = None,
    ) -> TeacherCache | None:
        """Reuse a matching cache or (re)build it, resuming from its finished shards.

        The targets come from the local teacher `model` or, when given, from `source` (e.g. an endpoint's
        prompt logprobs; `model` is then None and the cache stays on the CPU).
        `needed`: the segment indices training will read (default: all). A token budget under one epoch trains
        on a part of the corpus, and the teacher runs over that part only; a later call that needs more (a
        retry with a larger budget) adds the missing segments to the same cache.
        Returns None when `should_stop` interrupted the build (finished shards stay for the next attempt).
        `on_progress(segments done, segments needed, tokens in the last batch)` is called after each batch.
        """
        fingerprint = {**fingerprint, "top_k": top_k, "temperature": temperature, "segments": len(segments)}
        directory.mkdir(parents=True, exist_ok=True)
        index_path = directory / "index.json"
        index = json.loads(index_path.read_text()) if index_path.exists() else None
        device = next(model.parameters()).device if source is None else torch.device("cpu")
        launch: Callable[[Sequence[int]], LaunchedTargets | list[Targets]]
        if source is None:
            launch = functools.partial(
                launch_teacher_targets, model, segments, top_k=top_k, temperature=temperature,
                pad_token_id=pad_token_id,
            )  # fmt: skip
        else:
            launch = source

        if index is None or index["fingerprint"] != fingerprint:
            for stale in directory.glob("shard-*.safetensors"):
                stale.unlink()
            index = {"fingerprint": fingerprint, "shards": []}
            _write_index(index_path, index)
        wanted = sorted(set(range(len(segments)) if needed is None else needed))
        done = {segment for shard in index["shards"] for segment, _, _ in shard["segments"]}
        todo = [i for i in wanted if i not in done]
        if not todo:
            return cls(directory, device)
        already = len(wanted) - len(todo)
        pending: list[Targets] = []
        pending_tokens = built = 0
        position = 0
        # On a GPU one batch stays in flight: batch i + 1 is packed and launched before batch i's targets are
        # waited for and stored, so the GPU does not idle while the host handles them (measured on an H200:
        # docs/benchmarks.md). A CPU's batch and an endpoint's answer are complete when they return: stored and
        # reported at once.
        in_flight: collections.deque[tuple[LaunchedTargets | list[Targets], int, int]] = collections.deque()

        def store(launched: LaunchedTargets | list[Targets], through: int, batch_size: int) -> None:
            nonlocal pending, pending_tokens, built
            targets = launched.result() if isinstance(launched, LaunchedTargets) else launched
            pending.extend(targets)
            positions = sum(len(values) for _, values, _, _ in targets)
            pending_tokens += positions
            built += positions
            on_progress(already + through, len(wanted), batch_size)
            if pending_tokens >= SHARD_TOKENS:
                _write_shard(directory, index, pending)
                pending, pending_tokens = [], 0

        while position < len(todo):
            if should_stop():
                return None
            # Take segments until the teacher batch holds about batch_tokens tokens.
            batch_indices: list[int] = []
            batch_size = 0
            while position < len(todo) and (
                not batch_indices or batch_size + len(segments[todo[position]].tokens) <= batch_tokens
            ):
                batch_indices.append(todo[position])
                batch_size += len(segments[todo[position]].tokens)
                position += 1
            in_flight.append((launch(batch_indices), position, batch_size))
            while len(in_flight) > 1 or (in_flight and not _on_device(in_flight[0][0])):
                store(*in_flight.popleft())
        while in_flight:
            store(*in_flight.popleft())
        if pending:
            _write_shard(directory, index, pending)
        return cls(directory, device, built_targets=built)


def _on_device(launched: LaunchedTargets | list[Targets]) -> bool:
    return isinstance(launched, LaunchedTargets) and launched.on_device


def _write_shard(directory: Path, index: dict[str, Any], pending: list[Targets]) -> None:
    name = f"shard-{len(index['shards']):05d}.safetensors"
    rows, start = [], 0
    for segment, values, _, _ in pending:
        rows.append([segment, start, len(values)])
        start += len(values)
    tensors = {
        "values": torch.cat([item[1] for item in pending]),
        "ids": torch.cat([item[2] for item in pending]),
        "tail": torch.cat([item[3] for item in pending]),
    }
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, directory / name)
    index["shards"].append({"file": name, "segments": rows, "written_at": time.time()})
    _write_index(directory / "index.json", index)


def _write_index(path: Path, index: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(index))
    os.replace(tmp, path)
