"""bf16 on CPUs that multiply bf16 in hardware: when a run chooses it, and that it trains and exports as fp32 does."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from tests.workers.ml.distill.conftest import KDCase, build_cache, peft_student
from tests.workers.ml.distill.test_run import STUDENT, tiny_config
from workers.ml import device
from workers.ml.catalog import CatalogConfig, LoadedModel, load_model
from workers.ml.device import CPU_BF16_MIN_PARAMETERS, prefers_bf16
from workers.ml.distill import precision
from workers.ml.distill.corpus import CorpusSnapshot
from workers.ml.distill.kd import build_kd_data, kd_loss
from workers.ml.distill.precision import autocasts_bf16
from workers.ml.distill.run import distill
from workers.ml.distill.train import DataPlan, train

CPU = torch.device("cpu")
BIG = CPU_BF16_MIN_PARAMETERS
SMALL = CPU_BF16_MIN_PARAMETERS - 1


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)


@pytest.fixture
def emulated_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)


def test_it_prefers_bf16_on_a_gpu_and_on_a_native_bf16_cpu_for_a_large_student(native_bf16: None) -> None:
    assert prefers_bf16(None, torch.device("cuda"), SMALL)
    assert prefers_bf16(None, CPU, BIG)
    assert not prefers_bf16(None, CPU, SMALL)  # tiny models gain nothing and keep fp32's exact arithmetic


def test_it_keeps_fp32_where_the_cpu_would_emulate_bf16(emulated_bf16: None) -> None:
    assert not prefers_bf16(None, CPU, BIG)


def test_it_honours_an_explicit_setting_and_warns_when_bf16_will_be_emulated(
    emulated_bf16: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=device.__name__):
        assert prefers_bf16(True, CPU, SMALL)
    assert "no native bf16" in caplog.text
    assert not prefers_bf16(False, torch.device("cuda"), BIG)


def test_it_autocasts_when_the_frozen_base_is_stored_in_bf16(tiny_student: LoadedModel, kd_case: KDCase) -> None:
    expert = peft_student(tiny_student, kd_case.lora)
    assert not autocasts_bf16(None, CPU, expert)
    assert autocasts_bf16(True, CPU, expert)
    expert.to(torch.bfloat16)
    assert autocasts_bf16(None, CPU, expert)
    assert not autocasts_bf16(False, CPU, expert)
    assert autocasts_bf16(None, torch.device("cuda"), expert)


def test_it_trains_fp32_lora_weights_on_a_bf16_base_and_lowers_the_loss(
    tmp_path: Path,
    tiny_student: LoadedModel,
    tiny_teacher: LoadedModel,
    toy_corpus: CorpusSnapshot,
    kd_case: KDCase,
) -> None:
    case = dataclasses.replace(kd_case, training=dataclasses.replace(kd_case.training, epochs=4, learning_rate=1e-2))
    data = build_kd_data(toy_corpus.train, toy_corpus, tiny_student.tokenizer, case.kd, case.training.seq_len)
    cache = build_cache(tmp_path, tiny_teacher, data, case)
    tiny_student.model.to(torch.bfloat16)
    expert = peft_student(tiny_student, case.lora)
    lora = {name: param for name, param in expert.named_parameters() if param.requires_grad}
    before = {name: param.detach().clone() for name, param in lora.items()}

    outcome = train(
        expert,
        DataPlan(data.segments, case.training, pad_token_id=0),
        kd_loss(case.kd, cache=cache),
        case.training,
        tmp_path / "checkpoints",
        tmp_path / "log.jsonl",
        on_progress=lambda _: None,
        should_stop=lambda: False,
    )

    log = [json.loads(line) for line in outcome.log_path.read_text().splitlines()]
    assert outcome.bf16_autocast
    assert {param.dtype for param in lora.values()} == {torch.float32}  # the optimizer's weights stay fp32
    assert all(not torch.equal(param, before[name]) for name, param in lora.items())
    assert log[-1]["loss"] < log[0]["loss"] - 0.3, (log[0]["loss"], log[-1]["loss"])


class Bf16ToFloat32Copies(TorchDispatchMode):
    """Counts the copies of bf16 tensors into fp32 that the ops inside make."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func.overloadpacket == torch.ops.aten._to_copy and kwargs.get("dtype") == torch.float32:
            self.count += int(args[0].dtype == torch.bfloat16)
        return func(*args, **kwargs)


