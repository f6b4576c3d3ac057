"""Batched multi-LoRA in plain torch: many adapters, one forward pass (the idea of Punica's SGMV/BGMV kernels).

Every targeted `nn.Linear` of the base is replaced by a `MultiLoraLinear` that keeps a slot pool of stacked
adapter matrices, A: (S, r_max, in) and B: (S, r_max, out) (B stored transposed so a gather needs no permute),
with lower ranks padded by zeros. Slot 0 is always zero: a row without an expert points at it.

For a batch, one shared `LoraBatchState` says which slots each row uses (top-k: up to K per row) and with which
weights; every wrapper reads it, so the assignment never threads through transformers' forward signature:

    y = base(x) + Σ_k w_k · (x @ A[s_k]^T) @ (scale_k · B[s_k])^T

The K adapters of a row are concatenated along the rank axis, so any K costs two gathered `bmm`s per module,
and the cost depends on the batch, never on how many adapters the pool holds. Fast paths: no row uses an
adapter (base only), and every row uses the same single slot (two plain matmuls, as cheap as one PEFT adapter).
The gathered per-row matrices are kept while a batch's assignment stays the same (every decode step between
rows joining or leaving), so a decode step only pays the two `bmm`s. What remains is a floor no kernel avoids:
a step whose rows use D distinct experts reads D adapters. For SmolLM2 with r=16 on every linear layer one
expert is ~19.5 MB in fp32, so 16 distinct experts read ~312 MB per step next to the base's ~540 MB; on a
memory-bound CPU that, not the batching, is what separates a fully mixed batch from a single-expert one.

The LoRA scaling (alpha / r, or alpha / sqrt(r) with rsLoRA) is folded into B when an adapter is loaded: one
multiply at load time instead of one per module per step, and per-module alpha patterns come for free.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "ZERO_SLOT",
    "LoraAssignment",
    "LoraBatchState",
    "LoraPool",
    "LoraWeights",
    "MultiLoraLinear",
]

ZERO_SLOT = 0  # never holds an adapter: rows without an expert, and padding of rows with fewer than K experts


@dataclass(frozen=True)
class LoraWeights:
    """One module's adapter: A (r, in), B (out, r) exactly as PEFT stores them, and its scaling."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float


@dataclass(frozen=True)
class LoraAssignment:
    """The slot assignment of one batch, prepared once and read by every wrapped module.

    mode "none": no row uses an adapter; "single": every row uses at most one adapter and all use the same slot
    (`slot`, with `row_weights` (B, 1, 1) when the rows' weights differ from 1); "mixed": the general case with
    `indices` (B, K) and `rank_weights` (B, 1, K * r_max), each row's weights repeated over its rank block.
    """

    mode: str
    slot: int = ZERO_SLOT
    row_weights: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    rank_weights: torch.Tensor | None = None


NO_ADAPTERS = LoraAssignment("none")


class LoraBatchState:
    """The current batch's assignment, shared by all wrappers of one model; set it around each forward."""

    def __init__(self) -> None:
        self.assignment: LoraAssignment = NO_ADAPTERS

    def prepare(
        self, rows: Sequence[Sequence[tuple[int, float]]], rank: int, device: torch.device, dtype: torch.dtype
    ) -> LoraAssignment:
        """An assignment for `rows`: per batch row, (slot, weight) pairs (empty = base only).

        Building it once per batch (not per step) lets a decode loop reuse it while the rows stay the same.
        """
        used = {slot for row in rows for slot, weight in row if slot != ZERO_SLOT and weight != 0.0}
        if not used:
            return NO_ADAPTERS
        top_k = max(len(row) for row in rows)
        if len(used) == 1 and top_k == 1:
            (slot,) = used
            single_weights = [row[0][1] if row and row[0][0] == slot else 0.0 for row in rows]
            row_weights = None
            if any(weight != 1.0 for weight in single_weights):
                row_weights = torch.tensor(single_weights, device=device, dtype=dtype).view(-1, 1, 1)  # (B, 1, 1)
            return LoraAssignment("single", slot=slot, row_weights=row_weights)
        padded = [list(row) + [(ZERO_SLOT, 0.0)] * (top_k - len(row)) for row in rows]
        indices = torch.tensor([[slot for slot, _ in row] for row in padded], device=device)  # (B, K)
        weights = torch.tensor([[weight for _, weight in row] for row in padded], device=device, dtype=dtype)
        # (B, K) -> (B, 1, K * r): each expert's weight over its block of the concatenated rank axis.
        rank_weights = weights.repeat_interleave(rank, dim=1).unsqueeze(1)
        return LoraAssignment("mixed", indices=indices, weights=weights, rank_weights=rank_weights)

    @contextmanager
    def use(self, assignment: LoraAssignment) -> Iterator[None]:
        self.assignment = assignment
        try:
            yield
        finally:
            self.assignment = NO_ADAPTERS


