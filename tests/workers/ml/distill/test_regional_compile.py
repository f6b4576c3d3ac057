"""Regional compilation of the student's decoder layers: same training, fewer kernels, clear refusals."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from tests.workers.ml.distill.conftest import KDCase, build_cache, peft_student, run_with_evaluation
from workers.ml.catalog import LoadedModel
from workers.ml.distill.config import TrainingSettings
from workers.ml.distill.corpus import CorpusSnapshot
from workers.ml.distill.kd import build_kd_data, kd_loss
from workers.ml.distill.regional_compile import (
    AUTO_MIN_TEACHER_FLOPS,
    AUTO_MIN_TRAIN_FLOPS,
    CompileUnavailable,
    _input_requires_grad,
    compiled_layers,
    has_active_dropout,
    padded_rows,
    planned_train_flops,
    repeated_layers,
    should_compile,
)
from workers.ml.distill.train import DataPlan, _latest_checkpoint

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_it_finds_the_decoder_layers_inside_a_peft_model(tiny_student: LoadedModel, kd_case: KDCase) -> None:
    model = peft_student(tiny_student, kd_case.lora)
    try:
        layers = repeated_layers(model)

        assert layers is model.base_model.model.model.layers
        assert len(layers) == tiny_student.model.config.num_hidden_layers
    finally:
        model.unload()


def test_it_compiles_under_auto_only_runs_long_enough_to_pay_the_compilation_back() -> None:
    enough = AUTO_MIN_TRAIN_FLOPS["cpu"]
    assert should_compile("auto", CPU, train_flops=enough) is True  # this machine has a C++ compiler
    assert should_compile("auto", CPU, train_flops=enough / 2) is False
    assert should_compile("off", CPU, train_flops=enough * 1000) is False
    assert should_compile("on", CPU, train_flops=0) is True


def test_it_leaves_a_cpu_eager_under_auto_when_training_draws_dropout_masks(
    tiny_student: LoadedModel, kd_case: KDCase
) -> None:
    """On a CPU compiled layers with LoRA dropout ran no faster than eager ones: compiling would be time lost."""
    enough = AUTO_MIN_TRAIN_FLOPS["cpu"]
    with_dropout = peft_student(tiny_student, dataclasses.replace(kd_case.lora, dropout=0.05))
    try:
        assert has_active_dropout(with_dropout)
        assert should_compile("auto", CPU, enough, dropout=True) is False
        assert should_compile("on", CPU, enough, dropout=True) is True
    finally:
        with_dropout.unload()
    assert not has_active_dropout(peft_student(tiny_student, kd_case.lora))  # the tests' LoRA: dropout 0


def test_it_leaves_tiny_models_eager_under_auto_even_for_many_steps() -> None:
    """A tiny test model's steps take milliseconds: no run of it is worth a compilation."""
    tiny_parameters, many_positions = 3_300_000, 100 * 8 * 512
    assert should_compile("auto", CPU, planned_train_flops(tiny_parameters, many_positions)) is False
    smollm2_parameters, a_budget = 134_515_008, 48_000
    assert should_compile("auto", CPU, planned_train_flops(smollm2_parameters, a_budget)) is True


def test_it_compiles_on_a_gpu_only_where_triton_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None if name == "triton" else object())

    assert should_compile("auto", CUDA, train_flops=AUTO_MIN_TRAIN_FLOPS["cuda"] * 10) is False
    with pytest.raises(CompileUnavailable, match="triton"):
        should_compile("on", CUDA)


def test_it_names_the_setting_when_compilation_is_asked_for_without_a_compiler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)

    with pytest.raises(CompileUnavailable, match=r"training\.torch_compile is 'on' but no C\+\+ compiler"):
        should_compile("on", CPU)
    assert should_compile("auto", CPU, train_flops=AUTO_MIN_TRAIN_FLOPS["cpu"] * 10) is False


