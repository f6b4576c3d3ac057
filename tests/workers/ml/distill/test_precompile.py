"""Compiling the student during the teacher pass: training then compiles nothing and trains the same."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch._dynamo.utils import compilation_time_metrics

from tests.workers.ml.distill.conftest import KDCase, build_cache, peft_student
from workers.ml.catalog import LoadedModel
from workers.ml.distill import precompile
from workers.ml.distill.corpus import CorpusSnapshot
from workers.ml.distill.kd import build_kd_data, kd_loss
from workers.ml.distill.precompile import StudentPrecompile, micro_batch_bytes
from workers.ml.distill.regional_compile import repeated_layers
from workers.ml.distill.train import DataPlan, train


def _compilations() -> int:
    """Timed compilation events so far in this process: dynamo's tracing, inductor's forward and backward
    compilers (the backward compiles lazily, at its first call), cache loads."""
    return sum(len(times) for times in compilation_time_metrics.values())


def _train(tmp_path: Path, name: str, model: Any, plan: DataPlan, loss_fn: Any, case: KDCase) -> list[dict[str, Any]]:
    outcome = train(
        model, plan, loss_fn, case.training, tmp_path / name / "ck", tmp_path / name / "log.jsonl",
        on_progress=lambda progress: None, should_stop=lambda: False,
    )  # fmt: skip
    return [json.loads(line) for line in outcome.log_path.read_text().splitlines()]


@pytest.fixture
def compiled_case(kd_case: KDCase, monkeypatch: pytest.MonkeyPatch) -> Iterator[KDCase]:
    monkeypatch.setattr(precompile, "PRECOMPILE_DEVICE_TYPES", frozenset({"cpu", "cuda"}))
    # Real compilations, not loads from inductor's disk cache: a cached backward is loaded with the forward,
    # a compiled one only when it first runs, which is what the thread must do for training.
    with (
        torch._inductor.config.patch(fx_graph_cache=False),
        torch._functorch.config.patch(enable_autograd_cache=False),
    ):
        yield dataclasses.replace(kd_case, training=dataclasses.replace(kd_case.training, torch_compile="on"))


def test_it_compiles_the_first_step_in_a_thread_so_training_compiles_nothing_and_trains_the_same(
    tmp_path: Path,
    tiny_student: LoadedModel,
    tiny_teacher: LoadedModel,
    toy_corpus: CorpusSnapshot,
    compiled_case: KDCase,
) -> None:
    case = compiled_case
    data = build_kd_data(toy_corpus.train, toy_corpus, tiny_student.tokenizer, case.kd, case.training.seq_len)
    cache = build_cache(tmp_path, tiny_teacher, data, case)
    plan = DataPlan(data.segments, case.training, pad_token_id=0)
    torch._dynamo.reset()

    model = peft_student(tiny_student, case.lora)
    try:
        before = _compilations()
        plain_log = _train(tmp_path, "plain", model, plan, kd_loss(case.kd, cache=cache), case)
        assert _compilations() > before  # training compiled at its first step
    finally:
        model.unload()

    model = peft_student(tiny_student, case.lora)
    layers = repeated_layers(model)
    try:
        with StudentPrecompile() as early:
            assert early.prepare(model, plan, case.training, case.kd, top_k=case.kd.cache_top_k)
            assert all(layer._compiled_call_impl is not None for layer in layers)
            lora_weight = next(param for param in model.parameters() if param.requires_grad)
            gradients: list[torch.Tensor] = []
            hook = lora_weight.register_hook(lambda gradient: gradients.append(gradient) or None)
            early.on_teacher_batch()  # the teacher's first batch is done: the thread starts
            early.on_teacher_batch()  # later batches start nothing more
            early.wait()
            hook.remove()
            assert len(gradients) == 1  # one backward, as a training micro-batch runs (a lazy backward compiles)
            assert early.error is None
            assert early.seconds is not None
            assert all(param.grad is None for param in model.parameters())  # it leaves no gradient behind
            before = _compilations()
            early_log = _train(tmp_path, "early", model, plan, kd_loss(case.kd, cache=cache), case)

            assert _compilations() == before  # training found everything compiled
            assert all(layer._compiled_call_impl is not None for layer in layers)  # still held open
        assert all(layer._compiled_call_impl is None for layer in layers)  # eager again after the block
    finally:
        model.unload()

    assert [entry["step"] for entry in early_log] == [entry["step"] for entry in plain_log]
    for ours, theirs in zip(early_log, plain_log, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5), ours["step"]


def test_it_reports_a_failed_compilation_and_leaves_training_to_compile(
    tiny_student: LoadedModel, toy_corpus: CorpusSnapshot, compiled_case: KDCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = compiled_case
    data = build_kd_data(toy_corpus.train, toy_corpus, tiny_student.tokenizer, case.kd, case.training.seq_len)
    plan = DataPlan(data.segments, case.training, pad_token_id=0)

    def broken_loss(settings: Any, cache: Any) -> Any:
        def loss(model: Any, batch: Any) -> Any:
            raise RuntimeError("inductor failed")

        return loss

    monkeypatch.setattr(precompile, "kd_loss", broken_loss)
    model = peft_student(tiny_student, case.lora)
    try:
        with StudentPrecompile() as early:
            assert early.prepare(model, plan, case.training, case.kd, top_k=case.kd.cache_top_k)
            early.on_teacher_batch()
            early.wait()  # no exception here: the run goes on
            assert isinstance(early.error, RuntimeError)
    finally:
        model.unload()


def test_it_leaves_compilation_to_training_when_the_gpu_has_no_room_beside_the_teacher(
    tiny_student: LoadedModel, toy_corpus: CorpusSnapshot, compiled_case: KDCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = compiled_case
    data = build_kd_data(toy_corpus.train, toy_corpus, tiny_student.tokenizer, case.kd, case.training.seq_len)
    plan = DataPlan(data.segments, case.training, pad_token_id=0)
    model = peft_student(tiny_student, case.lora)
    wanted = 1.25 * micro_batch_bytes(model, case.training.micro_batch_size, case.training.seq_len)
    monkeypatch.setattr(precompile, "free_device_bytes", lambda device: wanted - 1)
    try:
        with StudentPrecompile() as early:
            assert early.prepare(model, plan, case.training, case.kd, top_k=case.kd.cache_top_k)
            early.on_teacher_batch()  # measured once the teacher's first batch holds its memory
            early.on_teacher_batch()
            early.wait()
            assert not early.compiled
            assert early.skipped is not None
            assert "GiB free on the GPU" in early.skipped
    finally:
        model.unload()


def test_it_runs_only_where_training_compiles_on_a_device_it_serves(
    tiny_student: LoadedModel, toy_corpus: CorpusSnapshot, kd_case: KDCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = build_kd_data(toy_corpus.train, toy_corpus, tiny_student.tokenizer, kd_case.kd, kd_case.training.seq_len)
    model = peft_student(tiny_student, kd_case.lora)
    layers = repeated_layers(model)
    compiled = dataclasses.replace(kd_case.training, torch_compile="on")
    eager = dataclasses.replace(kd_case.training, torch_compile="off")
    try:
        with StudentPrecompile() as on_cpu:
            assert not on_cpu.prepare(model, DataPlan(data.segments, compiled, 0), compiled, kd_case.kd, top_k=16)
            assert on_cpu.skipped == "not on a cuda device"
            on_cpu.on_teacher_batch()  # nothing to start
        monkeypatch.setattr(precompile, "PRECOMPILE_DEVICE_TYPES", frozenset({"cpu"}))
        with StudentPrecompile() as not_compiling:
            assert not not_compiling.prepare(model, DataPlan(data.segments, eager, 0), eager, kd_case.kd, top_k=16)
            assert not_compiling.skipped == "training does not compile"
        assert all(layer._compiled_call_impl is None for layer in layers)
    finally:
        model.unload()


def test_it_estimates_a_micro_batchs_memory_from_the_models_shape() -> None:
    from transformers import Qwen2Config

    half_b = Qwen2Config(
        vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2,
    )  # fmt: skip
    model = type("Model", (), {"config": half_b})()

    estimate = micro_batch_bytes(model, rows=16, seq_len=1024)

    # An H200 run of this shape peaked at 54.7 GB with its teacher's cache and weights resident
    # (docs/benchmarks.md): the estimate must not fall below that.
    assert 55e9 < estimate < 120e9
    assert micro_batch_bytes(model, rows=8, seq_len=1024) == estimate // 2
    assert micro_batch_bytes(object(), rows=1, seq_len=1) > 1e18  # unknown shape: never "room"
