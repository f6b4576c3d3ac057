"""The teacher's next-token distributions for every training segment, computed once and kept on disk.

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


@dataclass(frozen=True)
class TeacherSegment:
    """What the teacher reads for one training segment: context tokens, then the segment's own tokens."""

    tokens: tuple[int, ...]
    target_offset: int  # index in `tokens` where the segment (the student's text) begins

    @property
    def target_length(self) -> int:
        return len(self.tokens) - self.target_offset


def teacher_forward(
    model: Any, segments: Sequence[TeacherSegment], indices: Sequence[int], max_tokens: int, pad_token_id: int
) -> list[tuple[int, torch.Tensor]]:
    """Teacher logits for the target part of each segment in `indices`: [(segment index, (L, V) logits)].

    Segments are packed into rows (no attention across them) of up to `max_tokens` tokens.
    """
    lengths = [len(segment.tokens) for segment in segments]
    seq_len = max(max_tokens, max(lengths[i] for i in indices))
    rows = pack_rows(lengths, indices, seq_len)
    batch = collate([segment.tokens for segment in segments], rows, seq_len, pad_token_id)
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(
            input_ids=batch.input_ids.to(device), position_ids=batch.position_ids.to(device), use_cache=False
        ).logits  # (R, T, V)
    out = []
    for placement in batch.placements:
        segment = segments[placement.segment]
        begin = placement.start + segment.target_offset
        out.append((placement.segment, logits[placement.row, begin : begin + segment.target_length]))
    return out


def live_teacher_logits(
    model: Any, segments: Sequence[TeacherSegment], batch: PackedBatch, max_tokens: int, pad_token_id: int
) -> torch.Tensor:
    """Teacher logits laid out like the student's packed batch (B, T, V), for training without a cache."""
    indices = [placement.segment for placement in batch.placements]
    per_segment = dict(teacher_forward(model, segments, indices, max_tokens, pad_token_id))
    some = next(iter(per_segment.values()))
    rows, cols = batch.input_ids.shape
    aligned = torch.zeros((rows, cols, some.shape[-1]), dtype=some.dtype, device=some.device)  # (B, T, V)
    for placement in batch.placements:
        aligned[placement.row, placement.start : placement.start + placement.length] = per_segment[placement.segment]
    return aligned


class TeacherCache:
    """Top-k teacher targets per segment, built once, read by every epoch."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        index = json.loads((directory / "index.json").read_text())
        self.fingerprint: dict[str, Any] = index["fingerprint"]
        self._where: dict[int, tuple[int, int, int]] = {}
        self._shards: list[dict[str, torch.Tensor]] = []
        for shard_number, shard in enumerate(index["shards"]):
            self._shards.append(load_file(str(directory / shard["file"])))
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
        """Targets laid out like the packed batch: values (B, T, k) fp32, ids (B, T, k) int64, tail (B, T)."""
        rows, cols = batch.input_ids.shape
        k = int(self.fingerprint["top_k"])
        values = torch.zeros((rows, cols, k), dtype=torch.float32)
        ids = torch.zeros((rows, cols, k), dtype=torch.long)
        tail = torch.full((rows, cols), float("-inf"), dtype=torch.float32)
        for placement in batch.placements:
            seg_values, seg_ids, seg_tail = self.segment(placement.segment)
            span = slice(placement.start, placement.start + placement.length)
            values[placement.row, span] = seg_values.float()
            ids[placement.row, span] = seg_ids.long()
            tail[placement.row, span] = seg_tail
        return values, ids, tail

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
    ) -> TeacherCache | None:
        """Reuse a matching cache or (re)build it, resuming from its finished shards.

        Returns None when `should_stop` interrupted the build (finished shards stay for the next attempt).
        `on_progress(segments done, total, tokens in the last batch)` is called after each teacher batch.
        """
        fingerprint = {**fingerprint, "top_k": top_k, "temperature": temperature, "segments": len(segments)}
        directory.mkdir(parents=True, exist_ok=True)
        index_path = directory / "index.json"
        index = json.loads(index_path.read_text()) if index_path.exists() else None
        if index is None or index["fingerprint"] != fingerprint:
            for stale in directory.glob("shard-*.safetensors"):
                stale.unlink()
            index = {"fingerprint": fingerprint, "shards": [], "complete": False}
            _write_index(index_path, index)
        if index["complete"]:
            return cls(directory)

        done = {segment for shard in index["shards"] for segment, _, _ in shard["segments"]}
        todo = [i for i in range(len(segments)) if i not in done]
        pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        pending_tokens = 0
        position = 0
        while position < len(todo):
            if should_stop():
                return None
            # Take segments until the teacher batch holds about batch_tokens tokens.
            batch_indices, batch_size = [], 0
            while position < len(todo) and (
                not batch_indices or batch_size + len(segments[todo[position]].tokens) <= batch_tokens
            ):
                batch_indices.append(todo[position])
                batch_size += len(segments[todo[position]].tokens)
                position += 1
            for segment_index, logits in teacher_forward(model, segments, batch_indices, batch_tokens, pad_token_id):
                values, ids, tail = teacher_topk(logits, top_k, temperature)  # (L, k), (L, k), (L,)
                pending.append((segment_index, values.half().cpu(), ids.int().cpu(), tail.float().cpu()))
                pending_tokens += len(values)
            done_count = len(done) + position
            on_progress(done_count, len(segments), batch_size)
            if pending_tokens >= SHARD_TOKENS:
                _write_shard(directory, index, pending)
                pending, pending_tokens = [], 0
        if pending:
            _write_shard(directory, index, pending)
        index["complete"] = True
        _write_index(index_path, index)
        return cls(directory)


def _write_shard(
    directory: Path, index: dict[str, Any], pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]
) -> None:
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