def test_it_rejects_an_unknown_setting_when_the_settings_are_made() -> None:
    with pytest.raises(ValueError, match=r"training\.torch_compile must be one of auto, on, off, not 'yes'"):
        TrainingSettings(torch_compile="yes")  # type: ignore[arg-type]


def test_it_runs_the_layers_eagerly_again_after_the_block(tiny_student: LoadedModel) -> None:
    layers = repeated_layers(tiny_student.model)
    assert layers is not None

    with compiled_layers(tiny_student.model, enabled=True) as compiled:
        assert compiled
        assert all(layer._compiled_call_impl is not None for layer in layers)
    assert all(layer._compiled_call_impl is None for layer in layers)


def test_it_trains_compiled_to_the_losses_and_weights_of_eager_training(
    tmp_path: Path,
    tiny_student: LoadedModel,
    tiny_teacher: LoadedModel,
    toy_corpus: CorpusSnapshot,
    kd_case: KDCase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One real inductor compilation (a few seconds for the tiny model): the compiled layers compute the same."""
    case = dataclasses.replace(kd_case, training=dataclasses.replace(kd_case.training, eval_every=3))
    layers = repeated_layers(tiny_student.model)
    compiled_steps: list[bool] = []

    def record_compilation(loss_fn: Any) -> Any:
        def loss(model: Any, batch: Any) -> Any:
            compiled_steps.append(all(layer._compiled_call_impl is not None for layer in layers))
            return loss_fn(model, batch)

        return loss

    _, eager_log, _ = run_with_evaluation(
        tmp_path, tiny_student, tiny_teacher, toy_corpus, case, "eager", wrap_loss=record_compilation
    )
    assert compiled_steps
    assert not any(compiled_steps), "auto compiled a run too small to pay it back"
    compiled_steps.clear()
    monkeypatch.setitem(AUTO_MIN_TRAIN_FLOPS, "cpu", 1.0)  # as if the run were long
    outcome, compiled_log, _ = run_with_evaluation(
        tmp_path, tiny_student, tiny_teacher, toy_corpus, case, "compiled", wrap_loss=record_compilation
    )

    assert compiled_steps
    assert all(compiled_steps)
    assert all(layer._compiled_call_impl is None for layer in layers)  # eager again after training
    assert outcome.steps_done == outcome.total_steps > 4
    assert [entry["step"] for entry in compiled_log] == [entry["step"] for entry in eager_log]
    for ours, theirs in zip(compiled_log, eager_log, strict=True):
        for key in ("loss", "heldout_loss"):
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), (ours["step"], key)
    eager_weights = final_adapter(tmp_path / "eager")
    compiled_weights = final_adapter(tmp_path / "compiled")
    assert compiled_weights.keys() == eager_weights.keys()  # same parameter names: checkpoints interchange
    for name, weight in eager_weights.items():
        torch.testing.assert_close(compiled_weights[name], weight, rtol=1e-3, atol=1e-5, msg=name)


def test_it_asks_for_cuda_graphs_per_layer_and_marks_each_micro_batch_when_set(
    tmp_path: Path,
    tiny_student: LoadedModel,
    tiny_teacher: LoadedModel,
    toy_corpus: CorpusSnapshot,
    kd_case: KDCase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CUDA-graph plumbing, on a CPU: inductor skips the capture here, so the losses must stay eager's."""
    training = dataclasses.replace(kd_case.training, torch_compile="on", cuda_graphs=True)
    graphs = dataclasses.replace(kd_case, training=training)
    _, eager_log, _ = run_with_evaluation(tmp_path, tiny_student, tiny_teacher, toy_corpus, kd_case, "eager")
    modes: list[object] = []
    original_compile = torch.nn.Module.compile

    def recording_compile(module: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        modes.append(kwargs.get("mode"))
        original_compile(module, *args, **kwargs)

    marks: list[int] = []
    forwards: list[int] = []
    monkeypatch.setattr(torch.nn.Module, "compile", recording_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(len(forwards)))

    gradient_buffers: list[tuple[int | None, ...]] = []

    def count_forwards(loss_fn: Any) -> Any:
        def loss(model: Any, batch: Any) -> Any:
            forwards.append(1)
            trainable = [param for param in model.parameters() if param.requires_grad]
            gradient_buffers.append(tuple(None if p.grad is None else p.grad.data_ptr() for p in trainable))
            return loss_fn(model, batch)

        return loss

    _, graphs_log, _ = run_with_evaluation(
        tmp_path, tiny_student, tiny_teacher, toy_corpus, graphs, "graphs", wrap_loss=count_forwards
    )

    layers = repeated_layers(tiny_student.model)
    assert layers is not None
    assert modes == ["reduce-overhead"] * len(layers)
    assert marks == list(range(len(forwards)))  # one mark before each training forward, none elsewhere
    assert len(forwards) > 4
    # Gradients accumulate into .grad buffers allocated before any capture and kept (zeroed) from step to step:
    # a buffer a captured backward allocated would be overwritten by the next micro-batch's replay.
    assert None not in gradient_buffers[0]
    assert set(gradient_buffers) == {gradient_buffers[0]}
    for ours, theirs in zip(graphs_log, eager_log, strict=True):
        if "loss" in theirs:
            assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-4, abs=1e-5), ours["step"]


def test_it_refuses_cuda_graphs_without_compilation() -> None:
    with pytest.raises(ValueError, match=r"training\.cuda_graphs captures compiled layers"):
        TrainingSettings(torch_compile="off", cuda_graphs=True)


def final_adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = _latest_checkpoint(run_dir / "checkpoints")
    assert latest is not None
    return load_file(str(latest / "adapter.safetensors"))


def test_it_falls_back_to_eager_layers_when_compilation_fails_under_auto(tiny_student: LoadedModel) -> None:
    """A model inductor cannot compile must not fail a run the user did not ask to compile."""
    import torch._inductor.config

    torch._dynamo.reset()  # nothing compiled earlier in this process may be reused
    model = tiny_student.model.eval()
    ids = torch.tensor([[1, 504, 2113, 314, 260, 1345]])
    # inductor's own patch, not pytest's monkeypatch: undoing that deletes the setting from inductor's config,
    # and every later compilation in the process fails.
    with torch.no_grad(), torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/c++",)}):
        expected = model(input_ids=ids).logits

        with compiled_layers(model, enabled=True, fall_back=True):
            logits = model(input_ids=ids).logits
        torch._dynamo.reset()  # forget that these frames failed, which makes torch skip them from then on
        with pytest.raises(Exception, match="No working C\\+\\+ compiler"), compiled_layers(model, enabled=True):
            model(input_ids=ids)

    torch.testing.assert_close(logits, expected)
    torch._dynamo.reset()


def test_it_pads_a_short_micro_batch_with_empty_rows_that_change_neither_loss_nor_gradients(
    tmp_path: Path, tiny_student: LoadedModel, tiny_teacher: LoadedModel, toy_corpus: CorpusSnapshot, kd_case: KDCase
) -> None:
    data = build_kd_data(toy_corpus.train, toy_corpus, tiny_student.tokenizer, kd_case.kd, kd_case.training.seq_len)
    cache = build_cache(tmp_path, tiny_teacher, data, kd_case)
    plan = DataPlan(data.segments, kd_case.training, pad_token_id=0)
    loss_fn = kd_loss(kd_case.kd, cache=cache)
    model = peft_student(tiny_student, kd_case.lora)
    rows = plan.epoch(0)[0][:1]  # one row, where the compiled shape has more

    def loss_and_gradients(batch_rows: list[list[int]]) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        parts = loss_fn(model, plan.collate(batch_rows))
        parts.total.backward()
        return float(parts.total), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    try:
        loss, gradients = loss_and_gradients(rows)
        padded = padded_rows(rows, 4)
        padded_loss, padded_gradients = loss_and_gradients(padded)
    finally:
        model.unload()
    assert len(padded) == 4
    assert plan.collate(padded).input_ids.shape[0] == 4
    assert padded_loss == pytest.approx(loss, rel=1e-6)
    for ours, theirs in zip(padded_gradients, gradients, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def test_it_asks_for_the_first_layers_input_gradient_so_all_layers_share_one_graph() -> None:
    frozen_embedding_output = torch.randn(1, 3, 8)
    with torch.no_grad():
        _input_requires_grad(torch.nn.Identity(), (frozen_embedding_output,), {})
    assert not frozen_embedding_output.requires_grad  # evaluation asks for nothing

    _input_requires_grad(torch.nn.Identity(), (), {"hidden_states": frozen_embedding_output})

    assert frozen_embedding_output.requires_grad


def test_it_compiles_a_teacher_pass_under_auto_only_on_a_gpu_past_its_own_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A CPU's teacher stays eager under auto (7% a batch against ~9 s of compilation); 'on' still compiles it."""
    enough = AUTO_MIN_TEACHER_FLOPS["cuda"]
    assert should_compile("auto", CPU, enough * 1000, thresholds=AUTO_MIN_TEACHER_FLOPS) is False
    assert should_compile("on", CPU, 0, thresholds=AUTO_MIN_TEACHER_FLOPS) is True

    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())  # triton "installed"
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    assert should_compile("auto", CUDA, enough, thresholds=AUTO_MIN_TEACHER_FLOPS) is True
    assert should_compile("auto", CUDA, enough / 2, thresholds=AUTO_MIN_TEACHER_FLOPS) is False


def _tiny_llama(seed: int) -> torch.nn.Module:
    """A two-layer Llama built from a config: compiles in a second or two on a CPU."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    return LlamaForCausalLM(config)


class _SymbolCounter(logging.Handler):
    """Counts the symbolic (dynamic) dimensions torch creates while compiling."""

    def __init__(self) -> None:
        super().__init__()
        self.symbols = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "create_symbol" in record.getMessage():
            self.symbols += 1


@pytest.mark.parametrize("static_shapes", [True, False])
def test_it_compiles_training_layers_for_exactly_the_shapes_they_see(static_shapes: bool) -> None:
    """Once a shape changes, torch compiles its layers again with dynamic shapes (slower to compile, slower
    kernels) and remembers that from process to process (its profile-guided "automatic dynamic"), so a
    student trained after a teacher of the same architecture could inherit them. Training asks for static."""

    counter = _SymbolCounter()
    shapes_log = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    torch._logging.set_logs(dynamic=logging.INFO)
    shapes_log.addHandler(counter)
    try:
        student = _tiny_llama(seed=1)
        with compiled_layers(student, True, static_shapes=static_shapes):
            for seq_len in (24, 16):  # a shape that changes, as a teacher's rows and then the student's do
                student(input_ids=torch.randint(0, 128, (2, seq_len))).logits.sum().backward()
    finally:
        shapes_log.removeHandler(counter)
        torch._logging.set_logs()
        torch._dynamo.reset()

    if static_shapes:
        assert counter.symbols == 0
    else:
        assert counter.symbols > 0  # what training avoids


def test_it_compiles_the_layers_of_every_run_in_a_long_lived_worker() -> None:
    """torch keeps each compiled variant of the layers' forward and, past its recompile limit, runs them eagerly
    for the rest of the process without an error; a GPU worker's later jobs must still be compiled."""
    from torch._dynamo.utils import counters

    graphs_per_run = []
    with torch._dynamo.config.patch(recompile_limit=2):  # 8 in torch: a few jobs of other shapes reach it
        for run, seq_len in enumerate((12, 14, 16, 18)):
            model = _tiny_llama(seed=run)
            before = counters["stats"]["unique_graphs"]
            with compiled_layers(model, True, static_shapes=True):
                model(input_ids=torch.randint(0, 128, (2, seq_len))).logits.sum().backward()
            graphs_per_run.append(counters["stats"]["unique_graphs"] - before)
    torch._dynamo.reset()

    assert all(graphs > 0 for graphs in graphs_per_run), graphs_per_run
