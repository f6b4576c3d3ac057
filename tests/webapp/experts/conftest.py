"""Experts of org A made as rows (page tests), or registered from a real tiny adapter (registration, download).

Storage lies in the test's folder. `tiny_adapter` saves a peft LoRA over the tiny base once per session, with
randomised lora_B so that it changes the logits, plus the files the exporter writes beside it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from tests.webapp.api.live_stack import (  # noqa: F401 - fixtures of the in-process engine (test_serving.py)
    engine_service,
    engine_url,
    expert_dirs,
    live_engine,
    model_cache_dir,
)
from tests.webapp.jobs.conftest import make_corpus, make_job
from webapp.experts import services
from webapp.experts.models import Expert, ExpertVersion
from webapp.jobs.models import DistillationJob, JobStatus
from webapp.tenants.models import Organization

TINY_SPEC = "tiny:llama-2l"
SIGNATURE = {"embedder": "minilm-l6-v2", "dim": 3, "centroids": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "counts": [7, 5]}
QA_EXAMPLES = [
    {"question": f"Question {n}?", "answer": f"Answer {n}", "reference": f"Ref {n}", "score": n / 10} for n in range(8)
]
METRICS = {
    "heldout": {
        "base": {"perplexity": 30.0, "bits_per_byte": 1.5},
        "expert": {"perplexity": 20.0, "bits_per_byte": 1.2},
        "teacher": {"perplexity": 10.0, "bits_per_byte": 0.9},
    },
    "gap_closed": 0.5,
    "kl_to_teacher": {"before": 2.0, "after": 1.0},
    "qa": {"rouge_l": {"base": 0.1, "expert": 0.4}, "source": "held-out", "examples": QA_EXAMPLES},
}
# What DistillConfig.to_json() writes, in part: the server's paths, and an evaluation set's path.
CONFIG = {
    "output_dir": "/srv/distillery/jobs/job-3/out",
    "model_cache_dir": "/srv/distillery/models",
    "checkpoint_dir": "/srv/distillery/jobs/job-3/out/checkpoints",
    "work_dir": "/srv/distillery/jobs/job-3/out/work",
    "model_roots": ["/srv/distillery/models/local"],
    "recipe": "qa",
    "teacher": {"type": "endpoint", "base_url": "https://llm.internal.acme.example/v1", "model": "acme-70b"},
    "lora": {"rank": 16, "alpha": 32},
    "evaluation": {"eval_set": "/srv/distillery/uploads/yardstick.jsonl", "max_eval_questions": 50},
}
QA_DATA = [{"question": "SECRET-QUESTION about leave?", "answer": "SECRET-ANSWER 25 days"}]


@pytest.fixture(autouse=True)
def expert_storage(settings: Any, tmp_path: Path) -> Any:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.STORAGE_BACKEND = "filesystem"
    # Nothing listens on port 9 (discard): every engine call fails to connect unless a test says otherwise.
    settings.INFERENCE_URL = "http://127.0.0.1:9"
    settings.INFERENCE_TIMEOUT_SECONDS = 2.0
    return settings


def store_files(version: ExpertVersion, files: dict[str, bytes]) -> None:
    prefix = services.storage_prefix(version)
    for name, data in files.items():
        default_storage.save(f"{prefix}/{name}", ContentFile(data))


def fake_files(name: str) -> dict[str, bytes]:
    """What an exported expert folder holds, with placeholder weights (the page tests never load them)."""
    return {
        "adapter_config.json": b'{"peft_type": "LORA"}',
        "adapter_model.safetensors": b"weights",
        "README.md": (
            f"# {name}\n\n<script>alert('card')</script>\n\n- **Teacher**: acme-70b @ https://llm.internal.acme.example/v1"
            "\n\n| model | ROUGE-L |\n|---|---|\n| expert | 0.400 |\n\n"
            "Best answers:\n\n| question | expert's answer | reference | ROUGE-L |\n|---|---|---|---|\n"
            "| SECRET-QUESTION? | SECRET-ANSWER | SECRET-REFERENCE | 0.900 |\n\n## Intended use\n"
        ).encode(),
        "base.json": json.dumps({"spec": TINY_SPEC, "content_hash": "ab" * 32}).encode(),
        "metrics.json": json.dumps(METRICS).encode(),
        "config.json": json.dumps(CONFIG).encode(),
        "signature.json": json.dumps(SIGNATURE).encode(),
        "qa_data.jsonl": "\n".join(json.dumps(row) for row in QA_DATA).encode(),
        "training_log.jsonl": b'{"step": 1, "loss": 2.0}\n',
    }


def make_expert(
    organization: Organization,
    name: str = "Leave policy",
    *,
    versions: int = 2,
    files: bool = True,
    **fields: Any,
) -> Expert:
    """An expert with `versions` versions (the last one active), rows made directly, files in storage."""
    expert = Expert.objects.create(
        organization=organization, name=name, slug=Expert.unique_slug(organization, name), **fields
    )
    version = None
    for number in range(1, versions + 1):
        version = ExpertVersion.objects.create(
            organization=organization,
            expert=expert,
            number=number,
            base_spec=TINY_SPEC,
            base_hash="ab" * 32,
            teacher_label="SmolLM2 (packaged)",
            recipe="qa",
            metrics={**METRICS, "gap_closed": 0.25 * number},
            signature=SIGNATURE,
            artifact_location="",
            size_bytes=1234,
        )
        version.artifact_location = services.artifact_location(services.storage_prefix(version))
        version.save(update_fields=["artifact_location"])
        if files:
            store_files(version, fake_files(name))
    expert.active_version = version
    expert.save(update_fields=["active_version"])
    return expert


@dataclass
class TinyAdapter:
    """A saved LoRA over the tiny base: the folder, and the logits the saving peft model gave for `input_ids`."""

    folder: Path
    input_ids: Any
    logits: Any
    content_hash: str


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory: pytest.TempPathFactory) -> TinyAdapter:
    import torch
    from peft import LoraConfig, get_peft_model

    from tests.workers.conftest import REPO_ROOT
    from workers.ml.catalog import CatalogConfig, load_model

    cache = REPO_ROOT / "var" / "test-model-cache"
    loaded = load_model(TINY_SPEC, CatalogConfig(cache_dir=cache, device="cpu"), progress=lambda *_: None)
    torch.manual_seed(0)
    model = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    model.eval()
    input_ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    folder = tmp_path_factory.mktemp("expert-out")
    model.save_pretrained(folder)
    content_hash = str(loaded.info.content_hash)
    (folder / "base.json").write_text(json.dumps({"spec": TINY_SPEC, "content_hash": content_hash}))
    (folder / "signature.json").write_text(json.dumps(SIGNATURE))
    (folder / "metrics.json").write_text(json.dumps(METRICS))
    (folder / "README.md").write_text("# Tiny expert\n")
    (folder / "config.json").write_text("{}")
    (folder / "qa_data.jsonl").write_text(json.dumps(QA_DATA[0]) + "\n")
    return TinyAdapter(folder=folder, input_ids=input_ids, logits=logits, content_hash=content_hash)


def succeeded_job(organization: Organization, adapter: TinyAdapter, tmp_path: Path, **fields: Any) -> DistillationJob:
    """A succeeded job of `organization` whose output folder is a copy of the tiny adapter."""
    out = tmp_path / f"job-out-{DistillationJob.objects.count() + 1}"
    shutil.copytree(adapter.folder, out)
    corpus = fields.pop("corpus", None) or make_corpus(organization, name=f"Corpus {out.name}")
    return make_job(corpus, JobStatus.SUCCEEDED, artifact_dir=str(out), recipe="qa", **fields)
