"""Job pages: the new-job form (options, pinned version, evaluation set, refusals, estimate, clone), the list with
its filter and usage, the job page with its polled panel (stages, progress, loss curve, logs, errors, metrics),
cancel and retry, notifications."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from tests.webapp.conftest import Cast, make_user
from tests.webapp.jobs.conftest import make_corpus, make_endpoint_teacher, make_job
from webapp.corpora.models import Corpus, CorpusVersion
from webapp.jobs import services
from webapp.jobs.models import DistillationJob, JobStatus, Notification, Teacher
from webapp.jobs.presenters import humanize_seconds, loss_curve

pytestmark = pytest.mark.django_db


def job_form(corpus: Corpus, **changes: Any) -> dict[str, Any]:
    """The new-job form as a browser would send it with the defaults (shared teacher 0: SmolLM2, recipe kd)."""
    data: dict[str, Any] = {
        "name": "Leave expert",
        "corpus": corpus.pk,
        "teacher": "global:0",
        "recipe": "kd",
        "epochs": "1",
        "token_budget": "",
        "lora_rank": "16",
        "divergence": "forward_kl",
        "alpha": "0.5",
        "context": "on",
        "pairs_per_chunk": "2",
        "self_reward": "on",
        "reward_threshold": "3",
        "spend_cap_usd": "",
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


def context_box(page: str) -> str:
    """The rendered "context" checkbox of the form."""
    [tag] = re.findall(r'<input type="checkbox" name="context"[^>]*>', page)
    return tag


def form_errors(response: Any) -> list[str]:
    form = response.context["form"]
    return [str(error) for errors in form.errors.values() for error in errors]


# ------------------------------------------------------------------ the new-job form
def test_it_creates_a_job_from_the_form_with_its_options_and_pinned_version(
    cast: Cast, corpus: Corpus, django_capture_on_commit_callbacks: Any
) -> None:
    client = cast.client_for("member")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(
            reverse("jobs:create"),
            job_form(corpus, epochs="2", lora_rank="32", divergence="jsd", alpha="0.3", context=None),
        )
    job = DistillationJob.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("jobs:detail", args=[job.pk])
    assert len(callbacks) == 1  # the task is sent on commit only (not sent here)
    assert (job.organization, job.created_by, job.status, job.name) == (cast.org, cast.member, "queued", "Leave expert")
    assert (job.corpus, job.corpus_version) == (corpus, corpus.current_version)
    assert job.options == {
        "epochs": 2.0,
        "token_budget": None,
        "lora_rank": 32,
        "divergence": "jsd",
        "alpha": 0.3,
        "context": False,
        "pairs_per_chunk": 2,
        "self_reward": "on",
        "reward_threshold": 3,
        "reasoning": False,
    }
    assert job.teacher_snapshot == {
        "source": "global",
        "name": "SmolLM2 (packaged)",
        "kind": "catalog",
        "spec": "packaged:smollm2-135m-instruct",
    }
    assert (job.recipe, job.student, job.eval_set_name, job.spend_cap_usd) == (
        "kd",
        "packaged:smollm2-135m-instruct",
        "",
        None,
    )
    # A later ingest does not move the job: it keeps the version it was created on.
    newer = CorpusVersion.objects.create(
        organization=cast.org, corpus=corpus, number=2, status="ready", stats={"tokens": 5}
    )
    corpus.current_version = newer
    corpus.save()
    job.refresh_from_db()
    assert job.corpus_version.number == 1


def test_it_fills_the_defaults_of_empty_settings(
    cast: Cast, corpus: Corpus, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False):
        cast.client_for("owner").post(
            reverse("jobs:create"),
            job_form(corpus, recipe="qa", epochs="", alpha="", pairs_per_chunk="", token_budget="50000"),
        )
    job = DistillationJob.objects.get()
    assert job.options["epochs"] == 1.0
    assert job.options["alpha"] == 0.5
    assert job.options["pairs_per_chunk"] == 2
    assert job.options["token_budget"] == 50000
    assert job.options["reasoning"] is False
    assert job.recipe == "qa"


def test_it_takes_step_by_step_reasoning_for_a_qa_job_and_shows_it(
    cast: Cast, corpus: Corpus, django_capture_on_commit_callbacks: Any
) -> None:
    client = cast.client_for("member")
    with django_capture_on_commit_callbacks(execute=False):
        client.post(reverse("jobs:create"), job_form(corpus, recipe="qa", reasoning="on"))
    job = DistillationJob.objects.get()
    assert job.options["reasoning"] is True
    page = client.get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert "<dt>Step-by-step reasoning</dt><dd>on</dd>" in page


def test_it_lets_a_qa_job_choose_whether_its_teacher_grades_its_pairs_and_shows_it(
    cast: Cast, corpus: Corpus, django_capture_on_commit_callbacks: Any
) -> None:
    client = cast.client_for("member")
    form = client.get(reverse("jobs:create")).content.decode()
    chosen = re.search(r'<select[^>]*name="self_reward"[^>]*>.*?<option value="(\w+)" selected>', form, re.S)
    assert chosen is not None
    assert chosen.group(1) == "auto"  # the teacher's size decides
    with django_capture_on_commit_callbacks(execute=False):
        client.post(reverse("jobs:create"), job_form(corpus, recipe="qa", self_reward="off"))
        client.post(reverse("jobs:create"), job_form(corpus, recipe="qa", self_reward=None, name="Default"))
    job, default = DistillationJob.objects.order_by("pk")
    assert (job.options["self_reward"], default.options["self_reward"]) == ("off", "auto")
    assert "<dt>Self-reward</dt><dd>off</dd>" in client.get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert "<dt>Self-reward</dt><dd>auto</dd>" in client.get(reverse("jobs:detail", args=[default.pk])).content.decode()
    # A qa job from before the option was graded, and says so; one from before auto stored the box's value.
    older = make_job(corpus, JobStatus.SUCCEEDED, recipe="qa", options={"epochs": 1.0, "lora_rank": 16})
    assert "<dt>Self-reward</dt><dd>on</dd>" in client.get(reverse("jobs:detail", args=[older.pk])).content.decode()
    boxed = make_job(corpus, JobStatus.SUCCEEDED, recipe="qa", options={"epochs": 1.0, "self_reward": False})
    assert "<dt>Self-reward</dt><dd>off</dd>" in client.get(reverse("jobs:detail", args=[boxed.pk])).content.decode()


def test_it_shows_the_defaults_and_only_ready_corpora_of_the_org(cast: Cast, corpus: Corpus) -> None:
    Corpus.objects.create(organization=cast.org, name="Still uploading")
    make_corpus(cast.other_org, "Globex handbook")
    response = cast.client_for("member").get(reverse("jobs:create"))
    page = response.content.decode()
    corpus_field = response.context["form"].fields["corpus"]
    assert [c.name for c in corpus_field.queryset] == ["Handbook"]
    assert "Handbook (v1, 10,000 tokens)" in page
    assert "Still uploading" not in page
    assert "Globex handbook" not in page
    assert 'name="epochs" value="1.0"' in page
    assert '<option value="16" selected>16</option>' in page
    assert 'name="alpha" value="0.5"' in page
    assert context_box(page).endswith(" checked>")
    assert 'name="pairs_per_chunk" value="2"' in page
    assert 'name="reward_threshold" value="3"' in page
    assert "Passes over the training chunks (default 1)." in page
    # The estimate panel asks again on every change; the Estimate button does the same without JavaScript.
    assert f'hx-get="{reverse("jobs:estimate")}"' in page
    assert f'formaction="{reverse("jobs:estimate")}" formmethod="get"' in page


def test_it_stores_a_valid_evaluation_set_under_the_orgs_folder(
    cast: Cast, corpus: Corpus, django_capture_on_commit_callbacks: Any
) -> None:
    lines = [{"question": "How many days of leave?", "answer": "25."}, {"question": "Who approves?", "answer": "HR"}]
    content = "\n".join(json.dumps(line) for line in lines).encode() + b"\n\n"
    upload = SimpleUploadedFile("eval.jsonl", content, content_type="application/jsonl")
    with django_capture_on_commit_callbacks(execute=False):
        cast.client_for("member").post(reverse("jobs:create"), {**job_form(corpus), "eval_set": upload})
    job = DistillationJob.objects.get()
    assert re.fullmatch(rf"jobs/org-{cast.org.pk}/eval-[0-9a-f]{{32}}\.jsonl", job.eval_set_name)
    with default_storage.open(job.eval_set_name, "rb") as stored:
        assert stored.read() == content


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b'{"question": "Q?"}\n', 'Line 1 needs a "question" and an "answer" (non-empty text).'),
        (b'{"question": "Q?", "answer": "A"}\nnot json\n', "Line 2 is not JSON."),
        (b'["question", "answer"]\n', 'Line 1 needs a "question" and an "answer" (non-empty text).'),
        (b"\n\n", "The evaluation set has no questions."),
    ],
)
def test_it_refuses_an_evaluation_set_without_questions_and_answers(
    cast: Cast, corpus: Corpus, content: bytes, error: str, tmp_path: Path
) -> None:
    upload = SimpleUploadedFile("eval.jsonl", content)
    response = cast.client_for("member").post(reverse("jobs:create"), {**job_form(corpus), "eval_set": upload})
    assert response.status_code == 200
    assert form_errors(response) == [error]
    assert not DistillationJob.objects.exists()
    assert not (tmp_path / "media" / "jobs").exists()


def test_it_refuses_kd_with_a_teacher_of_another_tokenizer(
    cast: Cast, corpus: Corpus, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(services, "cross_tokenizer_kd_available", lambda: False)
    upload = SimpleUploadedFile("eval.jsonl", b'{"question": "Q?", "answer": "A"}\n')
    client = cast.client_for("member")
    response = client.post(reverse("jobs:create"), {**job_form(corpus, teacher="global:1"), "eval_set": upload})
    assert response.status_code == 200
    expected = (
        "Recipe kd needs a teacher with the student's tokenizer: Gemma 3 270M (packaged) uses gemma3, the student "
        "smollm2. It is a base model without a chat template, so recipe qa cannot use it either: choose another "
        "teacher, or ask the operator to install the gold extra (cross-tokenizer kd)."
    )
    assert response.context["form"].non_field_errors() == [expected]
    assert "Recipe kd needs a teacher with the student&#x27;s tokenizer" in response.content.decode()
    assert not DistillationJob.objects.exists()
    # The evaluation set stored for the refused job is removed again.
    assert list((tmp_path / "media" / "jobs").rglob("*.jsonl")) == []
    # Nor can it write qa pairs: a base model does not answer prompts.
    refused = client.post(reverse("jobs:create"), job_form(corpus, teacher="global:1", recipe="qa"))
    assert refused.context["form"].non_field_errors() == [
        "Recipe qa needs a teacher that answers prompts: Gemma 3 270M (packaged) is a base model without a chat "
        "template. Choose recipe kd for this teacher, or an instruct model for qa."
    ]
    assert not DistillationJob.objects.exists()
    # An instruct model with another tokenizer is refused for kd with the advice to choose qa.
    other = Teacher.objects.create(
        organization=cast.org, name="Qwen", kind=Teacher.Kind.CATALOG, spec="hf:org/qwen2.5-1.5b-instruct"
    )
    monkeypatch.setattr(services, "tokenizer_family", lambda spec: "qwen2" if "qwen" in spec else "smollm2")
    response = client.post(reverse("jobs:create"), job_form(corpus, teacher=f"org:{other.pk}"))
    assert response.context["form"].non_field_errors()[0].endswith("Choose recipe qa for this teacher.")
    accepted = client.post(reverse("jobs:create"), job_form(corpus, teacher=f"org:{other.pk}", recipe="qa"))
    assert accepted.status_code == 302


def test_it_refuses_a_job_beyond_the_orgs_active_limit(cast: Cast, corpus: Corpus) -> None:
    make_job(corpus, JobStatus.QUEUED, name="One")
    make_job(corpus, JobStatus.TRAINING, name="Two")
    make_job(make_corpus(cast.other_org, "Theirs"), JobStatus.TRAINING, name="Theirs")
    response = cast.client_for("member").post(reverse("jobs:create"), job_form(corpus))
    assert response.context["form"].non_field_errors() == [
        "Your organization already has 2 job(s) queued or running, the most allowed at once (2): wait for one to "
        "finish or cancel one."
    ]
    assert DistillationJob.objects.for_org(cast.org).count() == 2


def test_it_refuses_a_job_once_the_months_compute_is_spent(cast: Cast, corpus: Corpus, settings: Any) -> None:
    settings.ORG_MONTHLY_COMPUTE_SECONDS = 3600
    make_job(corpus, JobStatus.SUCCEEDED, compute_seconds=3700)
    response = cast.client_for("member").post(reverse("jobs:create"), job_form(corpus))
    assert response.context["form"].non_field_errors() == [
        "Your organization used 1.0 of its 1 compute hours this month."
    ]


def test_it_refuses_another_orgs_teacher_and_corpus(cast: Cast, corpus: Corpus) -> None:
    theirs = make_endpoint_teacher(cast.other_org, name="Theirs")
    their_corpus = make_corpus(cast.other_org, "Theirs")
    client = cast.client_for("member")
    response = client.post(reverse("jobs:create"), job_form(corpus, teacher=f"org:{theirs.pk}"))
    assert form_errors(response) == [f"Select a valid choice. org:{theirs.pk} is not one of the available choices."]
    response = client.post(reverse("jobs:create"), job_form(their_corpus))
    assert form_errors(response) == ["Select a valid choice. That choice is not one of the available choices."]
    assert not DistillationJob.objects.exists()


# ------------------------------------------------------------------ the estimate
def test_it_estimates_tokens_time_and_cost_for_a_priced_endpoint(cast: Cast, corpus: Corpus) -> None:
    teacher = make_endpoint_teacher(cast.org, price_input_per_million=2, price_output_per_million=4)
    query = f"?corpus={corpus.pk}&teacher=org:{teacher.pk}&recipe=kd&epochs=2"
    response = cast.client_for("member").get(reverse("jobs:estimate") + query, headers={"HX-Request": "true"})
    body = response.content.decode()
    assert [t.name for t in response.templates] == ["jobs/_estimate.html"]
    # 9,000 training tokens (10 % held out) × 2 epochs = 18,000 at 250 tokens/s, + a teacher pass of 9,000 at the
    # training rate (before a finished job measured the teacher's), + the evaluation (60 s with an endpoint
    # teacher): 72 + 36 + 60 s.
    assert "<dt>Training tokens</dt><dd>18000</dd>" in body
    assert "about 2 min 48 s" in body
    # kd through an endpoint reads twice the training tokens (18,000) at the dearer price ($4 / M): $0.07.
    assert "<dt>Teacher tokens</dt><dd>about 18000</dd>" in body
    assert "<dt>Expected teacher cost</dt><dd>about $0.07</dd>" in body


def test_it_counts_only_the_chunks_a_budget_under_one_epoch_trains_on_for_a_kd_teacher(
    cast: Cast, corpus: Corpus
) -> None:
    teacher = make_endpoint_teacher(cast.org, price_input_per_million=2, price_output_per_million=4)
    query = f"?corpus={corpus.pk}&teacher=org:{teacher.pk}&recipe=kd&token_budget=3000"
    body = cast.client_for("member").get(reverse("jobs:estimate") + query, headers={"HX-Request": "true"})
    text = body.content.decode()
    # 3,000 of the 9,000 training tokens: the teacher reads those (with their context, twice as many tokens), and
    # its pass takes 3,000 / 250 s on top of training's 3,000 / 250 s, then 60 s of evaluation.
    assert "<dt>Training tokens</dt><dd>3000</dd>" in text
    assert "<dt>Teacher tokens</dt><dd>about 6000</dd>" in text
    assert "about 1 min 24 s" in text


def test_it_counts_grading_and_evaluation_in_a_qa_jobs_teacher_tokens(cast: Cast, corpus: Corpus) -> None:
    teacher = make_endpoint_teacher(cast.org, price_input_per_million=1, price_output_per_million=1)
    query = f"?corpus={corpus.pk}&teacher=org:{teacher.pk}&recipe=qa&epochs=1&pairs_per_chunk=2&self_reward=on"
    body = cast.client_for("member").get(reverse("jobs:estimate") + query, headers={"HX-Request": "true"})
    # 9,000 training tokens in 40 chunks, 2 pairs each: writing 9,000 + 40 × (150 + 2 × 100) = 23,000; grading
    # 2 × (9,000 + 40 × 250) = 38,000; evaluation 50 questions × 2,000 = 100,000.
    assert "<dt>Teacher tokens</dt><dd>about 161000</dd>" in body.content.decode()
    assert "<dt>Expected teacher cost</dt><dd>about $0.16</dd>" in body.content.decode()
    # With reasoning each pair carries ~150 more tokens: writing 9,000 + 40 × (150 + 2 × 250) = 35,000; grading
    # 2 × (9,000 + 40 × 400) = 50,000; evaluation 100,000.
    body = cast.client_for("member").get(
        reverse("jobs:estimate") + query + "&reasoning=on", headers={"HX-Request": "true"}
    )
    assert "<dt>Teacher tokens</dt><dd>about 185000</dd>" in body.content.decode()
    # Without self-reward nothing is graded: writing 23,000 + evaluation 100,000.
    body = cast.client_for("member").get(
        reverse("jobs:estimate") + query.replace("&self_reward=on", "&self_reward=off"), headers={"HX-Request": "true"}
    )
    assert "<dt>Teacher tokens</dt><dd>about 123000</dd>" in body.content.decode()
    # Auto (the default): an endpoint teacher grades.
    body = cast.client_for("member").get(
        reverse("jobs:estimate") + query.replace("&self_reward=on", ""), headers={"HX-Request": "true"}
    )
    assert "<dt>Teacher tokens</dt><dd>about 161000</dd>" in body.content.decode()


def test_it_counts_only_the_chunks_a_qa_budget_needs_pairs_from(cast: Cast, corpus: Corpus) -> None:
    teacher = make_endpoint_teacher(cast.org, price_input_per_million=1, price_output_per_million=1)
    query = f"?corpus={corpus.pk}&teacher=org:{teacher.pk}&recipe=qa&token_budget=2000&pairs_per_chunk=2&self_reward=on"
    body = cast.client_for("member").get(reverse("jobs:estimate") + query, headers={"HX-Request": "true"})
    text = body.content.decode()
    # An epoch of pairs is 40 chunks × 2 pairs × ~100 tokens = 8,000: a 2,000-token budget needs a quarter of the
    # chunks, 10 of them (2,250 of the 9,000 training tokens). Writing 2,250 + 10 × (150 + 2 × 100) = 5,750;
    # grading 2 × (2,250 + 10 × 250) = 9,500; evaluation 50 questions × 2,000 = 100,000.
    assert "<dt>Training tokens</dt><dd>2000</dd>" in text
    assert "<dt>Teacher tokens</dt><dd>about 115250</dd>" in text
    assert "<dt>Expected teacher cost</dt><dd>about $0.12</dd>" in text


def test_it_times_a_qa_job_by_the_chunks_its_teacher_writes_about_and_its_evaluation(
    cast: Cast, corpus: Corpus
) -> None:
    query = f"?corpus={corpus.pk}&teacher=global:0&recipe=qa&token_budget=2000&pairs_per_chunk=2"
    text = cast.client_for("member").get(reverse("jobs:estimate") + query, headers={"HX-Request": "true"})
    # A quarter of the 40 chunks (see above) at 5 s each for a local teacher on a CPU, 2,000 tokens of training
    # at 250 tokens/s and a 300 s evaluation: 50 + 8 + 300 s.
    assert "<dt>Estimated time</dt><dd>about 5 min 58 s</dd>" in text.content.decode()  # 358 s


def test_it_learns_training_speed_qa_chunk_time_and_evaluation_time_from_a_finished_job(
    cast: Cast, corpus: Corpus
) -> None:
    keys = ["jobs:tokens-per-s:cpu", "jobs:seconds:cpu:qa_chunk:local", "jobs:seconds:cpu:eval_qa:local"]
    cache.delete_many(keys)
    metrics = {
        "training": {"train_tokens": 3000, "resumed_from_step": None},
        "qa_data": {"chunks_done": 16},
        "stage_seconds": {"loading": 20.0, "generating": 160.0, "training": 30.0, "evaluating": 300.0},
    }
    job = make_job(corpus, JobStatus.SUCCEEDED, recipe=DistillationJob.Recipe.QA, metrics=metrics)
    services.record_job_speeds(job)
    assert cache.get_many(keys) == dict(zip(keys, [100.0, 10.0, 300.0], strict=True))
    # A second job moves the averages by 30 % of the difference.
    services.record_job_speeds(
        make_job(
            corpus,
            JobStatus.SUCCEEDED,
            recipe=DistillationJob.Recipe.QA,
            metrics={**metrics, "stage_seconds": {**metrics["stage_seconds"], "evaluating": 400.0}},
        )
    )
    assert cache.get("jobs:seconds:cpu:eval_qa:local") == pytest.approx(330.0)
    # A resumed job's times are its last attempt's only: not averaged in.
    resumed = {**metrics, "training": {"train_tokens": 3000, "resumed_from_step": 4}}
    services.record_job_speeds(make_job(corpus, JobStatus.SUCCEEDED, recipe=DistillationJob.Recipe.QA, metrics=resumed))
    assert cache.get("jobs:seconds:cpu:eval_qa:local") == pytest.approx(330.0)
    # Times that are no numbers change nothing and raise nothing (the job's notifications go on).
    odd = {**metrics, "stage_seconds": {"training": "slow", "evaluating": [1]}}
    services.record_job_speeds(make_job(corpus, JobStatus.SUCCEEDED, recipe=DistillationJob.Recipe.QA, metrics=odd))
    assert cache.get("jobs:seconds:cpu:eval_qa:local") == pytest.approx(330.0)
    cache.delete_many(keys)


def _estimated_kd_time(cast: Cast, corpus: Corpus, teacher: str) -> str:
    """The estimate panel's time for one epoch of recipe kd with `teacher`."""
    query = f"?corpus={corpus.pk}&teacher={teacher}&recipe=kd&epochs=1"
    page = cast.client_for("member").get(reverse("jobs:estimate") + query, headers={"HX-Request": "true"})
    found = re.search(r"<dt>Estimated time</dt><dd>(.*?)</dd>", page.content.decode())
    assert found is not None
    return found.group(1)


