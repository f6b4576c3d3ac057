"""Sequence packing without padding waste and without attention across document boundaries.

Segments (token lists, one per chunk) are laid end to end into rows of `seq_len` tokens. Each segment's
`position_ids` restart at 0; given `position_ids` and no attention mask, transformers builds a block-diagonal
causal mask from the restarts (masking_utils.find_packed_sequence_indices), so a token never attends to
another segment. Labels never cross a boundary: the last token of a segment predicts nothing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workers.ml.distill.losses import IGNORE_INDEX


@dataclass(frozen=True)
class Placement:
    """Where a segment landed: row `row` of the micro-batch, columns [start, start + length)."""

    segment: int
    row: int
    start: int
    length: int


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T): labels[b, t] is the token at t + 1 within the same segment, else -100
    placements: list[Placement]
    # The label count taken on the host when the batch moved to a device: a loss that needs it on a GPU then
    # does not wait for the device to sum the mask.
    host_label_count: int | None = None

    @property
    def label_count(self) -> int:
        """Positions with a label (a recipe's collate may mask more of them before the batch moves)."""
        if self.host_label_count is not None:
            return self.host_label_count
        return int((self.labels != IGNORE_INDEX).sum())

    def to(self, device: torch.device) -> PackedBatch:
        # non_blocking: a host-to-GPU copy from pinned memory overlaps the kernels already queued.
        pinned = device.type == "cuda" and torch.cuda.is_available()
        return PackedBatch(
            input_ids=self._move(self.input_ids, device, pinned),
            position_ids=self._move(self.position_ids, device, pinned),
            labels=self._move(self.labels, device, pinned),
            placements=self.placements,
            host_label_count=self.label_count,
        )

    @staticmethod
    def _move(tensor: torch.Tensor, device: torch.device, pinned: bool) -> torch.Tensor:
        if pinned and tensor.device.type == "cpu":
            return tensor.pin_memory().to(device, non_blocking=True)
        return tensor.to(device)


def pack_rows(lengths: Sequence[int], order: Sequence[int], seq_len: int) -> list[list[int]]:
    """Group segment indices (taken in `order`) into rows holding at most `seq_len` tokens.

    First fit over the rows still open, so a short segment fills the gap a long one left; segments longer than
    seq_len must have been truncated by the caller.
    """
    rows: list[list[int]] = []
    free: list[int] = []
    for index in order:
        length = lengths[index]
        if length > seq_len:
            raise ValueError(f"segment {index} has {length} tokens, more than seq_len={seq_len}")
        for row, space in enumerate(free):
            if length <= space:
                rows[row].append(index)
                free[row] -= length
                break
        else:
            rows.append([index])
            free.append(seq_len - length)
    return rows


def epoch_rows(lengths: Sequence[int], seq_len: int, seed: int, epoch: int) -> list[list[int]]:
    """The packed rows of one epoch: a seeded shuffle of the segments, then first-fit packing."""
    order = list(range(len(lengths)))
    random.Random(f"{seed}:{epoch}").shuffle(order)  # noqa: S311 - data order, not security
    return pack_rows(lengths, order, seq_len)


def collate(
    segments: Sequence[Sequence[int]], rows: Sequence[Sequence[int]], seq_len: int, pad_token_id: int
) -> PackedBatch:
    """Build one micro-batch from rows of segment indices (the row's tail is padding, masked out of the loss)."""
    batch = len(rows)
    input_ids = torch.full((batch, seq_len), pad_token_id, dtype=torch.long)
    # Padding gets positions 0.. of its own, so it forms a segment of its own that no real token attends to.
    position_ids = torch.zeros((batch, seq_len), dtype=torch.long)
    labels = torch.full((batch, seq_len), IGNORE_INDEX, dtype=torch.long)
    placements = []
    for row, segment_indices in enumerate(rows):
        cursor = 0
        for index in segment_indices:
            tokens = torch.as_tensor(segments[index], dtype=torch.long)
            length = len(tokens)
            input_ids[row, cursor : cursor + length] = tokens
            position_ids[row, cursor : cursor + length] = torch.arange(length)
            labels[row, cursor : cursor + length - 1] = tokens[1:]
            placements.append(Placement(index, row, cursor, length))
            cursor += length
        position_ids[row, cursor:] = torch.arange(seq_len - cursor)
    return PackedBatch(input_ids, position_ids, labels, placements)
