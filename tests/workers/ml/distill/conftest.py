"""Tiny models and a small learnable corpus for the distillation engine's tests."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import get_peft_model

from workers.ml.catalog import CatalogConfig, LoadedModel, load_model
from workers.ml.distill.config import KDSettings, LoraSettings, TrainingSettings
from workers.ml.distill.corpus import CorpusSnapshot, split_by_document

TINY = "tiny:llama-2l"
NAMES = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]


def toy_documents(count: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """Documents in a small, regular language a 2-layer model can learn in a few dozen steps."""
    rng = random.Random(seed)
    documents = []
    for number in range(count):
        chunks = []
        for _ in range(3):
            name = rng.choice(NAMES)
            chunks.append(" ".join(f"the {name} code is {name} and the {name} value is {name}." for _ in range(3)))
        documents.append((f"doc-{number}.txt", chunks))
    return documents


@pytest.fixture(scope="session")
def toy_corpus() -> CorpusSnapshot:
    return split_by_document(toy_documents(12), heldout_fraction=0.25, seed=0, name="toy")


def _quiet(_: str) -> None:
    """Catalog progress lines are noise in tests."""


@pytest.fixture
def tiny_student(model_cache_dir: Path) -> LoadedModel:
    return load_model(TINY, CatalogConfig(cache_dir=model_cache_dir, device="cpu", seed=0), progress=_quiet)


@pytest.fixture
def tiny_teacher(model_cache_dir: Path) -> LoadedModel:
    return load_model(TINY, CatalogConfig(cache_dir=model_cache_dir, device="cpu", seed=1), progress=_quiet)


@dataclass
class KDCase:
    """Settings small enough that a whole training run takes a second or two on 2 cores."""

    training: TrainingSettings
    kd: KDSettings
    lora: LoraSettings


@pytest.fixture
def kd_case() -> KDCase:
    return KDCase(
        training=TrainingSettings(
            epochs=2,
            seq_len=96,
            micro_batch_size=2,
            grad_accum=2,
            learning_rate=3e-3,
            warmup_ratio=0.0,
            checkpoint_every=3,
            device="cpu",
        ),
        kd=KDSettings(alpha=0.5, context_chunks=1, context_max_tokens=48, cache_top_k=16),
        lora=LoraSettings(rank=8, alpha=16, dropout=0.0),
    )


def peft_student(loaded: LoadedModel, lora: LoraSettings, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return get_peft_model(loaded.model, lora.to_peft())