def test_it_learns_a_kd_teachers_speed_from_a_finished_job_and_times_the_next_pass_by_it(
    cast: Cast, corpus: Corpus
) -> None:
    keys = ["jobs:teacher-tokens-per-s:cpu:local", "jobs:teacher-tokens-per-s:cpu:endpoint", "jobs:tokens-per-s:cpu"]
    cache.delete_many(keys)

    def estimated() -> str:
        return _estimated_kd_time(cast, corpus, "global:0")

    # Training 9,000 / 250 s, the teacher at the training rate until measured, a 30 s evaluation: 36 + 36 + 30 s.
    assert estimated() == "about 1 min 42 s"
    metrics = {"teacher_pass": {"target_tokens": 9000}, "stage_seconds": {"loading": 5.0, "teacher": 18.0}}
    services.record_job_speeds(make_job(corpus, JobStatus.SUCCEEDED, metrics=metrics))
    assert cache.get("jobs:teacher-tokens-per-s:cpu:local") == pytest.approx(500.0)
    assert cache.get("jobs:teacher-tokens-per-s:cpu:endpoint") is None  # an endpoint's speed is its own
    assert estimated() == "about 1 min 24 s"  # 36 + 9,000 / 500 + 30 s
    # A run whose cache was on disk already computed nothing: no speed to learn from.
    reused = {"teacher_pass": {"target_tokens": 0}, "stage_seconds": {"teacher": 0.5}}
    services.record_job_speeds(make_job(corpus, JobStatus.SUCCEEDED, metrics=reused))
    assert cache.get("jobs:teacher-tokens-per-s:cpu:local") == pytest.approx(500.0)
    cache.delete_many(keys)


