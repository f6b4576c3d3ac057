"""Recomputing an expert version's routing signature with the platform embedder (after MOE_EMBEDDER changed)."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command

from tests.webapp.api.live_stack import CORPORA
from tests.webapp.conftest import Cast
from webapp.corpora.models import Chunk, Corpus, CorpusVersion, Document
from webapp.experts.models import Expert, ExpertVersion
from webapp.experts.services import storage_prefix
from webapp.jobs.models import DistillationJob, JobStatus
from workers.tasks.experts import recompute_signature

pytestmark = [pytest.mark.django_db, pytest.mark.realmodel]
OLD = {"embedder": "packaged:old-embedder", "dim": 2, "centroids": [[1.0, 0.0]], "counts": [3]}


@pytest.fixture
def version(cast: Cast, settings: Any, tmp_path: Path) -> ExpertVersion:
    settings.MEDIA_ROOT = tmp_path / "media"
    corpus = Corpus.objects.create(organization=cast.org, name="Kitchen", status=Corpus.Status.READY)
    corpus_version = CorpusVersion.objects.create(
        organization=cast.org, corpus=corpus, number=1, status=CorpusVersion.Status.READY
    )
    document = Document.objects.create(version=corpus_version, name="recipes.md", kind="text", split="train")
    Chunk.objects.bulk_create(
        Chunk(version=corpus_version, document=document, position=i, text=text, tokens=20, split="train")
        for i, text in enumerate(CORPORA["cooking"])
    )
    job = DistillationJob.objects.create(
        organization=cast.org, name="Kitchen", corpus=corpus, corpus_version=corpus_version, student="tiny:llama-2l",
        status=JobStatus.SUCCEEDED,
    )  # fmt: skip
    expert = Expert.objects.create(organization=cast.org, name="Kitchen", slug="kitchen")
    made = ExpertVersion.objects.create(
        organization=cast.org, expert=expert, number=1, job=job, base_spec="tiny:llama-2l", base_hash="ab",
        recipe="kd", artifact_location="",
    )  # fmt: skip
    made.set_signature(OLD)
    made.save()
    return made


def test_it_recomputes_the_signature_with_the_platform_embedder(version: ExpertVersion) -> None:
    old_hash = version.signature_hash
    outcome = recompute_signature(version.pk)
    version.refresh_from_db()
    assert outcome["embedder"] == "packaged:all-minilm-l6-v2"
    assert version.signature["embedder"] == "packaged:all-minilm-l6-v2"
    assert version.signature["dim"] == 384
    assert len(version.signature["centroids"]) == 1  # as many centroids as before
    assert version.signature_hash != old_hash
    assert version.engine_ref()["signature"] == version.signature_hash
    with default_storage.open(f"{storage_prefix(version)}/signature.json") as handle:
        assert json.loads(handle.read()) == version.signature


def test_the_command_picks_only_versions_of_another_embedder(version: ExpertVersion) -> None:
    out = StringIO()
    call_command("recompute_signatures", "--now", stdout=out)
    assert "1 signature(s) recomputed" in out.getvalue()
    out = StringIO()
    call_command("recompute_signatures", "--now", stdout=out)
    assert "0 signature(s) recomputed" in out.getvalue()


def test_a_version_without_its_corpus_keeps_its_signature(version: ExpertVersion) -> None:
    DistillationJob.objects.filter(pk=version.job_id).update(corpus_version=None)
    assert recompute_signature(version.pk)["skipped"] == "no corpus version"
    version.refresh_from_db()
    assert version.signature == OLD