class MultiLoraLinear(nn.Module):
    """A frozen base `nn.Linear` plus a pool of LoRA slots applied per row according to the shared state."""

    def __init__(self, base: nn.Linear, state: LoraBatchState) -> None:
        super().__init__()
        self.base = base
        self.state = state
        self.in_features = base.in_features
        self.out_features = base.out_features
        device, dtype = base.weight.device, base.weight.dtype
        # Plain attributes, not buffers: they are not part of the base's state dict.
        self.lora_a = torch.zeros(1, 0, self.in_features, device=device, dtype=dtype)  # (S, r_max, in)
        # (S, r_max, out), scale folded in
        self.lora_b = torch.zeros(1, 0, self.out_features, device=device, dtype=dtype)
        # (assignment, pool tensor it came from, gathered A, gathered B) of the batch that ran last
        self._gathered: tuple[LoraAssignment, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def resize(self, slots: int, rank: int) -> None:
        """Grow the pool to `slots` slots of rank `rank`, keeping what the old slots hold."""
        old_slots, old_rank, _ = self.lora_a.shape
        if slots == old_slots and rank == old_rank:
            return
        lora_a = self.lora_a.new_zeros(slots, rank, self.in_features)
        lora_b = self.lora_b.new_zeros(slots, rank, self.out_features)
        keep_slots, keep_rank = min(slots, old_slots), min(rank, old_rank)
        lora_a[:keep_slots, :keep_rank] = self.lora_a[:keep_slots, :keep_rank]
        lora_b[:keep_slots, :keep_rank] = self.lora_b[:keep_slots, :keep_rank]
        self.lora_a, self.lora_b = lora_a, lora_b

    def write_slot(self, slot: int, weights: LoraWeights | None) -> None:
        """Copy one adapter into `slot` (zeros when the adapter does not target this module)."""
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        if weights is None:
            return
        rank = weights.a.shape[0]
        self.lora_a[slot, :rank] = weights.a.to(self.lora_a)  # (r, in)
        self.lora_b[slot, :rank] = (weights.b.to(torch.float32) * weights.scale).t().to(self.lora_b)  # (r, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base(x)  # (B, T, out)
        assignment = self.state.assignment
        if assignment.mode == "none":
            return y
        if assignment.mode == "single":
            h = x @ self.lora_a[assignment.slot].t()  # (B, T, r)
            if assignment.row_weights is not None:
                h = h * assignment.row_weights  # (B, T, r) * (B, 1, 1)
            return y + h @ self.lora_b[assignment.slot]  # (B, T, r) @ (r, out)
        indices = assignment.indices
        assert indices is not None
        assert assignment.weights is not None
        assert assignment.rank_weights is not None
        batch, top_k = indices.shape
        rank = self.lora_a.shape[1]
        rank_weights = assignment.rank_weights
        if rank_weights.shape[-1] != top_k * rank:  # the pool's rank grew since the batch was prepared
            rank_weights = assignment.weights.repeat_interleave(rank, dim=1).unsqueeze(1)
        a, b = self._gather(assignment, indices)  # (B, K*r, in), (B, K*r, out)
        shape = x.shape
        x3 = x.reshape(batch, -1, self.in_features)  # (B, T, in)
        h = torch.bmm(x3, a.transpose(1, 2)) * rank_weights  # (B, T, K*r)
        return torch.baddbmm(y.reshape(batch, -1, self.out_features), h, b).view(*shape[:-1], self.out_features)

    def _gather(self, assignment: LoraAssignment, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's stacked adapters; kept while the same assignment runs (every decode step of a batch).

        Gathering costs about as much as the two bmm's it feeds, and a decode loop reuses one assignment for
        many steps, so this halves the mixed path's cost. `index_select` rather than `pool[indices]`: advanced
        indexing is several times slower on CPU. The slots an assignment uses are pinned, so their contents
        cannot change underneath; a reallocated pool (a new `lora_a` object) invalidates the copy.
        """
        cached = self._gathered
        if cached is not None and cached[0] is assignment and cached[1] is self.lora_a:
            return cached[2], cached[3]
        batch, _top_k = indices.shape
        flat = indices.reshape(-1)  # (B*K,)
        a = self.lora_a.index_select(0, flat).view(batch, -1, self.in_features)  # (B, K*r, in)
        b = self.lora_b.index_select(0, flat).view(batch, -1, self.out_features)  # (B, K*r, out)
        self._gathered = (assignment, self.lora_a, a, b)
        return a, b

    def clear_gathered(self) -> None:
        self._gathered = None


class LoraPool:
    """The slots of every wrapped module of one model: which are free, their rank, and growing them.

    Writers (loading an adapter) and readers (a forward pass) may be on different threads: the engine only
    writes free slots, and `lock` is held while the pool is reallocated.
    """

    def __init__(self, modules: dict[str, MultiLoraLinear], state: LoraBatchState, max_slots: int) -> None:
        self.modules = modules
        self.state = state
        self.max_slots = max_slots  # adapters, not counting the zero slot
        self.rank = 0
        self.capacity = 0  # slots allocated, not counting the zero slot
        self.free: list[int] = []
        self.lock = threading.Lock()

    @classmethod
    def wrap(cls, model: nn.Module, max_slots: int, layers_attr: str = "layers") -> LoraPool:
        """Replace every nn.Linear inside the decoder layers (not the output head) by a MultiLoraLinear."""
        state = LoraBatchState()
        modules: dict[str, MultiLoraLinear] = {}
        for name, module in list(model.named_modules()):
            if not isinstance(module, nn.Linear) or f".{layers_attr}." not in f".{name}":
                continue
            parent_name, _, child = name.rpartition(".")
            wrapper = MultiLoraLinear(module, state)
            setattr(model.get_submodule(parent_name), child, wrapper)
            modules[name] = wrapper
        return cls(modules, state, max_slots)

    def _grow(self, rank: int) -> None:
        needed_rank = max(self.rank, rank)
        needed = self.capacity if self.free else min(self.max_slots, max(4, self.capacity * 2))
        if needed_rank == self.rank and needed == self.capacity:
            return
        with self.lock:
            for module in self.modules.values():
                module.resize(needed + 1, needed_rank)
            self.free.extend(range(self.capacity + 1, needed + 1))
            self.capacity, self.rank = needed, needed_rank

    def has_free_slot(self) -> bool:
        return bool(self.free) or self.capacity < self.max_slots

    def slot_bytes(self) -> int:
        """Bytes one slot takes in every module at the pool's current rank."""
        return sum(m.lora_a[0].nbytes + m.lora_b[0].nbytes for m in self.modules.values())

    def memory_bytes(self) -> int:
        return sum(m.lora_a.nbytes + m.lora_b.nbytes for m in self.modules.values())

    def load(self, weights: dict[str, LoraWeights]) -> int:
        """Copy an adapter (module name -> weights) into a free slot and return the slot."""
        rank = max(w.a.shape[0] for w in weights.values())
        self._grow(rank)
        if not self.free:
            raise RuntimeError("no free LoRA slot: release one first")
        slot = self.free.pop(0)
        for name, module in self.modules.items():
            module.write_slot(slot, weights.get(name))
        return slot

    def release(self, slot: int) -> None:
        """Free `slot` (its contents are overwritten by the next load)."""
        if slot != ZERO_SLOT and slot not in self.free:
            self.free.append(slot)

    def clear_gathered(self) -> None:
        """Drop every module's gathered copy (a batch ended; it can be large: B x r x (in + out) per module)."""
        for module in self.modules.values():
            module.clear_gathered()

    def prepare(self, rows: Sequence[Sequence[tuple[int, float]]]) -> LoraAssignment:
        module = next(iter(self.modules.values()))
        return self.state.prepare(rows, self.rank, module.lora_a.device, module.lora_a.dtype)