def test_it_times_kd_across_tokenizers_by_its_own_training_speed_and_learns_it_apart(
    cast: Cast, corpus: Corpus
) -> None:
    keys = ["jobs:tokens-per-s:cpu", "jobs:tokens-per-s:cpu:cross-tokenizer", "jobs:teacher-tokens-per-s:cpu:local"]
    cache.delete_many(keys)

    def estimated(teacher: str) -> str:
        return _estimated_kd_time(cast, corpus, teacher)

    # Gemma (global:1) and the SmolLM2 student: no teacher pass, training at 250 / CROSS_TOKENIZER_SLOWDOWN
    # tokens/s until measured, and a 30 s evaluation.
    slowdown = services.CROSS_TOKENIZER_SLOWDOWN
    assert estimated("global:1") == "about " + humanize_seconds(9000 / (250 / slowdown) + 30)
    assert estimated("global:0") == "about 1 min 42 s"  # SmolLM2 teaching itself: 36 + 36 + 30 s
    cross = {
        "training": {"train_tokens": 9000, "resumed_from_step": None, "cross_tokenizer": True},
        "stage_seconds": {"loading": 5.0, "teacher": 0.5, "training": 90.0},
    }
    services.record_job_speeds(make_job(corpus, JobStatus.SUCCEEDED, metrics=cross))
    assert cache.get("jobs:tokens-per-s:cpu:cross-tokenizer") == pytest.approx(100.0)
    assert cache.get("jobs:tokens-per-s:cpu") is None  # the other kd jobs' speed is not slowed by it
    assert estimated("global:1") == "about 2 min"  # 9,000 / 100 + 30 s
    assert estimated("global:0") == "about 1 min 42 s"
    cache.delete_many(keys)


