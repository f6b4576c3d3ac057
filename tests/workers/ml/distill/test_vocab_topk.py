"""The grouped top-k against torch.topk: the same values, the same ids where no values tie."""

from __future__ import annotations

import pytest
import torch

from workers.ml.distill import vocab_topk
from workers.ml.distill.vocab_topk import grouped_topk, vocabulary_topk


@pytest.mark.parametrize(
    ("vocab", "k", "group"),
    [
        (4096, 16, 64),  # whole groups
        (5000, 16, 64),  # a short last group
        (1000, 64, 64),  # fewer groups than k
        (50, 8, 64),  # one short group only
        (50, 50, 8),  # k = V
    ],
)
def test_it_finds_torch_topks_values_and_ids_when_nothing_ties(vocab: int, k: int, group: int) -> None:
    logits = torch.randn(3, 5, vocab, generator=torch.Generator().manual_seed(vocab))  # fp32: no ties

    values, ids = grouped_topk(logits, k, group)

    reference = logits.topk(k, dim=-1)
    assert values.shape == ids.shape == (3, 5, k)
    assert torch.equal(values, reference.values)
    assert torch.equal(ids, reference.indices)


def test_it_finds_the_top_values_when_many_tie() -> None:
    # Whole numbers in bf16: hundreds of ties at every rank, the case of a bf16 teacher's logits.
    logits = torch.randint(-20, 20, (64, 3000), generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)

    values, ids = grouped_topk(logits, 40, group=16)

    assert torch.equal(values, logits.topk(40, dim=-1).values)
    assert torch.equal(logits.gather(-1, ids), values)  # the ids point at those values
    assert all(len(set(row.tolist())) == 40 for row in ids)  # each one once


def test_it_keeps_a_top_value_that_sits_in_the_short_last_group() -> None:
    logits = torch.zeros(2, 130)
    logits[0, 129] = 5.0  # the last group (128, 129) is short
    logits[1, 0] = 5.0

    values, ids = grouped_topk(logits, 1, group=64)

    assert values.flatten().tolist() == [5.0, 5.0]
    assert ids.flatten().tolist() == [129, 0]


def test_it_runs_grouped_only_on_the_devices_and_vocabularies_where_it_pays(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    real = vocab_topk.grouped_topk
    monkeypatch.setattr(vocab_topk, "grouped_topk", lambda logits, k: calls.append(k) or real(logits, k))
    logits = torch.randn(4, 4 * 8 * vocab_topk.GROUP)

    vocabulary_topk(logits, 8)  # on a CPU: torch.topk
    assert calls == []

    monkeypatch.setattr(vocab_topk, "GROUPED_DEVICE_TYPES", frozenset({"cpu"}))
    values, _ = vocabulary_topk(logits, 8)
    assert calls == [8]
    assert torch.equal(values, logits.topk(8, dim=-1).values)
    vocabulary_topk(logits, 9)  # 9 · 64 · 4 > V: too few groups to gain
    assert calls == [8]
