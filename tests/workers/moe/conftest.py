"""Tiny bases, random LoRA experts on disk, and an engine over them; no database, CPU only."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from workers.ml.catalog import CatalogConfig, LoadedModel, load_model
from workers.moe.adapters import ExpertRef
from workers.moe.engine import Engine, EngineConfig

TINY = "tiny:llama-2l"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _quiet(_: str) -> None:
    """Catalog progress lines are noise in tests."""


def load_tiny(model_cache_dir: Path, seed: int = 0) -> LoadedModel:
    return load_model(TINY, CatalogConfig(cache_dir=model_cache_dir, device="cpu", seed=seed), progress=_quiet)


def write_expert(
    base: LoadedModel,
    out_dir: Path,
    *,
    seed: int,
    rank: int = 8,
    alpha: int = 16,
    targets: list[str] | None = None,
    content_hash: str | None = None,
) -> Path:
    """A PEFT LoRA directory with random (non-zero) A and B, plus base.json naming `base`'s weights.

    The adapter is injected into a throwaway copy of the base's modules and removed again, so `base` stays plain.
    """
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets or ALL_LINEAR, lora_dropout=0.0)
    peft_model = get_peft_model(base.model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:  # lora_B is zero at init: randomise both so the expert changes the output
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    peft_model.save_pretrained(out_dir)
    peft_model.unload()  # back to the plain base modules
    identity = {"spec": base.spec, "content_hash": content_hash or base.info.content_hash}
    (out_dir / "base.json").write_text(json.dumps(identity))
    return out_dir


@pytest.fixture(scope="session")
def tiny_base(model_cache_dir: Path) -> LoadedModel:
    """A plain tiny base used to write experts and as PEFT's ground truth (never wrapped by an engine)."""
    return load_tiny(model_cache_dir)


@pytest.fixture(scope="session")
def make_expert(tiny_base: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., ExpertRef]:
    """Expert `seed` (written once per session; kwargs apply when it is first made), with a request weight."""
    made: dict[int, ExpertRef] = {}

    def make(seed: int, weight: float = 1.0, **kwargs: object) -> ExpertRef:
        if seed not in made:
            directory = tmp_path_factory.mktemp(f"expert-{seed}")
            write_expert(tiny_base, directory, seed=seed, **kwargs)  # type: ignore[arg-type]
            made[seed] = ExpertRef(id=f"expert-{seed}", location=str(directory))
        return ExpertRef(made[seed].id, made[seed].location, weight)

    return make


@pytest.fixture(scope="module")
def engine(model_cache_dir: Path) -> Iterator[Engine]:
    config = EngineConfig(base_spec=TINY, model_cache_dir=model_cache_dir, device="cpu", batch_wait_ms=20)
    with Engine(config, progress=_quiet) as running:
        yield running


class PeftReference:
    """Ground truth: the same tiny base run through PEFT's own LoRA layers, one request at a time."""

    def __init__(self, model_cache_dir: Path) -> None:
        from peft import PeftModel

        self.base = load_tiny(model_cache_dir)
        self._peft_model_class = PeftModel
        self.model: PeftModel | None = None
        self.adapters: dict[str, str] = {}  # expert id -> PEFT adapter name
        self._scaling: dict[int, dict[str, float]] = {}  # id(LoRA layer) -> adapter name -> PEFT's own scaling

    def _activate(self, refs: list[ExpertRef]) -> None:
        for ref in refs:
            if ref.id in self.adapters:
                continue
            name = f"a{len(self.adapters)}"
            if self.model is None:
                self.model = self._peft_model_class.from_pretrained(self.base.model, ref.location, adapter_name=name)
            else:
                self.model.load_adapter(ref.location, adapter_name=name)
            self.adapters[ref.id] = name
        assert self.model is not None
        names = [self.adapters[ref.id] for ref in refs]
        self.model.base_model.set_adapter(names)
        # PEFT sums the active adapters, each with its own scaling: fold each ref's weight into that scaling.
        for module in self.model.modules():
            scaling = getattr(module, "scaling", None)
            if not isinstance(scaling, dict):
                continue
            original = self._scaling.setdefault(id(module), {})
            for ref, name in zip(refs, names, strict=True):
                if name in scaling:
                    scaling[name] = original.setdefault(name, scaling[name]) * ref.weight

    @torch.no_grad()
    def logits(self, ids: list[int], refs: list[ExpertRef]) -> torch.Tensor:
        """Last-position logits (V,) of `ids` alone with `refs`' adapters (none: the plain base)."""
        if not refs:
            if self.model is None:
                return self.base.model(torch.tensor([ids])).logits[0, -1]
            with self.model.disable_adapter():
                return self.model(torch.tensor([ids])).logits[0, -1]
        self._activate(refs)
        assert self.model is not None
        return self.model(torch.tensor([ids])).logits[0, -1]

    def greedy(self, ids: list[int], refs: list[ExpertRef], count: int) -> list[int]:
        """`count` greedy tokens (no cache, no EOS stop: the slow obvious way)."""
        out: list[int] = []
        for _ in range(count):
            out.append(int(self.logits(ids + out, refs).argmax()))
        return out


@pytest.fixture(scope="module")
def peft_reference(model_cache_dir: Path) -> PeftReference:
    return PeftReference(model_cache_dir)