def test_it_shows_no_cost_for_a_catalog_teacher_and_warns_of_a_refusal(
    cast: Cast, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "cross_tokenizer_kd_available", lambda: False)
    query = f"?corpus={corpus.pk}&teacher=global:1&recipe=kd"
    body = cast.client_for("member").get(reverse("jobs:estimate") + query, headers={"HX-Request": "true"})
    text = body.content.decode()
    assert "<dt>Training tokens</dt><dd>9000</dd>" in text
    assert "Expected teacher cost" not in text
    assert "Recipe kd needs a teacher with the student&#x27;s tokenizer" in text


def test_it_advises_a_larger_teacher_for_qa_but_not_for_kd_or_an_endpoint(cast: Cast, corpus: Corpus) -> None:
    member = cast.client_for("member")

    def panel(teacher: str, recipe: str) -> str:
        query = f"?corpus={corpus.pk}&teacher={teacher}&recipe={recipe}"
        return member.get(reverse("jobs:estimate") + query, headers={"HX-Request": "true"}).content.decode()

    advice = panel("global:0", "qa")
    assert "SmolLM2 (packaged) has about 135M parameters: small teachers write poor" in advice
    assert "Gemma 3 270M (packaged) has about 268M parameters" in panel("global:1", "qa")
    assert "about 1–3B parameters or more, or an endpoint model" in advice
    assert "small teachers" not in panel("global:0", "kd")
    assert "small teachers" not in panel(f"org:{make_endpoint_teacher(cast.org).pk}", "qa")


