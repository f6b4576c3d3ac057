"""The issue's "done when", end to end on the real stack in-process: a distillation job finishes → its expert is
in the org's mixture → a question about its corpus is routed to it (scores visible) and answered, streamed,
through the official `openai` client with an API token → another org never sees it."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import openai
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from tests.webapp.api.live_stack import CORPORA
from tests.webapp.conftest import Cast
from webapp.corpora.models import Chunk, Corpus, CorpusVersion, Document
from webapp.experts.models import Expert
from webapp.experts.services import member_experts
from webapp.jobs import services as job_services
from webapp.jobs.models import JobStatus
from webapp.tenants.models import ApiToken
from workers.tasks.jobs import run_job

pytestmark = [pytest.mark.realmodel, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def tiny_jobs(settings: Any, tmp_path: Path) -> None:
    settings.MOE_BASE_MODEL = "tiny:llama-2l"
    settings.GLOBAL_TEACHERS = ["Tiny teacher=tiny:llama-2l"]
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.CHECKPOINTS_DIR = tmp_path / "checkpoints"
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.JOB_HEARTBEAT_SECONDS = 3600


def networking_corpus(cast: Cast) -> Corpus:
    """A ready corpus of IT-networking text (a few documents, one held out)."""
    corpus = Corpus.objects.create(organization=cast.org, name="IT handbook")
    version = CorpusVersion.objects.create(
        organization=cast.org, corpus=corpus, number=1, status=CorpusVersion.Status.READY, stats={"tokens": 2000}
    )
    texts = CORPORA["networking"]
    for number in range(4):
        split = "heldout" if number == 0 else "train"
        document = Document.objects.create(version=version, name=f"network-{number}.md", kind="text", split=split)
        Chunk.objects.bulk_create(
            Chunk(version=version, document=document, position=i, text=text, tokens=30, split=split)
            for i, text in enumerate(texts[number:] + texts[:number])
        )
    corpus.current_version = version
    corpus.status = Corpus.Status.READY
    corpus.save()
    return corpus


def test_a_finished_job_s_expert_answers_routed_questions_for_its_org_only(
    cast: Cast, tiny_jobs: None, live_engine: str, web_url: str, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False):
        job = job_services.create_job(
            cast.org,
            cast.member,
            name="IT handbook",
            corpus=networking_corpus(cast),
            teacher_value="global:0",
            recipe="kd",
            options={"epochs": 1, "lora_rank": 4, "seq_len": 64, "alpha": 0.5, "checkpoint_every": 50},
        )
    run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error

    expert = Expert.objects.get(organization=cast.org)
    assert job.expert_id == expert.pk
    assert expert.slug == "it-handbook"
    assert expert.active_version.number == 1
    assert expert.active_version.signature["embedder"] == "packaged:all-minilm-l6-v2"
    assert (Path(expert.active_version.artifact_location) / "adapter_model.safetensors").is_file()
    assert member_experts(cast.org) == [expert]

    _, token_a = ApiToken.issue(organization=cast.org, name="A", created_by=cast.owner)
    _, token_b = ApiToken.issue(organization=cast.other_org, name="B", created_by=cast.outsider)
    client_a = openai.OpenAI(base_url=f"{web_url}/v1", api_key=token_a, max_retries=0, timeout=60)
    client_b = openai.OpenAI(base_url=f"{web_url}/v1", api_key=token_b, max_retries=0, timeout=60)
    question = [{"role": "user", "content": "How do I configure the VPN client and its certificate?"}]

    chunks = list(client_a.chat.completions.create(model="moe", messages=question, max_tokens=6, stream=True))
    routing = chunks[0].model_extra["routing"]
    assert [chosen["model"] for chosen in routing["experts"]] == ["it-handbook"]
    assert routing["scores"][0]["model"] == "it-handbook"
    assert routing["scores"][0]["score"] > 0.3
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)

    assert "it-handbook" not in [model.id for model in client_b.models.list()]
    other = client_b.chat.completions.create(model="moe", messages=question, max_tokens=2)
    assert other.model_extra["routing"]["scores"] == []
    with pytest.raises(openai.NotFoundError):
        client_b.chat.completions.create(model="it-handbook", messages=question, max_tokens=2)


def test_a_script_distils_and_downloads_an_expert_through_the_rest_api_alone(
    cast: Cast, tiny_jobs: None, settings: Any, tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    """Upload → ingest → job → the expert's zip, each step a REST call with a token; the zip loads in plain peft."""
    import torch
    from peft import PeftModel

    from tests.workers.conftest import REPO_ROOT
    from workers.ml.catalog import CatalogConfig, load_model
    from workers.tasks.ingest import ingest_corpus_version

    settings.STORAGE_BACKEND = "filesystem"
    _, token = ApiToken.issue(organization=cast.org, name="CI", created_by=cast.owner)
    api = Client(headers={"Authorization": f"Bearer {token}"})
    texts = CORPORA["networking"]

    corpus = api.post("/api/v1/corpora", {"name": "IT handbook"}, content_type="application/json").json()
    files = [SimpleUploadedFile(f"network-{n}.md", "\n\n".join(texts[n:] + texts[:n]).encode() * 3) for n in range(4)]
    uploaded = api.post(f"/api/v1/corpora/{corpus['id']}/files", {"files": files})
    assert uploaded.status_code == 201, uploaded.content
    with django_capture_on_commit_callbacks(execute=False):
        version = api.post(f"/api/v1/corpora/{corpus['id']}/ingest").json()
    ingest_corpus_version(CorpusVersion.objects.get(corpus_id=corpus["id"], number=version["number"]).pk)
    assert api.get(f"/api/v1/corpora/{corpus['id']}/versions/1").json()["status"] == "ready"

    body = {"name": "IT handbook", "corpus": corpus["id"], "teacher": "global:0", "options": {"lora_rank": 4}}
    with django_capture_on_commit_callbacks(execute=False):
        job = api.post("/api/v1/jobs", body, content_type="application/json").json()
    run_job(job["id"])
    job = api.get(f"/api/v1/jobs/{job['id']}").json()
    assert job["status"] == "succeeded", job["error"]
    assert job["expert"]["model"] == "it-handbook"
    assert job["expert"]["version"] == 1

    expert = api.get(f"/api/v1/experts/{job['expert']['id']}").json()
    assert expert["versions"][0]["job"] == job["id"]
    download = api.get(f"/api/v1/experts/{expert['id']}/download")
    zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content))).extractall(tmp_path / "unzipped")
    base = load_model("tiny:llama-2l", CatalogConfig(cache_dir=REPO_ROOT / "var" / "test-model-cache", device="cpu"))
    input_ids = base.tokenizer("Configure the VPN client", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = base.model(input_ids=input_ids).logits
        tuned = PeftModel.from_pretrained(base.model, tmp_path / "unzipped" / "it-handbook-v1").eval()
        assert not torch.equal(tuned(input_ids=input_ids).logits, plain)  # the trained adapter changes the logits
