"""The expert directory: a PEFT adapter that plain PEFT (and vLLM's layout) loads, its card and metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open

from workers.ml.catalog import CatalogConfig, LoadedModel, load_model
from workers.ml.distill.config import (
    DistillConfig,
    EndpointTeacherConfig,
    LocalTeacherConfig,
    LoraSettings,
    QASettings,
)
from workers.ml.distill.errors import DistillError
from workers.ml.distill.evaluate import LMScores, QAExample
from workers.ml.distill.export import (
    base_identity_from_info,
    build_metrics,
    export_expert,
    licence_of,
    load_expert_metadata,
    vllm_problems,
)
from workers.ml.distill.signature import RoutingSignature

SPEC = "tiny:llama-2l"
API_KEY = "sk-test-SECRET-0123456789abcdef"


def tiny_model(model_cache_dir: Path) -> LoadedModel:
    return load_model(SPEC, CatalogConfig(cache_dir=model_cache_dir, device="cpu"))


@pytest.fixture(scope="module")
def trained(model_cache_dir: Path) -> tuple[Any, LoadedModel]:
    """A PEFT model whose LoRA B matrices are non-zero, so the adapter changes the logits."""
    loaded = tiny_model(model_cache_dir)
    peft_model = get_peft_model(loaded.model, LoraSettings(rank=4, alpha=8, dropout=0.0).to_peft())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return peft_model.eval(), loaded


def scores(ppl: float) -> LMScores:
    return LMScores(perplexity=ppl, bits_per_byte=ppl / 10, mean_nll=1.0, tokens=100, bytes=400)


def export(out_dir: Path, trained: tuple[Any, LoadedModel], config: DistillConfig, **overrides: Any) -> Path:
    peft_model, loaded = trained
    options: dict[str, Any] = {
        "config": config,
        "base_identity": base_identity_from_info(loaded.info),
        "teacher_label": config.teacher.label,
        "metrics": build_metrics(
            base=scores(30.0),
            expert=scores(20.0),
            teacher=scores(10.0),
            kl_before=0.9,
            kl_after=0.3,
            qa={"base": 0.1, "expert": 0.4, "teacher": 0.6},
            qa_examples=[QAExample("Who approves leave?", "your manager", "the manager", 0.5)],
            qa_source="eval set",
        ),
        "data_stats": {"train_chunks": 12, "train_documents": 3, "heldout_chunks": 2},
        "signature": RoutingSignature(embedder="packaged:all-minilm-l6-v2", dim=2, centroids=[[1.0, 0.0]], counts=[4]),
    }
    options.update(overrides)
    return export_expert(out_dir, peft_model, **options)


def test_it_writes_an_adapter_that_plain_peft_loads(
    tmp_path: Path, trained: tuple[Any, LoadedModel], model_cache_dir: Path
) -> None:
    peft_model, loaded = trained
    out_dir = export(tmp_path / "expert", trained, DistillConfig(tmp_path / "run", model_cache_dir, student=SPEC))
    input_ids = loaded.tokenizer("The VPN client needs an update.", return_tensors="pt")["input_ids"]

    reloaded = PeftModel.from_pretrained(tiny_model(model_cache_dir).model, out_dir).eval()

    with torch.no_grad():
        expected = peft_model(input_ids=input_ids).logits
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=input_ids).logits
        actual = reloaded(input_ids=input_ids).logits
    assert not torch.allclose(expected, plain, atol=1e-3)  # the adapter matters
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_it_lays_the_adapter_out_as_vllm_expects(
    tmp_path: Path, trained: tuple[Any, LoadedModel], model_cache_dir: Path
) -> None:
    out_dir = export(tmp_path / "expert", trained, DistillConfig(tmp_path / "run", model_cache_dir, student=SPEC))

    adapter_config = json.loads((out_dir / "adapter_config.json").read_text())
    with safe_open(out_dir / "adapter_model.safetensors", framework="pt") as weights:
        keys = list(weights.keys())

    assert adapter_config["base_model_name_or_path"] == SPEC
    assert adapter_config["peft_type"] == "LORA"
    assert adapter_config["r"] == 4
    assert not adapter_config.get("modules_to_save")
    assert adapter_config["bias"] == "none"
    assert not adapter_config.get("use_dora")
    assert keys
    assert all(key.endswith((".lora_A.weight", ".lora_B.weight")) for key in keys)
    assert not any("embed_tokens" in key or "lm_head" in key for key in keys)
    assert not any(path.is_dir() for path in out_dir.iterdir())  # nothing in subfolders, no scratch left


def test_it_writes_the_card_and_the_metadata(
    tmp_path: Path, trained: tuple[Any, LoadedModel], model_cache_dir: Path
) -> None:
    _, loaded = trained
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.5}\n')
    config = DistillConfig(tmp_path / "run", model_cache_dir, student=SPEC, teacher=LocalTeacherConfig(SPEC))

    out_dir = export(tmp_path / "expert", trained, config, training_log=log)

    card = (out_dir / "README.md").read_text()
    assert loaded.info.content_hash in card
    assert f"**Teacher**: {SPEC}" in card
    assert "logit distillation (`kd`)" in card
    assert "| expert | 20.000 |" in card
    assert "| teacher | 10.000 |" in card
    assert "Gap closed" in card
    assert "50.0%" in card
    assert "before 0.9000, after 0.3000" in card
    assert "Who approves leave?" in card
    assert "random weights, no licence" in card
    assert str(tmp_path) not in card  # server paths stay out of the card
    metadata = load_expert_metadata(out_dir)
    assert metadata["base"]["content_hash"] == loaded.info.content_hash
    assert metadata["base"]["spec"] == SPEC
    assert metadata["metrics"]["gap_closed"] == pytest.approx(0.5)
    assert metadata["signature"].counts == [4]
    assert json.loads((out_dir / "config.json").read_text()) == json.loads(json.dumps(config.to_json()))
    assert (out_dir / "training_log.jsonl").read_text() == log.read_text()
    assert not (out_dir / "qa_data.jsonl").exists()


def test_it_never_writes_the_api_key(tmp_path: Path, trained: tuple[Any, LoadedModel], model_cache_dir: Path) -> None:
    teacher = EndpointTeacherConfig(base_url="https://user:pw@api.example.com/v1", model="big-model", api_key=API_KEY)
    config = DistillConfig(tmp_path / "run", model_cache_dir, student=SPEC, recipe="qa", teacher=teacher)
    generated = tmp_path / "pairs.jsonl"
    generated.write_text(json.dumps({"question": "q", "answer": f"leaked {API_KEY}"}) + "\n")

    out_dir = export(tmp_path / "expert", trained, config, generated_data=generated, signature=None)

    written = {path.name: path.read_bytes() for path in out_dir.iterdir()}
    assert "qa_data.jsonl" in written
    assert "signature.json" not in written
    for name, content in written.items():
        assert API_KEY.encode() not in content, name
        assert b"user:pw" not in content, name
    card = written["README.md"].decode()
    assert "big-model" in card
    assert "check they allow training on outputs" in card
    assert "at least ~1–3B" in card
    assert "<think>" not in card  # trained without reasoning


def test_the_card_says_a_reasoning_expert_thinks_before_it_answers(
    tmp_path: Path, trained: tuple[Any, LoadedModel], model_cache_dir: Path
) -> None:
    config = DistillConfig(tmp_path / "run", model_cache_dir, student=SPEC, recipe="qa", qa=QASettings(reasoning=True))
    card = (export(tmp_path / "expert", trained, config, signature=None) / "README.md").read_text()
    assert "it writes its reasoning in `<think>…</think>` before the answer" in card
    assert '"reasoning": true' in card  # the hyperparameters say so too


def test_it_spots_what_vllm_would_refuse() -> None:
    assert vllm_problems({"peft_type": "LORA", "target_modules": ["q_proj"], "bias": "none"}) == []
    assert vllm_problems({"target_modules": ["model.embed_tokens", "q_proj"]}) == [
        "it adapts embedding or output layers (embed_tokens)"
    ]
    assert len(vllm_problems({"use_dora": True, "bias": "all", "modules_to_save": ["lm_head"]})) == 3


def test_it_redacts_long_secrets_but_not_short_test_keys(
    tmp_path: Path, trained: tuple[Any, LoadedModel], model_cache_dir: Path
) -> None:
    teacher = EndpointTeacherConfig(base_url="http://h:8000/v1", model="m", api_key="k")
    config = DistillConfig(tmp_path / "run", model_cache_dir, student=SPEC, teacher=teacher)

    out_dir = export(tmp_path / "expert", trained, config)

    assert "[redacted]" not in (out_dir / "README.md").read_text()


def test_it_notes_licences_and_dequantised_bases() -> None:
    assert "Apache-2.0" in licence_of("local", "packaged:smollm2-135m-instruct")
    assert "Gemma Terms of Use" in licence_of("local", "packaged:gemma3-270m")
    assert "provider's terms" in licence_of("endpoint", "")
    assert "provider's terms" in licence_of("local", "hf:org/model")


def test_it_describes_a_dequantised_smollm2_base(
    tmp_path: Path, trained: tuple[Any, LoadedModel], model_cache_dir: Path
) -> None:
    identity = {"spec": "packaged:smollm2-135m-instruct", "content_hash": "ab" * 32, "num_parameters": 134_515_008}

    out_dir = export(
        tmp_path / "expert", trained, DistillConfig(tmp_path / "run", model_cache_dir), base_identity=identity
    )

    card = (out_dir / "README.md").read_text()
    assert "Q4_1" in card
    assert "de-quantised" in card
    assert "SmolLM2 — Apache-2.0" in card
    assert json.loads((out_dir / "base.json").read_text()) == identity


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")
def test_it_refuses_an_adapter_vllm_cannot_serve(tmp_path: Path, model_cache_dir: Path) -> None:
    model = tiny_model(model_cache_dir).model
    config = LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)

    with pytest.raises(DistillError, match="modules_to_save"):
        export_expert(
            tmp_path / "expert",
            peft_model,
            config=DistillConfig(tmp_path / "run", model_cache_dir, student=SPEC),
            base_identity={"spec": SPEC, "content_hash": "00"},
            teacher_label=SPEC,
            metrics={},
            data_stats={},
            signature=None,
        )


def test_it_writes_metrics_without_a_teacher_as_not_applicable(
    tmp_path: Path, trained: tuple[Any, LoadedModel], model_cache_dir: Path
) -> None:
    metrics = build_metrics(base=scores(10.0), expert=scores(9.0), teacher=scores(12.0))

    out_dir = export(tmp_path / "expert", trained, DistillConfig(tmp_path / "run", model_cache_dir), metrics=metrics)

    assert metrics["gap_closed"] is None
    assert "not applicable" in (out_dir / "README.md").read_text()
    assert json.loads((out_dir / "metrics.json").read_text())["qa"] is None


def test_it_puts_the_judges_grades_on_the_card_next_to_rouge(
    tmp_path: Path, trained: tuple[Any, LoadedModel], model_cache_dir: Path
) -> None:
    judge = {"judge": "big-model @ http://teacher/v1", "mean_grade": {"base": 1.5, "expert": 4.25, "teacher": 2.0}}
    metrics = build_metrics(
        base=scores(30.0),
        expert=scores(20.0),
        qa={"base": 0.1, "expert": 0.4, "teacher": 0.6},
        qa_examples=[QAExample("Who approves leave?", "your manager", "the manager", 0.5, judge_grade=4)],
        qa_source="eval set",
        qa_judge=judge,
    )

    out_dir = export(tmp_path / "expert", trained, DistillConfig(tmp_path / "run", model_cache_dir), metrics=metrics)

    card = (out_dir / "README.md").read_text()
    assert "Judge: big-model @ http://teacher/v1, grading each answer 1–5" in card
    assert "| expert | 0.400 | 4.25 |" in card
    assert "| Who approves leave? | the manager | your manager | 0.500 | 4 |" in card
    assert json.loads((out_dir / "metrics.json").read_text())["qa"]["judge"] == judge