def test_it_tells_what_kd_across_tokenizers_costs_only_for_such_a_teacher(
    cast: Cast, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    member = cast.client_for("member")

    def panel(teacher: str) -> str:
        query = f"?corpus={corpus.pk}&teacher={teacher}&recipe=kd"
        return member.get(reverse("jobs:estimate") + query, headers={"HX-Request": "true"}).content.decode()

    assert "Gemma 3 270M (packaged) uses another tokenizer than the student" in panel("global:1")
    assert "trains about 3–5× slower" in panel("global:1")
    assert "another tokenizer" not in panel("global:0")  # SmolLM2 teaching itself
    assert "another tokenizer" not in panel(f"org:{make_endpoint_teacher(cast.org).pk}")
    monkeypatch.setattr(services, "cross_tokenizer_kd_available", lambda: False)
    refused = panel("global:1")  # without TRL: the refusal says it, not the advice
    assert "Recipe kd needs a teacher with the student&#x27;s tokenizer" in refused
    assert "trains about 3–5× slower" not in refused


def test_it_asks_for_a_corpus_and_teacher_before_estimating(cast: Cast) -> None:
    body = cast.client_for("member").get(reverse("jobs:estimate"), headers={"HX-Request": "true"}).content.decode()
    assert "Choose a corpus and a teacher" in body


def test_it_shows_the_estimate_on_the_form_page_without_javascript(cast: Cast, corpus: Corpus) -> None:
    query = f"?name=Mine&corpus={corpus.pk}&teacher=global:0&recipe=kd&epochs=1&lora_rank=8"
    response = cast.client_for("member").get(reverse("jobs:estimate") + query)
    page = response.content.decode()
    assert page.startswith("<!doctype html>")
    assert "<dt>Training tokens</dt><dd>9000</dd>" in page
    assert 'name="name" value="Mine"' in page
    assert '<option value="8" selected>8</option>' in page
    assert "checked" not in context_box(page)  # unticked in the sent form
    assert 'class="errorlist"' not in page


# ------------------------------------------------------------------ clone
@pytest.mark.parametrize("clone", ["²", "9" * 5000], ids=["superscript-2", "5000-digits"])
def test_it_shows_a_blank_form_for_a_clone_id_that_is_not_a_number(cast: Cast, clone: str) -> None:
    # Was a 500: "²".isdigit() is true but int("²") raises; so does int() of over 4300 digits.
    page = cast.client_for("member").get(reverse("jobs:create"), {"clone": clone})
    assert page.status_code == 200


def test_it_prefills_the_form_from_a_cloned_job(cast: Cast, corpus: Corpus) -> None:
    teacher = make_endpoint_teacher(cast.org)
    options = {
        "epochs": 3.0,
        "token_budget": None,
        "lora_rank": 8,
        "divergence": "reverse_kl",
        "alpha": 0.2,
        "context": False,
        "pairs_per_chunk": 4,
        "reward_threshold": 5,
    }
    job = make_job(
        corpus,
        JobStatus.FAILED,
        recipe="qa",
        teacher=teacher,
        teacher_snapshot=teacher.snapshot(),
        options=options,
        spend_cap_usd="12.50",
    )
    response = cast.client_for("member").get(reverse("jobs:create") + f"?clone={job.pk}")
    form = response.context["form"]
    assert form.initial == {
        **options,
        "reasoning": False,  # options the job predates take their defaults
        "self_reward": "on",  # but a job from before self-reward was a choice graded its pairs
        "name": "Leave expert (copy)",
        "corpus": corpus.pk,
        "recipe": "qa",
        "teacher": f"org:{teacher.pk}",
        "spend_cap_usd": Decimal("12.50"),
    }
    page = response.content.decode()
    assert 'value="Leave expert (copy)"' in page
    assert f'<option value="org:{teacher.pk}" selected>' in page
    assert '<option value="reverse_kl" selected>' in page
    assert "checked" not in context_box(page)
    assert 'name="spend_cap_usd" value="12.50"' in page


def test_it_prefills_a_shared_teacher_from_a_cloned_job(cast: Cast, corpus: Corpus) -> None:
    job = make_job(corpus, JobStatus.SUCCEEDED)
    page = cast.client_for("member").get(reverse("jobs:create") + f"?clone={job.pk}").content.decode()
    assert '<option value="global:0" selected>' in page


# ------------------------------------------------------------------ the list
def test_it_lists_jobs_with_status_queue_position_and_duration(cast: Cast, corpus: Corpus) -> None:
    make_job(make_corpus(cast.other_org, "Theirs"), JobStatus.QUEUED, name="Theirs queued first")
    queued = make_job(corpus, JobStatus.QUEUED, name="Waiting")
    started = timezone.now() - timedelta(hours=1, minutes=2)
    make_job(corpus, JobStatus.SUCCEEDED, name="Done", started_at=started, finished_at=started + timedelta(minutes=90))
    make_job(corpus, JobStatus.FAILED, name="Broken")
    page = cast.client_for("member").get(reverse("jobs:list")).content.decode()
    assert "Theirs queued first" not in page
    assert '<span class="status job-status-queued">Queued</span>' in page
    # Another org's job was queued first: the queue is shared, so this one is second.
    assert queued.queue_position() == 2
    assert "#2 in queue" in page
    assert "1 h 30 min" in page
    assert '<span class="status job-status-failed">Failed</span>' in page
    # The table polls while a job is active.
    assert 'hx-trigger="every 5s"' in page


def test_it_filters_the_list_by_status_with_links_that_work_without_javascript(cast: Cast, corpus: Corpus) -> None:
    make_job(corpus, JobStatus.SUCCEEDED, name="Done")
    make_job(corpus, JobStatus.FAILED, name="Broken")
    client = cast.client_for("member")
    page = client.get(reverse("jobs:list") + "?status=failed").content.decode()
    assert "Broken" in page
    assert "Done" not in page
    assert f'href="{reverse("jobs:list")}?status=succeeded" hx-get="{reverse("jobs:list")}?status=succeeded"' in page
    assert 'aria-current="page" class="current">Failed</a>' in page
    assert 'hx-trigger="every 5s"' not in page  # nothing active: no polling
    active = client.get(reverse("jobs:list") + "?status=active").content.decode()
    assert "No active jobs." in active
    unknown = client.get(reverse("jobs:list") + "?status=bogus").content.decode()
    assert "Broken" in unknown
    assert "Done" in unknown


def test_it_renders_only_the_table_for_htmx(cast: Cast, corpus: Corpus) -> None:
    make_job(corpus, JobStatus.SUCCEEDED, name="Done")
    headers = {"HX-Request": "true", "HX-Target": "jobs-table"}
    response = cast.client_for("member").get(reverse("jobs:list") + "?status=succeeded", headers=headers)
    body = response.content.decode()
    assert [t.name for t in response.templates] == ["jobs/_table.html"]
    assert "<html" not in body
    assert "Usage this month" not in body
    assert "Done" in body
    full = cast.client_for("member").get(reverse("jobs:list")).content.decode()
    assert full.startswith("<!doctype html>")
    assert '<div id="jobs-table">' in full


def test_it_shows_the_orgs_usage_this_month(cast: Cast, corpus: Corpus, settings: Any) -> None:
    settings.ORG_MONTHLY_COMPUTE_SECONDS = 10 * 3600
    make_job(
        corpus,
        JobStatus.SUCCEEDED,
        compute_seconds=5400,
        teacher_tokens_in=1200,
        teacher_tokens_out=300,
        teacher_cost_usd="0.1234",
    )
    make_job(corpus, JobStatus.FAILED, compute_seconds=1800, teacher_cost_usd="0.5")
    make_job(make_corpus(cast.other_org, "Theirs"), JobStatus.SUCCEEDED, compute_seconds=9000)
    page = cast.client_for("member").get(reverse("jobs:list")).content.decode()
    assert "2.0 of 10.0 hours (20.0%)" in page
    assert "1200 in, 300 out" in page
    assert "$0.62" in page
    assert "0 of at most 2 at once" in page


# ------------------------------------------------------------------ the job page
def test_it_renders_the_job_page_and_its_polled_panel(cast: Cast, corpus: Corpus) -> None:
    job = make_job(
        corpus,
        JobStatus.TRAINING,
        step=30,
        total_steps=120,
        loss=2.3456,
        tokens_per_s=812.4,
        eta_s=3725,
        stage_message="Training: epoch 1 of 2",
        loss_history=[[10, 3.5], [20, 2.9], [30, 2.3456]],
        log_tail=["12:00:01 step 10 loss 3.5", "12:00:09 step 20 loss 2.9"],
    )
    client = cast.client_for("member")
    url = reverse("jobs:detail", args=[job.pk])
    page = client.get(url).content.decode()
    assert page.startswith("<!doctype html>")
    assert "<h1>Leave expert</h1>" in page
    assert '<div id="job-status">' in page
    panel_response = client.get(url, headers={"HX-Request": "true", "HX-Target": "job-status"})
    panel = panel_response.content.decode()
    assert panel_response.templates[0].name == "jobs/_status.html"
    assert "<html" not in panel
    for body in (page, panel):
        assert f'hx-get="{url}" hx-trigger="every 2s"' in body
        assert '<progress max="100" value="25.0">25.0%</progress>' in body
        assert "step 30 of 120" in body
        assert "about 1 h 2 min left" in body
        assert "812 tokens/s" in body
        assert "loss 2.3456" in body
        assert '<li class="stage stage-current" aria-current="step">Training</li>' in body
        assert '<li class="stage stage-done">Teacher pass</li>' in body
        assert '<li class="stage stage-todo">Evaluating</li>' in body
        assert "Training: epoch 1 of 2" in body
        assert "12:00:09 step 20 loss 2.9" in body
        assert f'action="{reverse("jobs:cancel", args=[job.pk])}"' in body
        assert f'href="{reverse("jobs:create")}?clone={job.pk}"' in body
        assert reverse("jobs:retry", args=[job.pk]) not in body


def test_it_lists_the_settings_its_recipe_uses(cast: Cast, corpus: Corpus) -> None:
    options = {"epochs": 2.0, "lora_rank": 8, "divergence": "jsd", "alpha": 0.3, "context": False, "pairs_per_chunk": 4}
    kd = make_job(corpus, JobStatus.QUEUED, options=options)
    qa = make_job(corpus, JobStatus.QUEUED, recipe="qa", options=options, name="QA")
    client = cast.client_for("member")
    kd_page = client.get(reverse("jobs:detail", args=[kd.pk])).content.decode()
    assert "<dt>Epochs</dt><dd>2.0</dd><dt>Token budget</dt><dd>—</dd><dt>LoRA rank</dt><dd>8</dd>" in kd_page
    assert (
        "<dt>KD divergence</dt><dd>jsd</dd><dt>α</dt><dd>0.3</dd><dt>Context distillation</dt><dd>off</dd>" in kd_page
    )
    assert "Q&amp;A pairs per chunk" not in kd_page
    qa_page = client.get(reverse("jobs:detail", args=[qa.pk])).content.decode()
    assert (
        "<dt>Q&amp;A pairs per chunk</dt><dd>4</dd><dt>Self-reward</dt><dd>on</dd>"
        "<dt>Self-reward threshold</dt><dd>3</dd>"
    ) in qa_page
    # A job made before the reasoning option existed ran without it, and says so.
    assert "<dt>Step-by-step reasoning</dt><dd>off</dd>" in qa_page
    assert "<dt>KD divergence</dt>" not in qa_page


def test_it_draws_the_loss_curve_from_the_history(cast: Cast, corpus: Corpus) -> None:
    job = make_job(corpus, JobStatus.TRAINING, loss_history=[[0, 4.0], [50, 3.0], [100, 2.0]])
    page = cast.client_for("member").get(reverse("jobs:detail", args=[job.pk])).content.decode()
    # 480 × 160 box with 4 px of padding: x from 4 to 476, the highest loss at the top (y = 4).
    assert '<polyline points="4.0,4.0 240.0,80.0 476.0,156.0" class="loss-line"' in page
    assert "steps 0–100 (between 2.0 and 4.0; last 2.0)" in page


def test_it_draws_the_heldout_points_on_the_same_axes(cast: Cast, corpus: Corpus) -> None:
    job = make_job(
        corpus,
        JobStatus.TRAINING,
        loss_history=[[0, 4.0], [50, 3.0], [100, 2.0]],
        heldout_history=[[50, 3.5], [100, 1.0]],
    )
    page = cast.client_for("member").get(reverse("jobs:detail", args=[job.pk])).content.decode()
    # The held-out loss reaches 1.0, below the training loss: the shared axes now span 1.0 to 4.0.
    assert '<polyline points="4.0,4.0 240.0,54.7 476.0,105.3" class="loss-line"' in page
    assert '<polyline points="240.0,29.3 476.0,156.0" class="heldout-line"' in page
    assert '<circle cx="240.0" cy="29.3" r="3" class="heldout-dot">' in page
    assert '<circle cx="476.0" cy="156.0" r="3" class="heldout-dot">' in page
    assert "dashed, with dots: held-out cross-entropy per token at evaluation points (last 1.0;" in page
    # The caption gives the training loss's own range; the axis labels give the shared axes' span.
    assert "steps 0–100 (between 2.0 and 4.0; last 2.0)" in page
    assert '<text x="6" y="14" class="axis-label">4</text>' in page
    assert '<text x="6" y="152" class="axis-label">1</text>' in page


def test_it_plots_training_against_heldout_cross_entropy_and_gives_the_objective_apart(
    cast: Cast, corpus: Corpus
) -> None:
    job = make_job(
        corpus,
        JobStatus.TRAINING,
        # [step, objective, cross-entropy]: kd's objective sits below its cross-entropy (α·CE + (1 − α)·KL).
        loss_history=[[0, 3.0, 4.0], [50, 2.5, 3.0], [100, 1.5, 2.0]],
        heldout_history=[[100, 3.0]],
    )
    page = cast.client_for("member").get(reverse("jobs:detail", args=[job.pk])).content.decode()
    # The solid line is the cross-entropy, 4.0 → 2.0, the axes' whole span: the held-out 3.0 sits mid-height.
    assert '<polyline points="4.0,4.0 240.0,80.0 476.0,156.0" class="loss-line"' in page
    assert '<circle cx="476.0" cy="80.0" r="3" class="heldout-dot">' in page
    assert "Cross-entropy per token on the training batches, steps 0–100 (between 2.0 and 4.0; last 2.0)" in page
    assert "dashed, with dots: on held-out text at evaluation points (last 3.0)" in page
    assert "The recipe's objective, which training lowers, was 1.5 last." in page
    assert 'aria-label="Training cross-entropy from step 0 to 100' in page
    # Where the objective is the cross-entropy (qa without answer KD), it is not given twice.
    same = loss_curve([[0, 4.0, 4.0], [100, 2.0, 2.0]])
    assert same is not None
    assert same["cross_entropy"] is True
    assert same["objective_last"] is None


def test_it_marks_a_single_heldout_evaluation_with_a_dot() -> None:
    curve = loss_curve([[0, 4.0], [100, 2.0]], [[100, 3.0]])
    assert curve is not None
    assert curve["heldout_dots"] == [["476.0", "80.0"]]


def test_it_thins_a_long_loss_history_and_skips_a_single_point() -> None:
    assert loss_curve([[1, 2.0]]) is None
    assert loss_curve([]) is None
    curve = loss_curve([[step, 10.0 / (step + 1)] for step in range(2000)])
    assert curve is not None
    points = curve["points"].split()
    assert len(points) == 400
    assert (points[0], points[-1]) == ("4.0,4.0", "476.0,156.0")
    assert (curve["first_step"], curve["last_step"]) == (0, 1999)


def test_it_humanizes_durations() -> None:
    assert [humanize_seconds(s) for s in (None, 42, 90, 600, 3725, 7200, 200_000)] == [
        "—",
        "42 s",
        "1 min 30 s",
        "10 min",
        "1 h 2 min",
        "2 h",
        "2 d 7 h",
    ]


def test_it_shows_the_traceback_to_staff_only(cast: Cast, corpus: Corpus) -> None:
    job = make_job(
        corpus,
        JobStatus.FAILED,
        error="The teacher endpoint refused the key (HTTP 401).",
        traceback='Traceback (most recent call last):\n  File "workers/tasks/jobs.py"',
    )
    url = reverse("jobs:detail", args=[job.pk])
    page = cast.client_for("member").get(url).content.decode()
    assert "The teacher endpoint refused the key (HTTP 401)." in page
    assert "Traceback" not in page
    assert "hx-trigger" not in page.split('<div id="job-status">')[1]  # ended: no polling
    assert f'action="{reverse("jobs:retry", args=[job.pk])}"' in page
    assert reverse("jobs:cancel", args=[job.pk]) not in page
    staff = make_user("sam", is_staff=True)
    cast.org.memberships.create(user=staff, role="member")
    cast.member = staff
    staff_page = cast.client_for("member").get(url).content.decode()
    assert "Traceback (staff only)" in staff_page
    assert "workers/tasks/jobs.py" in staff_page


def test_it_shows_the_final_metrics_of_a_succeeded_job(cast: Cast, corpus: Corpus) -> None:
    metrics = {
        "heldout": {
            "base": {"perplexity": 21.5, "bits_per_byte": 1.2345, "tokens": 900},
            "expert": {"perplexity": 12.25, "bits_per_byte": 0.9876, "tokens": 900},
            "teacher": {"perplexity": 9.0, "bits_per_byte": 0.8, "tokens": 900},
        },
        "gap_closed": 0.74,
        "gap_basis": "perplexity",
        "kl_to_teacher": {"before": 0.81234, "after": 0.3},
        "qa": None,
        "stage_seconds": {"loading": 12.3, "teacher": 81.0, "training": 1100.4, "evaluating": 24.0},
    }
    job = make_job(
        corpus,
        JobStatus.SUCCEEDED,
        metrics=metrics,
        artifact_dir="/data/artifacts/org-1/job-7",
        compute_seconds=1234,
        step=120,
        total_steps=120,
    )
    page = cast.client_for("member").get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert "<tr><td>base</td>\n    <td>21.500</td><td>1.2345</td>" in page
    assert "<tr><td>expert</td>\n    <td>12.250</td><td>0.9876</td>" in page
    assert "74.0% (in perplexity)" in page
    assert "before 0.8123, after 0.3000 nats" in page
    assert "/data/artifacts/org-1/job-7" in page
    assert "1234 s (20 min)" in page
    assert (
        "<dt>Time per stage</dt><dd>loading 12 s · teacher pass 1 min 21 s · training 18 min · evaluation 24 s</dd>"
    ) in page
    assert '<li class="stage stage-done">Registering</li>' in page
    assert "hx-trigger" not in page.split('<div id="job-status">')[1]


def test_it_says_not_applicable_when_no_gap_was_closed_and_shows_qa_examples(cast: Cast, corpus: Corpus) -> None:
    examples = [
        {"question": f"Question {n}?", "reference": f"Ref {n}", "answer": f"Answer {n}", "score": n / 10}
        for n in range(12)
    ]
    metrics = {
        "heldout": {"base": {"perplexity": 9.0, "bits_per_byte": 1.0}, "expert": {"perplexity": 8.0}, "teacher": None},
        "gap_closed": None,
        "kl_to_teacher": {"before": None, "after": None},
        "qa": {"rouge_l": {"base": 0.12, "expert": 0.34}, "source": "generated pairs", "examples": examples},
    }
    job = make_job(corpus, JobStatus.SUCCEEDED, recipe="qa", metrics=metrics)
    page = cast.client_for("member").get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert "not applicable (the teacher was no better than the base, or not measured)" in page  # no reason given
    assert '<tr><td>teacher</td>\n    <td colspan="2" class="muted">not measured</td></tr>' in page
    assert "<tr><td>expert</td><td>0.340</td></tr>" in page
    assert "Judge" not in page  # no judge ran: no judge column
    best, worst = page.split("<h4>Best answers</h4>")[1].split("<h4>Worst answers</h4>")
    assert "Question 11?" in best
    assert "Question 7?" in best
    assert "Question 6?" not in best
    assert "Question 0?" in worst
    assert "Question 11?" not in worst
    assert "Q&amp;A pairs trained on" not in page  # a run from before the data's stats reached the page


def test_it_shows_what_a_qa_job_trained_on_and_whether_its_teacher_graded_it(cast: Cast, corpus: Corpus) -> None:
    qa_data = {
        "chunks": 70,
        "chunks_done": 32,
        "pairs_requested": 64,
        "pairs_kept": 34,
        "dropped": {"unparseable": 4, "empty": 12, "duplicate": 14, "below_threshold": 0, "ungraded": 0},
        "self_reward": False,
        "self_reward_why": "auto: the local teacher has 135M parameters, under the 1B a grader needs",
        "reward_threshold": 3,
        "budget_exhausted": False,
    }
    metrics = {"heldout": {"base": {"perplexity": 9.0}}, "qa": None, "qa_data": qa_data}
    job = make_job(corpus, JobStatus.SUCCEEDED, recipe="qa", metrics=metrics)
    page = cast.client_for("member").get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert (
        "<dd>34 kept of 64 asked for, from 32 of 70 chunks; dropped: 4 in replies that did not parse, 12 empty, "
        "14 duplicates</dd>"
    ) in page
    assert (
        "<dt>Graded by the teacher</dt><dd>no (auto: the local teacher has 135M parameters, under the 1B a grader "
        "needs)</dd>"
    ) in page
    graded = {**qa_data, "self_reward": True, "self_reward_why": "", "budget_exhausted": True}
    graded["dropped"] = {**qa_data["dropped"], "below_threshold": 5, "ungraded": "x"}  # odd values are skipped
    job.metrics = {**metrics, "qa_data": graded}
    job.save()
    page = cast.client_for("member").get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert "14 duplicates, 5 graded below 3 (the teacher's spend cap stopped generation)</dd>" in page
    assert "<dt>Graded by the teacher</dt><dd>yes</dd>" in page


def test_it_says_why_the_gap_closed_is_not_applicable_when_the_run_knew(cast: Cast, corpus: Corpus) -> None:
    metrics = {
        "heldout": {"base": {"perplexity": 9.0}, "expert": {"perplexity": 8.0}, "teacher": {"perplexity": 9.0}},
        "gap_closed": None,
        "gap_note": "no held-out chunk has text before it in its document",
        "kl_to_teacher": {"before": 0.0, "after": 0.01},
    }
    job = make_job(corpus, JobStatus.SUCCEEDED, metrics=metrics)
    page = cast.client_for("member").get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert "not applicable (no held-out chunk has text before it in its document)" in page
    assert "the teacher was no better" not in page


def test_it_shows_the_judges_grades_beside_rouge_when_the_teacher_judged(cast: Cast, corpus: Corpus) -> None:
    examples = [
        {"question": "Who signs?", "reference": "The CFO.", "answer": "The CFO signs.", "score": 0.8, "judge_grade": 5}
    ]
    metrics = {
        "heldout": {"base": {"perplexity": 9.0}, "expert": {"perplexity": 8.0}, "teacher": None},
        "gap_closed": None,
        "kl_to_teacher": {"before": None, "after": None},
        "qa": {
            "rouge_l": {"base": 0.12, "expert": 0.34},
            "judge": {"judge": "big-model @ http://teacher/v1", "mean_grade": {"base": 1.5, "expert": None}},
            "source": "held-out questions",
            "examples": examples,
        },
    }
    job = make_job(corpus, JobStatus.SUCCEEDED, recipe="qa", metrics=metrics)
    page = cast.client_for("member").get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert "<th>Judge (1–5)</th>" in page
    assert "<tr><td>base</td><td>0.120</td><td>1.50</td></tr>" in page
    assert "<tr><td>expert</td><td>0.340</td><td>—</td></tr>" in page  # judged, but no grade could be read
    assert "Judge: big-model @ http://teacher/v1" in page
    assert "<td>0.800</td><td>5</td></tr>" in page


def test_it_shows_teacher_tokens_and_cost_of_an_endpoint_job(cast: Cast, corpus: Corpus) -> None:
    teacher = make_endpoint_teacher(cast.org)
    job = make_job(
        corpus,
        JobStatus.TEACHER,
        teacher=teacher,
        teacher_snapshot=teacher.snapshot(),
        teacher_tokens_in=4567,
        teacher_tokens_out=89,
        teacher_cost_usd="0.0123",
    )
    page = cast.client_for("member").get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert "4567 in, 89 out" in page
    assert "$0.0123" in page
    assert "teacher Big model (big-model)" in page


# ------------------------------------------------------------------ cancel and retry
def test_it_cancels_a_queued_job_at_once(cast: Cast, corpus: Corpus) -> None:
    job = make_job(corpus, JobStatus.QUEUED)
    response = cast.client_for("member").post(reverse("jobs:cancel", args=[job.pk]), follow=True)
    job.refresh_from_db()
    assert (job.status, job.cancel_requested) == (JobStatus.CANCELLED, False)
    assert job.finished_at is not None
    assert "Cancelled." in response.content.decode()


def test_it_asks_a_running_job_to_stop_and_swaps_the_panel_for_htmx(cast: Cast, corpus: Corpus) -> None:
    job = make_job(corpus, JobStatus.TRAINING)
    response = cast.client_for("member").post(
        reverse("jobs:cancel", args=[job.pk]), headers={"HX-Request": "true", "HX-Target": "job-status"}
    )
    job.refresh_from_db()
    assert (job.status, job.cancel_requested) == (JobStatus.TRAINING, True)
    body = response.content.decode()
    assert response.templates[0].name == "jobs/_status.html"
    assert "Cancel requested: the job stops after its current step" in body
    assert reverse("jobs:cancel", args=[job.pk]) not in body  # asked once is enough
    assert 'hx-trigger="every 2s"' in body  # still running: the panel keeps polling


def test_it_refuses_to_cancel_an_ended_job(cast: Cast, corpus: Corpus) -> None:
    job = make_job(corpus, JobStatus.SUCCEEDED)
    response = cast.client_for("member").post(reverse("jobs:cancel", args=[job.pk]), follow=True)
    assert "The job already ended (succeeded)." in response.content.decode()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED


def test_it_queues_a_failed_job_again(cast: Cast, corpus: Corpus, django_capture_on_commit_callbacks: Any) -> None:
    job = make_job(corpus, JobStatus.FAILED, error="Worker lost", traceback="...", attempt=3, max_attempts=3)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = cast.client_for("member").post(reverse("jobs:retry", args=[job.pk]), follow=True)
    job.refresh_from_db()
    assert (job.status, job.error, job.traceback, job.finished_at) == (JobStatus.QUEUED, "", "", None)
    assert job.max_attempts == 6
    assert len(callbacks) == 1
    assert "Queued again" in response.content.decode()


def test_it_refuses_to_retry_a_running_job(cast: Cast, corpus: Corpus) -> None:
    job = make_job(corpus, JobStatus.TRAINING)
    response = cast.client_for("member").post(reverse("jobs:retry", args=[job.pk]), follow=True)
    assert "Only a failed or cancelled job can be retried." in response.content.decode()


# ------------------------------------------------------------------ notifications
def test_it_lists_notifications_and_marks_them_read(cast: Cast, corpus: Corpus) -> None:
    job = make_job(corpus, JobStatus.SUCCEEDED)
    Notification.objects.create(
        organization=cast.org, recipient=cast.member, message="Old one.", read_at=timezone.now()
    )
    services.notify_job_ended(job.pk)  # the job has no creator: nothing
    job.created_by = cast.member
    job.save()
    services.notify_job_ended(job.pk)
    Notification.objects.create(organization=cast.org, recipient=cast.owner, message="For the owner.")
    Notification.objects.create(organization=cast.other_org, recipient=cast.member, message="Another org.")
    client = cast.client_for("member")
    home = client.get(reverse("jobs:list")).content.decode()
    assert 'title="1 unread">1</span>' in home
    page = client.get(reverse("jobs:notifications")).content.decode()
    assert f'<a href="{reverse("jobs:detail", args=[job.pk])}">Job “Leave expert” succeeded.</a>' in page
    assert "Old one." in page
    assert "For the owner." not in page
    assert "Another org." not in page
    assert page.count('<span class="badge unread">new</span>') == 1
    assert not Notification.objects.filter(recipient=cast.member, organization=cast.org, read_at__isnull=True).exists()
    assert 'title="1 unread"' not in client.get(reverse("jobs:list")).content.decode()
    assert Notification.objects.filter(recipient=cast.owner, read_at__isnull=True).count() == 1


def test_it_links_jobs_in_the_navigation_for_org_members(cast: Cast) -> None:
    page = cast.client_for("member").get(reverse("core:home")).content.decode()
    assert f'<a href="{reverse("jobs:list")}">Jobs</a>' in page
    assert f'href="{reverse("jobs:notifications")}"' in page
    assert 'title="Arrives with distillation jobs"' not in page


def test_the_jobs_pages_and_api_import_neither_torch_nor_transformers() -> None:
    script = (
        "import sys, django\n"
        "django.setup()\n"
        "import webapp.urls, webapp.jobs.views, webapp.jobs.admin, webapp.api.jobs, webapp.jobs.connection\n"
        "import openai  # what Test connection loads on demand\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'workers.ml.catalog') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[3],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "heavy: []" in result.stdout


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.TRAINING])
def test_it_refuses_to_delete_a_corpus_that_an_active_job_reads(cast: Cast, corpus: Corpus, status: str) -> None:
    make_job(corpus, status=status, name="Leave expert")

    response = cast.client_for("owner").post(reverse("corpora:delete", args=[corpus.pk]), {"confirm": corpus.name})

    assert Corpus.objects.filter(pk=corpus.pk).exists()
    messages = [str(m) for m in response.wsgi_request._messages]
    assert messages == [
        "This corpus is used by a queued or running job (job “Leave expert”): cancel it or wait for it to finish."
    ]


