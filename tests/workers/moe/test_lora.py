"""The batched multi-LoRA layer: a mixed batch gives what PEFT gives each request alone."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from tests.workers.moe.conftest import PeftReference
from workers.moe.adapters import ExpertRef
from workers.moe.engine import Engine
from workers.moe.lora import LoraBatchState, LoraPool, LoraWeights, MultiLoraLinear

ATOL = 1e-4
PROMPTS = [[1, 5, 7, 9, 11, 13], [3, 4], [8, 8, 8, 20], [40, 41, 42], [100, 7, 300, 5, 6], [9]]


def test_it_matches_peft_for_a_batch_mixing_experts_none_and_top2(
    engine: Engine, peft_reference: PeftReference, make_expert: Callable[..., ExpertRef]
) -> None:
    e1 = make_expert(1)
    e2 = make_expert(2, rank=4, alpha=4)  # another rank and scaling: padded to the pool's rank
    e3 = make_expert(3, rank=16, targets=["q_proj", "v_proj"])
    rows = [[e1], [], [e2], [e3], [make_expert(1, weight=0.7), make_expert(2, weight=0.3)], [make_expert(3, 0.5)]]

    batched = engine.logits(PROMPTS, rows)  # (B, V)

    for i, (ids, refs) in enumerate(zip(PROMPTS, rows, strict=True)):
        alone = peft_reference.logits(ids, refs)
        torch.testing.assert_close(batched[i], alone, atol=ATOL, rtol=0, msg=f"row {i}")
    base = engine.logits(PROMPTS, [[] for _ in PROMPTS])
    assert (batched[0] - base[0]).abs().max() > 0.05  # the experts really change the output
    torch.testing.assert_close(batched[1], base[1], atol=ATOL, rtol=0)


def test_it_takes_the_single_slot_path_when_every_row_uses_one_expert(
    engine: Engine, peft_reference: PeftReference, make_expert: Callable[..., ExpertRef]
) -> None:
    e1, half = make_expert(1), make_expert(1, weight=0.5)
    slot = engine.store.load(e1).slot
    assert engine.pool.prepare([[(slot, 1.0)], [(slot, 0.5)], []]).mode == "single"

    batched = engine.logits(PROMPTS[:3], [[e1], [half], []])

    torch.testing.assert_close(batched[0], peft_reference.logits(PROMPTS[0], [e1]), atol=ATOL, rtol=0)
    torch.testing.assert_close(batched[1], peft_reference.logits(PROMPTS[1], [half]), atol=ATOL, rtol=0)
    torch.testing.assert_close(batched[2], peft_reference.logits(PROMPTS[2], []), atol=ATOL, rtol=0)


def _pool_with_one_linear(in_features: int = 12, out_features: int = 10) -> tuple[nn.Linear, LoraPool]:
    torch.manual_seed(0)
    model = nn.Module()
    model.layers = nn.ModuleList([nn.Sequential(nn.Linear(in_features, out_features))])
    base = model.layers[0][0]
    return base, LoraPool.wrap(model, max_slots=8)


def _weights(rank: int, in_features: int = 12, out_features: int = 10, scale: float = 2.0) -> LoraWeights:
    return LoraWeights(a=torch.randn(rank, in_features), b=torch.randn(out_features, rank), scale=scale)


def test_it_adds_each_rows_weighted_lora_updates_to_the_base_output() -> None:
    base, pool = _pool_with_one_linear()
    w1, w2 = _weights(2), _weights(5, scale=0.5)
    s1 = pool.load({"layers.0.0": w1})
    s2 = pool.load({"layers.0.0": w2})  # a higher rank grows the pool and keeps slot 1's weights
    wrapper = pool.modules["layers.0.0"]
    x = torch.randn(3, 4, 12)  # (B, T, in)

    def delta(w: LoraWeights, rows: torch.Tensor) -> torch.Tensor:
        return w.scale * (rows @ w.a.t()) @ w.b.t()

    with pool.state.use(pool.prepare([[(s1, 1.0)], [(s2, 0.25), (s1, 2.0)], []])):
        y = wrapper(x)
    expected = base(x)
    expected[0] += delta(w1, x[0])
    expected[1] += 0.25 * delta(w2, x[1]) + 2.0 * delta(w1, x[1])
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_it_skips_the_adapters_when_no_row_uses_one() -> None:
    base, pool = _pool_with_one_linear()
    pool.load({"layers.0.0": _weights(4)})
    assignment = pool.prepare([[], []])
    x = torch.randn(2, 3, 12)

    with pool.state.use(assignment):
        y = pool.modules["layers.0.0"](x)

    assert assignment.mode == "none"
    torch.testing.assert_close(y, base(x))


def test_it_clears_a_reused_slot_in_modules_the_new_adapter_does_not_target() -> None:
    model = nn.Module()
    model.layers = nn.ModuleList([nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))])
    pool = LoraPool.wrap(model, max_slots=1)
    slot = pool.load({"layers.0.0": _weights(2, 6, 6), "layers.0.1": _weights(2, 6, 6)})
    pool.release(slot)

    again = pool.load({"layers.0.0": _weights(2, 6, 6)})

    assert again == slot
    assert pool.modules["layers.0.1"].lora_a[slot].abs().sum() == 0
    assert pool.modules["layers.0.1"].lora_b[slot].abs().sum() == 0


def test_it_refuses_to_load_beyond_its_slots() -> None:
    _, pool = _pool_with_one_linear()
    pool.max_slots = 1
    pool.load({"layers.0.0": _weights(2)})

    assert not pool.has_free_slot()
    with pytest.raises(RuntimeError, match="no free LoRA slot"):
        pool.load({"layers.0.0": _weights(2)})


def test_it_wraps_every_linear_of_the_decoder_layers_but_not_the_output_head(engine: Engine) -> None:
    names = set(engine.pool.modules)

    assert "model.layers.0.self_attn.q_proj" in names
    assert "model.layers.1.mlp.down_proj" in names
    assert len(names) == 2 * 7
    assert isinstance(engine.model.lm_head, nn.Linear)
    assert not isinstance(engine.model.lm_head, MultiLoraLinear)
    assert isinstance(engine.pool.state, LoraBatchState)
