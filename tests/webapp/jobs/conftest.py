"""A ready corpus of org A, job rows made directly in any status, teachers, API clients, storage in tmp."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.test import Client
from django.utils import timezone

from tests.webapp.conftest import Cast
from webapp.corpora.models import Corpus, CorpusVersion
from webapp.jobs import services
from webapp.jobs.models import DistillationJob, JobStatus, Teacher
from webapp.tenants.models import ApiToken, Organization

SECRET_KEY = "sk-test-SECRET-9876"
SHARED_SMOLLM = "SmolLM2 (packaged)=packaged:smollm2-135m-instruct"
SHARED_GEMMA = "Gemma 3 270M (packaged)=packaged:gemma3-270m"


@pytest.fixture(autouse=True)
def job_settings(settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Storage in the test's folder, two shared teachers, known limits, and a fixed training speed."""
    settings.MEDIA_ROOT = tmp_path / "media"
    assert Path(default_storage.path("x")).parent == tmp_path / "media"
    settings.GLOBAL_TEACHERS = [SHARED_SMOLLM, SHARED_GEMMA]
    settings.MOE_BASE_MODEL = "packaged:smollm2-135m-instruct"
    settings.ORG_MAX_ACTIVE_JOBS = 2
    settings.ORG_MONTHLY_COMPUTE_SECONDS = 200 * 3600
    settings.TEACHER_ENDPOINT_ALLOWED_HOSTS = []
    settings.TEACHER_ENDPOINT_ALLOW_PRIVATE = False
    # Other suites refine the measured speed in the shared cache: estimates here use the default.
    monkeypatch.setattr(
        services,
        "measured_tokens_per_s",
        lambda *, cross_tokenizer=False: services.cross_tokenizer_tokens_per_s(250.0) if cross_tokenizer else 250.0,
    )
    monkeypatch.setattr(
        services, "measured_seconds", lambda what, kind: services.DEFAULT_STAGE_SECONDS[f"cpu:{what}:{kind}"]
    )
    return settings


def make_corpus(organization: Organization, name: str = "Handbook", *, tokens: int = 10_000) -> Corpus:
    """A corpus with one ready version (10,000 tokens, 40 chunks, 10 % held out), made its current one."""
    corpus = Corpus.objects.create(organization=organization, name=name, status=Corpus.Status.READY)
    version = CorpusVersion.objects.create(
        organization=organization,
        corpus=corpus,
        number=1,
        status=CorpusVersion.Status.READY,
        stats={"tokens": tokens, "chunks": 40, "heldout_share": 0.1},
    )
    corpus.current_version = version
    corpus.save(update_fields=["current_version"])
    return corpus


@pytest.fixture(autouse=True)
def _resolve_example_com(public_dns: None) -> None:
    """Every test here: *.example.com is public (tests/webapp/conftest.py)."""


@pytest.fixture
def corpus(cast: Cast) -> Corpus:
    return make_corpus(cast.org)


def make_job(
    corpus: Corpus, status: str = JobStatus.QUEUED, name: str = "Leave expert", **fields: Any
) -> DistillationJob:
    """A job row as the worker would have left it in `status` (no task is sent)."""
    running_or_done = status not in (JobStatus.QUEUED,)
    defaults: dict[str, Any] = {
        "organization": corpus.organization,
        "name": name,
        "corpus": corpus,
        "corpus_version": corpus.current_version,
        "teacher_snapshot": {
            "source": "global",
            "name": "SmolLM2 (packaged)",
            "kind": "catalog",
            "spec": "packaged:smollm2-135m-instruct",
        },
        "student": "packaged:smollm2-135m-instruct",
        "recipe": DistillationJob.Recipe.KD,
        "options": {"epochs": 1.0, "lora_rank": 16, "divergence": "forward_kl", "alpha": 0.5, "context": True},
        "status": status,
        "attempt": 1 if running_or_done else 0,
        "started_at": timezone.now() - timedelta(minutes=5) if running_or_done else None,
        "finished_at": timezone.now() if status in (JobStatus.SUCCEEDED, JobStatus.FAILED) else None,
    }
    defaults.update(fields)
    return DistillationJob.objects.create(**defaults)


def make_endpoint_teacher(
    organization: Organization, *, base_url: str = "https://api.example.com/v1", **fields: Any
) -> Teacher:
    teacher = Teacher(
        organization=organization,
        name=fields.pop("name", "Big model"),
        kind=Teacher.Kind.ENDPOINT,
        base_url=base_url,
        model_name=fields.pop("model_name", "big-model"),
        **fields,
    )
    teacher.set_api_key(SECRET_KEY)
    teacher.save()
    return teacher


def bearer(plaintext: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {plaintext}"}


class Api:
    """A client that sends one org's token with every request."""

    def __init__(self, plaintext: str) -> None:
        self.client, self.headers = Client(), bearer(plaintext)

    def get(self, url: str) -> Any:
        return self.client.get(url, headers=self.headers)

    def post(self, url: str) -> Any:
        return self.client.post(url, headers=self.headers)

    def post_json(self, url: str, data: Any) -> Any:
        return self.client.post(url, data, content_type="application/json", headers=self.headers)


@pytest.fixture
def api(cast: Cast) -> Api:
    return Api(ApiToken.issue(organization=cast.org, name="A", created_by=cast.owner)[1])


@pytest.fixture
def outsider_api(cast: Cast) -> Api:
    return Api(ApiToken.issue(organization=cast.other_org, name="B", created_by=cast.outsider)[1])