def test_it_deletes_a_corpus_whose_jobs_have_ended(cast: Cast, corpus: Corpus) -> None:
    job = make_job(corpus, status=JobStatus.SUCCEEDED)

    cast.client_for("owner").post(reverse("corpora:delete", args=[corpus.pk]), {"confirm": corpus.name})

    assert not Corpus.objects.filter(pk=corpus.pk).exists()
    job.refresh_from_db()
    assert job.corpus is None  # the job's record (and its expert) outlive the corpus


def test_the_org_page_shows_this_months_compute_and_teacher_usage(cast: Cast, corpus: Corpus) -> None:
    make_job(
        corpus,
        status=JobStatus.SUCCEEDED,
        compute_seconds=5400,
        teacher_tokens_in=1200,
        teacher_tokens_out=300,
        teacher_cost_usd=Decimal("1.25"),
    )

    page = cast.client_for("member").get(reverse("tenants:settings")).content.decode()

    assert "1.5 of" in page  # 5,400 s = 1.5 compute hours
    assert "1200 in, 300 out" in page
    assert "$1.25" in page


def test_a_job_end_is_emailed_to_its_creator_when_the_deployment_sends_email(
    cast: Cast, corpus: Corpus, mailoutbox: list[Any]
) -> None:
    from webapp.jobs.services import notify_job_ended

    job = make_job(corpus, status=JobStatus.FAILED, created_by=cast.member, error="Out of memory: lower seq_len.")

    notify_job_ended(job.pk)

    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == [cast.member.email]
    assert mailoutbox[0].subject == "[Distillery] Job “Leave expert” failed. Out of memory: lower seq_len."
    assert reverse("jobs:detail", args=[job.pk]) in mailoutbox[0].body


