"""The engine's API: validation before queueing, concurrent requests batched together, chat, shutdown."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.workers.moe.conftest import ALL_LINEAR, TINY, PeftReference
from workers.ml import device
from workers.ml.catalog import CatalogConfig, load_model
from workers.moe.adapters import ExpertRef, ExpertRefused
from workers.moe.engine import Engine, EngineClosed, EngineConfig, Finished, GenerationRequest, InvalidRequest
from workers.moe.lora import MultiLoraLinear

SMOLLM2 = "packaged:smollm2-135m-instruct"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": None}, "exactly one of"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "exactly one of"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 3.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10_000}, "max_tokens"),
        ({"prompt": "word " * 5000}, "limit is 4096"),
        ({"prompt": ""}, "empty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"experts": [ExpertRef("x", "/nowhere", weight=0.0)]}, "positive"),
        ({"experts": [ExpertRef("x", "/nowhere", weight=float("nan"))]}, "positive"),
        ({"experts": [ExpertRef("x", "/a"), ExpertRef("x", "/a")]}, "twice"),
        ({"experts": [ExpertRef(f"x{i}", "/a") for i in range(5)]}, "at most 4"),
        ({"prompt": None, "messages": []}, "must not be empty"),
        ({"prompt": None, "messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        ({"prompt": None, "messages": [{"role": "user"}]}, "content"),
    ],
)
def test_it_rejects_an_invalid_request_before_queueing_it(
    engine: Engine, changes: dict[str, object], message: str
) -> None:
    fields: dict[str, object] = {"prompt": "Hello", "max_tokens": 4} | changes
    queued = engine.stats()["queued_requests"]

    with pytest.raises(InvalidRequest, match=message):
        engine.submit(GenerationRequest(**fields))  # type: ignore[arg-type]

    assert engine.stats()["queued_requests"] == queued


def test_it_refuses_an_unusable_expert_in_submit(engine: Engine, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "base.json").write_text('{"content_hash": "0000"}')

    with pytest.raises(ExpertRefused):
        engine.submit(GenerationRequest(prompt="Hi", experts=[ExpertRef("bad", str(bad))]))


def test_it_batches_concurrent_requests_and_answers_each_correctly(
    engine: Engine, peft_reference: PeftReference, make_expert: Callable[..., ExpertRef]
) -> None:
    experts = [[make_expert(1)], [make_expert(3)], [], [make_expert(4)], [make_expert(1)], [make_expert(4, 0.5)]]
    prompts = [f"Request number {i} says" for i in range(len(experts))]
    for refs in experts:
        for ref in refs:
            engine.load_expert(ref)  # loaded up front, so the submissions really arrive together
    results: list[Finished | None] = [None] * len(experts)
    barrier = threading.Barrier(len(experts))
    before = engine.stats()

    def client(i: int) -> None:
        barrier.wait()
        request = GenerationRequest(prompt=prompts[i], experts=experts[i], max_tokens=6, temperature=0.0)
        results[i] = engine.generate(request)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(experts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    after = engine.stats()
    steps = after["batches_run"] - before["batches_run"]
    assert steps < sum(r.completion_tokens for r in results if r) - len(experts)  # rows shared forward passes
    assert after["mean_batch_size"] > 1
    for prompt, refs, result in zip(prompts, experts, results, strict=True):
        ids = engine.tokenizer.encode(prompt, add_special_tokens=False)
        expected = peft_reference.greedy(ids, refs, 6)
        assert result is not None
        assert result.text == engine.tokenizer.decode(expected, skip_special_tokens=True), prompt


def test_it_renders_messages_with_the_chat_template(engine: Engine) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    prompt = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    chat = engine.generate(GenerationRequest(messages=messages, max_tokens=5, temperature=0.0, ignore_eos=True))
    raw = engine.generate(GenerationRequest(prompt=prompt, max_tokens=5, temperature=0.0, ignore_eos=True))

    assert chat.text == raw.text
    assert chat.prompt_tokens == raw.prompt_tokens
    assert prompt.endswith("<|im_start|>assistant\n")


def test_it_describes_its_base_experts_and_work(engine: Engine, make_expert: Callable[..., ExpertRef]) -> None:
    info = engine.load_expert(make_expert(1))
    stats = engine.stats()

    assert engine.base_identity["spec"] == TINY
    assert info.base_hash == engine.base_identity["content_hash"]
    assert info.rank == 8
    assert info.bytes > 0
    assert make_expert(1).id in engine.loaded_experts()
    assert {"batches_run", "mean_batch_size", "tokens_generated", "loaded_experts", "adapter_bytes"} <= set(stats)
    assert stats["weights"] == "float32"  # auto keeps a tiny base in fp32, whatever the CPU


def test_it_serves_in_bf16_where_the_cpu_has_it_and_answers_as_fp32_does(
    engine: Engine,
    model_cache_dir: Path,
    make_expert: Callable[..., ExpertRef],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(device, "CPU_BF16_MIN_PARAMETERS", 0)  # the tiny base counts as large here
    ids = [engine.tokenizer.encode(f"Request number {i} says", add_special_tokens=False) for i in range(3)]
    experts = [[make_expert(1)], [make_expert(3), make_expert(4, 0.5)], []]
    config = EngineConfig(base_spec=TINY, model_cache_dir=model_cache_dir, device="cpu")

    with Engine(config, progress=lambda _: None) as bf16:
        logits = bf16.logits(ids, experts)
        answer = bf16.generate(GenerationRequest(prompt="Hello", experts=[make_expert(1)], max_tokens=4, temperature=0))
        stats = bf16.stats()
        slots = {module.lora_a.dtype for module in bf16.model.modules() if isinstance(module, MultiLoraLinear)}

    assert stats["weights"] == "bfloat16"
    assert slots == {torch.bfloat16}  # the experts' slots follow the base
    assert logits.dtype == torch.bfloat16
    assert answer.completion_tokens == 4
    reference = engine.logits(ids, experts)  # the same rows on the fp32 engine
    torch.testing.assert_close(logits.float(), reference, atol=0.02, rtol=0)  # bf16 rounding: ~0.004 here
    without_experts = engine.logits(ids, [[], [], []])
    assert (reference[:2] - without_experts[:2]).abs().amax(dim=-1).min() > 0.1  # the experts count in that bound


def test_it_refuses_an_unknown_weights_setting() -> None:
    with pytest.raises(ValueError, match="weights must be one of auto, bf16, fp32"):
        EngineConfig(weights="fp16")


def test_it_refuses_work_after_close(model_cache_dir: Path) -> None:
    engine = Engine(EngineConfig(base_spec=TINY, model_cache_dir=model_cache_dir, device="cpu"), progress=print)

    engine.close()

    with pytest.raises(EngineClosed):
        engine.submit(GenerationRequest(prompt="Hello"))


@pytest.mark.realmodel
def test_it_matches_peft_on_smollm2_for_a_mixed_batch(model_cache_dir: Path, tmp_path: Path) -> None:
    import json

    from peft import LoraConfig, PeftModel, get_peft_model

    writer = load_model(SMOLLM2, CatalogConfig(cache_dir=model_cache_dir, device="cpu"), progress=lambda _: None)
    peft_model = get_peft_model(writer.model, LoraConfig(r=16, lora_alpha=32, target_modules=ALL_LINEAR))
    refs = []
    for seed in range(2):
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        peft_model.save_pretrained(tmp_path / f"e{seed}")
        (tmp_path / f"e{seed}" / "base.json").write_text(json.dumps({"content_hash": writer.info.content_hash}))
        refs.append(ExpertRef(f"e{seed}", str(tmp_path / f"e{seed}")))
    base = peft_model.unload()
    truth = PeftModel.from_pretrained(base, refs[0].location, adapter_name="e0")
    truth.load_adapter(refs[1].location, adapter_name="e1")
    messages = [[{"role": "user", "content": f"Say something about topic {i}."}] for i in range(3)]

    # fp32, as the reference: auto would serve SmolLM2 in bf16 on a CPU with native bf16.
    config = EngineConfig(base_spec=SMOLLM2, model_cache_dir=model_cache_dir, device="cpu", weights="fp32")
    with Engine(config, progress=lambda _: None) as engine:
        ids = [engine._tokenize(GenerationRequest(messages=m)) for m in messages]
        batched = engine.logits(ids, [[refs[0]], [refs[1]], []])
        streams = [
            engine.submit(GenerationRequest(messages=m, experts=e, max_tokens=8, temperature=0.0))
            for m, e in zip(messages, [[refs[0]], [refs[1]], []], strict=True)
        ]
        texts = [next(e for e in s.events() if isinstance(e, Finished)).text for s in streams]

    for row, adapter in enumerate(["e0", "e1", None]):
        with torch.no_grad():
            if adapter is None:
                with truth.disable_adapter():
                    alone = truth(torch.tensor([ids[row]])).logits[0, -1]
                    generated = truth.generate(torch.tensor([ids[row]]), max_new_tokens=8, do_sample=False)
            else:
                truth.set_adapter(adapter)
                alone = truth(torch.tensor([ids[row]])).logits[0, -1]
                generated = truth.generate(torch.tensor([ids[row]]), max_new_tokens=8, do_sample=False)
        torch.testing.assert_close(batched[row], alone, atol=2e-4, rtol=0)
        expected = engine.tokenizer.decode(generated[0, len(ids[row]) :], skip_special_tokens=True)
        assert texts[row] == expected


@pytest.mark.realmodel
def test_it_still_answers_from_smollm2_served_in_bf16(model_cache_dir: Path) -> None:
    config = EngineConfig(base_spec=SMOLLM2, model_cache_dir=model_cache_dir, device="cpu", weights="bf16")
    messages = [{"role": "user", "content": "What is the capital of France?"}]

    with Engine(config, progress=lambda _: None) as engine:
        answer = engine.generate(GenerationRequest(messages=messages, max_tokens=24, temperature=0.0))
        weights = engine.stats()["weights"]

    assert weights == "bfloat16"
    assert "Paris" in answer.text, answer.text
