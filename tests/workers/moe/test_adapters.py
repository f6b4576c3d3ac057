"""The expert store: base identity checks, broken experts, LRU eviction under a budget, pins, hot-loading, S3."""

from __future__ import annotations

import shutil
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from tests.workers.moe.conftest import TINY, PeftReference, write_expert
from workers.ml.catalog import LoadedModel
from workers.moe.adapters import ExpertRef, ExpertRefused, ExpertUnavailable
from workers.moe.engine import Engine, EngineConfig, GenerationRequest


@pytest.fixture
def small_engine(model_cache_dir: Path, make_expert: Callable[..., ExpertRef]) -> Iterator[Engine]:
    """An engine whose adapter budget holds two and a half rank-8 experts of the tiny base."""
    probe = make_expert(21)  # experts 21-24 are only made here: all rank 8 on every linear, one size
    config = EngineConfig(base_spec=TINY, model_cache_dir=model_cache_dir, device="cpu")
    with Engine(config, progress=lambda _: None) as measuring:
        size = measuring.load_expert(probe).bytes
    budget = EngineConfig(
        base_spec=TINY, model_cache_dir=model_cache_dir, device="cpu", adapter_memory_bytes=int(size * 2.5)
    )
    with Engine(budget, progress=lambda _: None) as engine:
        yield engine


def test_it_refuses_an_expert_trained_on_another_base(engine: Engine, tiny_base: LoadedModel, tmp_path: Path) -> None:
    other = "f" * 64
    write_expert(tiny_base, tmp_path / "other", seed=5, content_hash=other)

    with pytest.raises(ExpertRefused) as refused:
        engine.load_expert(ExpertRef("other", str(tmp_path / "other")))

    assert other[:12] in str(refused.value)
    assert engine.base_identity["content_hash"][:12] in str(refused.value)
    assert "other" not in engine.loaded_experts()


@pytest.mark.parametrize(
    "damage",
    ["no directory", "no base.json", "garbled config", "truncated weights", "no weights", "foreign weight"],
)
def test_it_reports_a_missing_or_malformed_expert_as_unavailable(
    engine: Engine, tiny_base: LoadedModel, tmp_path: Path, damage: str
) -> None:
    directory = write_expert(tiny_base, tmp_path / "expert", seed=6)
    weights = directory / "adapter_model.safetensors"
    if damage == "no directory":
        shutil.rmtree(directory)
    elif damage == "no base.json":
        (directory / "base.json").unlink()
    elif damage == "garbled config":
        (directory / "adapter_config.json").write_text("{not json")
    elif damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "no weights":
        weights.unlink()
    else:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(weights))
        tensors["base_model.model.model.embed_tokens.weight"] = torch.zeros(4, 64)
        save_file(tensors, str(weights))

    with pytest.raises(ExpertUnavailable, match="Expert 'broken'"):
        engine.load_expert(ExpertRef("broken", str(directory)))


def test_it_evicts_the_least_recently_used_expert_under_its_memory_budget(
    small_engine: Engine, make_expert: Callable[..., ExpertRef]
) -> None:
    e1, e2, e3 = make_expert(21), make_expert(22), make_expert(23)
    small_engine.load_expert(e1)
    small_engine.load_expert(e2)
    small_engine.load_expert(e1)  # e1 is now the most recently used

    small_engine.load_expert(e3)

    assert small_engine.loaded_experts() == [e1.id, e3.id]
    assert small_engine.stats()["adapter_bytes"] <= small_engine.config.adapter_memory_bytes


def test_it_never_evicts_an_expert_pinned_by_a_running_request(
    small_engine: Engine, make_expert: Callable[..., ExpertRef]
) -> None:
    e1, e3, e4 = make_expert(21), make_expert(23), make_expert(24)
    pinned = small_engine.store.acquire([e1])
    small_engine.load_expert(e3)

    small_engine.load_expert(e4)  # e1 is the least recently used, but pinned: e3 goes

    assert small_engine.loaded_experts() == [e1.id, e4.id]
    both = small_engine.store.acquire([e4])
    with pytest.raises(ExpertUnavailable, match="in use"):
        small_engine.load_expert(e3)
    small_engine.store.release(pinned + both)
    small_engine.load_expert(e3)
    assert e3.id in small_engine.loaded_experts()


def test_it_bounds_loaded_experts_by_slot_count(
    model_cache_dir: Path, make_expert: Callable[..., ExpertRef], peft_reference: PeftReference
) -> None:
    config = EngineConfig(base_spec=TINY, model_cache_dir=model_cache_dir, device="cpu", max_loaded_experts=2)
    with Engine(config, progress=lambda _: None) as engine:
        for seed in (21, 22, 23):
            engine.load_expert(make_expert(seed))

        assert engine.loaded_experts() == [make_expert(22).id, make_expert(23).id]
        # Expert 23 reuses the slot expert 21 left: it computes as itself.
        got = engine.logits([[1, 2, 3]], [[make_expert(23)]])[0]
        torch.testing.assert_close(got, peft_reference.logits([1, 2, 3], [make_expert(23)]), atol=1e-4, rtol=0)


def test_it_serves_an_expert_created_after_it_started(
    engine: Engine, tiny_base: LoadedModel, peft_reference: PeftReference, tmp_path: Path
) -> None:
    fresh = ExpertRef("fresh-v1", str(write_expert(tiny_base, tmp_path / "fresh", seed=11)))
    prompt = "Hot loading works when"

    result = engine.generate(GenerationRequest(prompt=prompt, experts=[fresh], max_tokens=6, temperature=0.0))

    ids = engine.tokenizer.encode(prompt, add_special_tokens=False)
    assert result.text == engine.tokenizer.decode(peft_reference.greedy(ids, [fresh], 6), skip_special_tokens=True)
    assert "fresh-v1" in engine.loaded_experts()


class _FakeS3:
    """boto3's client surface the store uses, reading from a local directory laid out as bucket/key."""

    calls: list[dict[str, object]] = []

    def __init__(self, root: Path) -> None:
        self.root = root

    def client(self, service: str, endpoint_url: str | None = None) -> _FakeS3:
        self.calls.append({"service": service, "endpoint_url": endpoint_url})
        return self

    def download_file(self, bucket: str, key: str, filename: str) -> None:
        source = self.root / bucket / key
        if not source.is_file():
            raise FileNotFoundError(f"404 {key}")
        shutil.copyfile(source, filename)


def test_it_downloads_an_expert_from_s3_once(
    engine: Engine, tiny_base: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_expert(tiny_base, tmp_path / "s3" / "bucket" / "experts" / "e12", seed=12)
    fake = _FakeS3(tmp_path / "s3")
    monkeypatch.setitem(sys.modules, "boto3", types.SimpleNamespace(client=fake.client))
    monkeypatch.setenv("AWS_S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setattr(engine.store, "cache_dir", tmp_path / "cache")
    ref = ExpertRef("s3-e12", "s3://bucket/experts/e12")

    info = engine.load_expert(ref)

    assert info.rank == 8
    assert fake.calls[-1] == {"service": "s3", "endpoint_url": "http://minio:9000"}
    assert (tmp_path / "cache" / "s3-e12" / "adapter_model.safetensors").is_file()


def test_it_explains_that_boto3_is_needed_for_s3_experts(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 now raises ImportError
    monkeypatch.setattr(engine.store, "cache_dir", tmp_path / "cache")

    with pytest.raises(ExpertUnavailable, match="boto3"):
        engine.load_expert(ExpertRef("s3-missing", "s3://bucket/experts/x"))