def test_it_pages_a_long_list_newest_first_keeping_the_filter(
    cast: Cast, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No job drops out of the list however many there are (it used to show the newest 200 only)."""
    monkeypatch.setattr("webapp.jobs.views.JOBS_PER_PAGE", 2)
    for number in range(5):
        make_job(corpus, JobStatus.FAILED, name=f"Broken {number}")
    make_job(corpus, JobStatus.SUCCEEDED, name="Done")
    client = cast.client_for("member")
    url = reverse("jobs:list")

    first = client.get(url + "?status=failed").content.decode()
    assert "Broken 4" in first
    assert "Broken 3" in first
    assert "Broken 2" not in first
    assert "Page 1 of 3 (5 jobs)" in first
    assert f'href="{url}?status=failed&amp;page=2"' in first
    assert "Newer</a>" not in first

    last = client.get(url + "?status=failed&page=3").content.decode()
    assert "Broken 0" in last
    assert "Done" not in last
    assert f'href="{url}?status=failed&amp;page=2"' in last
    assert "Older</a>" not in last
    beyond = client.get(url + "?status=failed&page=99").content.decode()
    assert "Broken 0" in beyond  # a page past the end shows the last one, not an error


def test_the_polling_table_stays_on_its_page(cast: Cast, corpus: Corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("webapp.jobs.views.JOBS_PER_PAGE", 1)
    make_job(corpus, JobStatus.TRAINING, name="Older running")
    make_job(corpus, JobStatus.QUEUED, name="Newest")
    headers = {"HX-Request": "true", "HX-Target": "jobs-table"}

    table = cast.client_for("member").get(reverse("jobs:list") + "?page=2", headers=headers).content.decode()

    assert "Older running" in table
    assert f'hx-get="{reverse("jobs:list")}?page=2" hx-trigger="every 5s"' in table
