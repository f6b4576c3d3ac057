"""The teacher pass: top-k targets of each segment's own positions, with its context seen but not scored."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
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
from workers.ml.distill.teacher_cache import Targets, TeacherCache, TeacherSegment, _plain_head, teacher_targets

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


def test_it_runs_the_teacher_over_the_needed_segments_only_and_adds_the_rest_when_asked(
    tmp_path: Path, tiny_teacher: LoadedModel, toy_corpus: CorpusSnapshot, kd_case: KDCase
) -> None:
    segments = _segments(tiny_teacher, toy_corpus, kd_case)
    asked: list[int] = []

    def counting_source(indices: Sequence[int]) -> list[Targets]:
        asked.extend(indices)
        return teacher_targets(tiny_teacher.model, segments, indices, TOP_K, 1.0, 0)

    def build(needed: Sequence[int] | None) -> tuple[TeacherCache, list[tuple[int, int]]]:
        reports: list[tuple[int, int]] = []
        cache = TeacherCache.open_or_build(
            tmp_path / "cache", {"teacher": "tiny"}, None, segments, top_k=TOP_K, temperature=1.0,
            batch_tokens=10_000, pad_token_id=0, source=counting_source, needed=needed,
            on_progress=lambda done, total, _: reports.append((done, total)),
        )  # fmt: skip
        assert cache is not None
        return cache, reports

    part, reports = build([3, 1])
    assert sorted(asked) == [1, 3]  # a budget under one epoch: the teacher reads what training will read
    assert len(part) == 2
    assert reports[-1] == (2, 2)
    asked.clear()
    more, reports = build([0, 1, 2, 3])  # a retry with a larger budget: only the missing ones
    assert sorted(asked) == [0, 2]
    assert (len(more), reports[-1]) == (4, (4, 4))
    asked.clear()
    whole, _ = build(None)
    assert sorted(asked) == [4, 5]
    asked.clear()
    again, reports = build([5])
    assert (asked, reports) == ([], [])  # nothing missing: the cache as it is
    assert len(whole) == len(again) == len(segments)
    for index in range(len(segments)):
        expected = _expected(tiny_teacher.model, segments[index])
        for got, want in zip(whole.segment(index), expected, strict=True):
            torch.testing.assert_close(got.float(), want.float(), rtol=2e-3, atol=2e-3)


def _launches_as_on_a_gpu(monkeypatch: pytest.MonkeyPatch, events: list[str]) -> None:
    """Teacher batches still running when their launch returns, as on a GPU; `events` records each launch and
    each wait for a batch's result."""
    real_launch = teacher_cache.launch_teacher_targets

    def launch(*args: Any, **kwargs: Any) -> teacher_cache.LaunchedTargets:
        number = sum(event.startswith("launch") for event in events)
        events.append(f"launch {number}")
        launched = real_launch(*args, **kwargs)
        launched._done = SimpleNamespace(synchronize=lambda: events.append(f"wait {number}"))
        return launched

    monkeypatch.setattr(teacher_cache, "launch_teacher_targets", launch)


def test_it_launches_the_next_gpu_batch_before_waiting_for_the_last_and_keeps_every_target(
    tmp_path: Path,
    tiny_teacher: LoadedModel,
    toy_corpus: CorpusSnapshot,
    kd_case: KDCase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    segments = _segments(tiny_teacher, toy_corpus, kd_case)
    events: list[str] = []
    _launches_as_on_a_gpu(monkeypatch, events)
    reports: list[int] = []
    longest = max(len(segment.tokens) for segment in segments)

    cache = TeacherCache.open_or_build(
        tmp_path / "cache", {"teacher": "tiny"}, tiny_teacher.model.eval(), segments, top_k=TOP_K,
        temperature=1.0, batch_tokens=longest, pad_token_id=0,  # one segment a batch
        on_progress=lambda done, total, _: reports.append(done),
    )  # fmt: skip

    batches = len(segments)
    assert events[:4] == ["launch 0", "launch 1", "wait 0", "launch 2"]
    assert events[-2:] == [f"wait {batches - 2}", f"wait {batches - 1}"]
    assert sorted(events) == sorted([f"launch {n}" for n in range(batches)] + [f"wait {n}" for n in range(batches)])
    assert reports == list(range(1, batches + 1))  # each batch reported once it is stored
    assert cache is not None
    assert len(cache) == len(segments)
    for index in range(len(segments)):
        expected = _expected(tiny_teacher.model, segments[index])
        for got, want in zip(cache.segment(index), expected, strict=True):
            torch.testing.assert_close(got.float(), want.float(), rtol=2e-3, atol=2e-3)


def test_it_stores_and_reports_each_batch_at_once_where_nothing_runs_behind(
    tmp_path: Path, tiny_teacher: LoadedModel, toy_corpus: CorpusSnapshot, kd_case: KDCase
) -> None:
    """A CPU's batch, or an endpoint's answer (which may take a minute and costs money), is complete when it
    returns: reported before the next one starts."""
    segments = _segments(tiny_teacher, toy_corpus, kd_case)
    events: list[str] = []

    def endpoint(indices: Sequence[int]) -> list[Targets]:
        events.append("asked")
        return teacher_targets(tiny_teacher.model, segments, indices, TOP_K, 1.0, 0)

    for source in (endpoint, None):
        events.clear()
        cache = TeacherCache.open_or_build(
            tmp_path / f"cache-{source is None}", {"teacher": "tiny"}, tiny_teacher.model.eval(), segments,
            top_k=TOP_K, temperature=1.0, batch_tokens=1, pad_token_id=0, source=source,
            on_progress=lambda done, total, _: events.append(f"reported {done}"),
        )  # fmt: skip
        assert cache is not None
        expected = [f"reported {n}" for n in range(1, len(segments) + 1)]
        if source is None:  # the local teacher on a CPU
            assert events == expected
        else:
            assert events == [event for n in expected for event in ("asked", n)]


def test_it_stops_between_gpu_batches_without_storing_the_one_in_flight(
    tmp_path: Path,
    tiny_teacher: LoadedModel,
    toy_corpus: CorpusSnapshot,
    kd_case: KDCase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    segments = _segments(tiny_teacher, toy_corpus, kd_case)
    reports: list[int] = []
    _launches_as_on_a_gpu(monkeypatch, [])

    cache = TeacherCache.open_or_build(
        tmp_path / "cache", {"teacher": "tiny"}, tiny_teacher.model.eval(), segments, top_k=TOP_K,
        temperature=1.0, batch_tokens=1, pad_token_id=0, on_progress=lambda done, total, _: reports.append(done),
        should_stop=lambda: len(reports) >= 2,
    )  # fmt: skip

    assert cache is None
    assert reports == [1, 2]  # batch 3 was launched, then the stop came before it was stored