def test_it_hands_lora_layers_their_bf16_input_under_autocast_for_the_same_losses(
    tmp_path: Path,
    tiny_student: LoadedModel,
    tiny_teacher: LoadedModel,
    toy_corpus: CorpusSnapshot,
    kd_case: KDCase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = dataclasses.replace(kd_case, training=dataclasses.replace(kd_case.training, epochs=1))
    data = build_kd_data(toy_corpus.train, toy_corpus, tiny_student.tokenizer, case.kd, case.training.seq_len)
    cache = build_cache(tmp_path, tiny_teacher, data, case)
    base = tiny_student.model.to(torch.bfloat16)

    def run(name: str) -> tuple[list[float], int, int]:
        torch.manual_seed(0)
        expert = get_peft_model(copy.deepcopy(base), case.lora.to_peft())
        with Bf16ToFloat32Copies() as copies:
            outcome = train(
                expert,
                DataPlan(data.segments, case.training, pad_token_id=0),
                kd_loss(case.kd, cache=cache),
                case.training,
                tmp_path / name / "checkpoints",
                tmp_path / name / "log.jsonl",
                on_progress=lambda _: None,
                should_stop=lambda: False,
            )
        losses = [json.loads(line)["loss"] for line in outcome.log_path.read_text().splitlines()]
        lora_layers = sum(isinstance(module, BaseTunerLayer) for module in expert.modules())
        return losses, copies.count, lora_layers

    losses, copies, lora_layers = run("bf16-inputs")
    # peft's own behaviour: each LoRA layer copies its bf16 input to fp32, and autocast copies it back.
    monkeypatch.setattr(precision, "disable_input_dtype_casting", lambda model: nullcontext())
    cast_losses, cast_copies, _ = run("cast-inputs")

    assert losses == cast_losses  # the same numbers: bf16 -> fp32 -> bf16 is exact
    assert cast_copies - copies >= lora_layers  # at least one forward's worth fewer copies


def test_it_distils_in_bf16_on_a_native_bf16_cpu_and_exports_an_fp32_adapter(
    tmp_path: Path,
    model_cache_dir: Path,
    toy_corpus: CorpusSnapshot,
    native_bf16: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(device, "CPU_BF16_MIN_PARAMETERS", 0)  # the tiny student counts as large here
    with caplog.at_level(logging.INFO, logger="workers.ml.distill.run"):
        result = distill(tiny_config(tmp_path, model_cache_dir), toy_corpus)

    assert result.status == "succeeded"
    assert result.metrics["training"]["base_weights"] == "bfloat16"
    assert result.metrics["training"]["bf16_autocast"] is True
    assert "tiny:llama-2l, tiny:llama-4l stored in bf16" in caplog.text  # the teacher too
    card = (result.output_dir / "README.md").read_text()
    assert "Computed in bf16 (autocast) on base weights stored as bfloat16" in card
    assert result.metrics["heldout"]["expert"]["perplexity"] < result.metrics["heldout"]["base"]["perplexity"]
    exported = load_file(str(result.output_dir / "adapter_model.safetensors"))
    assert {tensor.dtype for tensor in exported.values()} == {torch.float32}
    # Plain peft applies it to the fp32 base as stored in the catalog, close to the bf16 expert that was scored.
    base = load_model(STUDENT, CatalogConfig(cache_dir=model_cache_dir, device="cpu")).model
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, result.output_dir)(input_ids=ids).logits
    assert not torch.allclose(plain, adapted, atol=1e-3)


def test_it_keeps_tiny_students_in_fp32_by_default(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot, native_bf16: None
) -> None:
    result = distill(tiny_config(tmp_path, model_cache_dir), toy_corpus)

    assert result.metrics["training"]["base_weights"] == "float32"
    assert result.metrics["training"]["bf16_autocast"] is False
    assert "Computed in float32 on base weights stored as float32" in (result.output_dir / "README.md").read_text()
