"""The teacher pass: top-k targets of each segment's own positions, with its context seen but not scored."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from tests.workers.ml.distill.conftest import KDCase
from workers.ml.catalog import LoadedModel
from workers.ml.distill import teacher_cache
from workers.ml.distill.corpus import CorpusSnapshot
from workers.ml.distill.kd import build_kd_data
from workers.ml.distill.losses import teacher_topk
from workers.ml.distill.teacher_cache import TeacherSegment, _plain_head, teacher_targets

TOP_K = 16


def _segments(teacher: LoadedModel, corpus: CorpusSnapshot, case: KDCase) -> list[TeacherSegment]:
    data = build_kd_data(corpus.train, corpus, teacher.tokenizer, case.kd, case.training.seq_len)
    return list(data.teacher_segments[:6])


def _expected(model: Any, segment: TeacherSegment) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k of the full forward over the segment alone, at its own positions."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([segment.tokens]), use_cache=False).logits[0]  # (L, V)
    values, ids, tail = teacher_topk(logits[segment.target_offset :], TOP_K)
    return values, ids, tail


class HeadRows:
    """Counts the positions the output head computes logits for."""

    def __init__(self, head: torch.nn.Module) -> None:
        self.rows = 0
        self._handle = head.register_forward_hook(self._count)

    def _count(self, module: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.rows += output.reshape(-1, output.shape[-1]).shape[0]

    def remove(self) -> None:
        self._handle.remove()


@pytest.mark.parametrize("plain_head", [True, False], ids=["head-on-kept-positions", "full-forward"])
def test_it_gives_each_segment_the_targets_of_a_full_forward_at_its_own_positions(
    tiny_teacher: LoadedModel,
    toy_corpus: CorpusSnapshot,
    kd_case: KDCase,
    plain_head: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not plain_head:
        monkeypatch.setattr(teacher_cache, "PLAIN_HEAD_MODEL_TYPES", frozenset())
    model = tiny_teacher.model.eval()
    segments = _segments(tiny_teacher, toy_corpus, kd_case)
    assert any(segment.target_offset > 0 for segment in segments)  # some segments have a context
    rows = HeadRows(model.get_output_embeddings())

    targets = teacher_targets(model, segments, range(len(segments)), TOP_K, 1.0, pad_token_id=0)
    rows.remove()

    assert sorted(index for index, *_ in targets) == list(range(len(segments)))  # in packing order
    for index, values, ids, tail in targets:
        segment = segments[index]
        expected_values, expected_ids, expected_tail = _expected(model, segment)
        assert values.dtype == torch.float16
        assert ids.dtype == torch.int32
        assert values.shape == (segment.target_length, TOP_K), index
        torch.testing.assert_close(values, expected_values.half(), atol=2e-3, rtol=0)
        assert torch.equal(ids, expected_ids.int())
        torch.testing.assert_close(tail, expected_tail, atol=1e-4, rtol=1e-4)
    own = sum(segment.target_length for segment in segments)
    if plain_head:
        assert rows.rows == own  # no logits for context positions or row padding
    else:
        assert rows.rows > own


def _tiny_gemma3(softcapping: float | None) -> Any:
    config = Gemma3TextConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, final_logit_softcapping=softcapping,
    )  # fmt: skip
    return Gemma3ForCausalLM(config)


def test_it_runs_the_full_forward_for_logits_that_are_not_the_heads_output() -> None:
    capped = _tiny_gemma3(softcapping=30.0)
    plain = _tiny_gemma3(softcapping=None)

    assert _plain_head(capped) is None  # tanh soft-capping follows the head
    assert _plain_head(plain) == (plain.model, plain.lm_head)
    segments = [TeacherSegment(tokens=tuple(range(3, 20)), target_offset=5)]
    for model in (capped, plain):
        _, values, ids, tail = teacher_targets(model.eval(), segments, [0], TOP_K, 1.0, pad_token_id=0)[0]
        expected_values, expected_ids, expected_tail = _expected(model, segments[0])
        torch.testing.assert_close(values, expected_values.half(), atol=2e-3, rtol=0)
        assert torch.equal(ids, expected_ids.int())
        torch.testing.assert_close(tail, expected_tail, atol=1e-4, rtol=1e-4)
