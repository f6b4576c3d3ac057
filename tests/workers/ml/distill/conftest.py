"""Tiny models and a small learnable corpus for the distillation engine's tests."""

from __future__ import annotations

import json
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
from workers.ml.distill.kd import build_kd_data, kd_loss
from workers.ml.distill.progress import Progress
from workers.ml.distill.teacher_cache import TeacherCache
from workers.ml.distill.train import DataPlan, TrainOutcome, train

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


def build_cache(
    tmp_path: Path, teacher: LoadedModel, data: Any, case: KDCase, top_k: int | None = None
) -> TeacherCache:
    cache = TeacherCache.open_or_build(
        tmp_path / "teacher-cache",
        {"teacher": "tiny-seed-1"},
        teacher.model,
        data.teacher_segments,
        top_k=top_k or case.kd.cache_top_k,
        temperature=case.kd.temperature,
        batch_tokens=256,
        pad_token_id=0,
    )
    assert cache is not None
    return cache


def heldout_kd_loss(
    model: Any, student: LoadedModel, teacher: LoadedModel, corpus: CorpusSnapshot, case: KDCase
) -> float:
    data = build_kd_data(corpus.heldout, corpus, student.tokenizer, case.kd, case.training.seq_len)
    plan = DataPlan(data.segments, case.training, pad_token_id=0)
    loss_fn = kd_loss(case.kd, cache=None, teacher_model=teacher.model, teacher_segments=data.teacher_segments)
    model.eval()
    with torch.no_grad():
        parts = [loss_fn(model, plan.collate(rows)) for rows in plan.epoch(0)]
    return sum(float(p.total) * p.positions for p in parts) / sum(p.positions for p in parts)


def run_with_evaluation(
    tmp_path: Path,
    student: LoadedModel,
    teacher: LoadedModel,
    corpus: CorpusSnapshot,
    case: KDCase,
    run_dir: str,
    should_stop: Any = lambda: False,
    wrap_loss: Any = None,
) -> tuple[TrainOutcome, list[dict[str, Any]], list[Progress]]:
    """A run that also scores a held-out loss at evaluation points, recording every progress report.

    `wrap_loss(loss_fn) -> loss_fn` may wrap the training loss (to observe or disturb a step)."""
    data = build_kd_data(corpus.train, corpus, student.tokenizer, case.kd, case.training.seq_len)
    cache = build_cache(tmp_path, teacher, data, case)
    model = peft_student(student, case.lora)
    reports: list[Progress] = []
    try:
        outcome = train(
            model,
            DataPlan(data.segments, case.training, pad_token_id=0),
            (wrap_loss or (lambda loss: loss))(kd_loss(case.kd, cache=cache)),
            case.training,
            tmp_path / run_dir / "checkpoints",
            tmp_path / run_dir / "log.jsonl",
            on_progress=reports.append,
            should_stop=should_stop,
            evaluate=lambda trained: heldout_kd_loss(trained, student, teacher, corpus, case),
        )
    finally:
        model.unload()
    log = [json.loads(line) for line in outcome.log_path.read_text().splitlines()]
    return outcome, log, reports
