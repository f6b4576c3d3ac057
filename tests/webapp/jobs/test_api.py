"""The jobs REST API: create (validated like the page, refusals as 400), list, detail, cancel, retry, teachers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from django.core.files.storage import default_storage
from django.urls import reverse

from tests.webapp.conftest import Cast
from tests.webapp.jobs.conftest import SECRET_KEY, Api, make_corpus, make_endpoint_teacher, make_job
from webapp.corpora.models import Corpus
from webapp.jobs import services
from webapp.jobs.forms import EVAL_SET_MAX_LINES
from webapp.jobs.models import DistillationJob, JobStatus

pytestmark = pytest.mark.django_db


def create(api: Api, corpus: Corpus, **changes: Any) -> Any:
    body: dict[str, Any] = {"name": "API expert", "corpus": corpus.pk, "teacher": "global:0", "recipe": "kd"}
    body.update(changes)
    return api.post_json(reverse("api:jobs"), body)


def test_it_creates_a_job_with_default_and_given_options(
    cast: Cast, corpus: Corpus, api: Api, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = create(api, corpus, options={"epochs": 2, "lora_rank": 8, "context": False}, spend_cap_usd="3.5")
    assert response.status_code == 201
    assert len(callbacks) == 1
    data = response.json()
    job = DistillationJob.objects.get()
    assert (data["object"], data["id"], data["status"], data["corpus"], data["corpus_version"]) == (
        "distillation_job",
        job.pk,
        "queued",
        corpus.pk,
        1,
    )
    assert data["options"] == {
        "epochs": 2.0,
        "token_budget": None,
        "lora_rank": 8,
        "divergence": "forward_kl",
        "alpha": 0.5,
        "context": False,
        "pairs_per_chunk": 2,
        "self_reward": "auto",
        "reward_threshold": 3,
        "reasoning": False,
    }
    assert job.options == data["options"]
    assert data["spend_cap_usd"] == 3.5
    assert data["queue_position"] == 1
    assert data["teacher"]["spec"] == "packaged:smollm2-135m-instruct"
    assert job.created_by == cast.owner
    assert job.corpus_version == corpus.current_version


@pytest.mark.parametrize(
    ("flag", "given", "stored"),
    [
        ("reasoning", True, True),
        ("reasoning", False, False),
        ("reasoning", None, False),  # off unless asked
        ("self_reward", "off", "off"),
        ("self_reward", "on", "on"),
        ("self_reward", None, "auto"),  # graded when the teacher can grade
        ("self_reward", True, "on"),  # clients from before auto sent the box's value
        ("self_reward", False, "off"),
    ],
)
def test_it_takes_the_on_off_options_of_a_qa_job(
    corpus: Corpus,
    api: Api,
    django_capture_on_commit_callbacks: Any,
    flag: str,
    given: bool | str | None,
    stored: bool | str,
) -> None:
    options = {} if given is None else {flag: given}
    with django_capture_on_commit_callbacks(execute=False):
        response = create(api, corpus, recipe="qa", options=options)
    assert response.status_code == 201
    assert response.json()["options"][flag] == stored
    assert type(response.json()["options"][flag]) is type(stored)


def test_it_refuses_an_unknown_self_reward_setting(corpus: Corpus, api: Api) -> None:
    response = create(api, corpus, recipe="qa", options={"self_reward": "sometimes"})
    assert response.status_code == 400
    assert "self_reward" in response.content.decode()
    assert "sometimes" in response.content.decode()


def test_it_takes_an_org_teacher_by_its_listed_id_or_its_row_id(
    cast: Cast, corpus: Corpus, api: Api, django_capture_on_commit_callbacks: Any
) -> None:
    teacher = make_endpoint_teacher(cast.org)
    listed = api.get(reverse("api:teachers")).json()["data"]
    assert [item["id"] for item in listed] == ["global:0", "global:1", f"org:{teacher.pk}"]
    with django_capture_on_commit_callbacks(execute=False):
        by_value = create(api, corpus, teacher=f"org:{teacher.pk}", recipe="qa")
        by_row = create(api, corpus, teacher=teacher.pk, recipe="qa", name="Second")
    assert (by_value.status_code, by_row.status_code) == (201, 201)
    assert {job.teacher for job in DistillationJob.objects.all()} == {teacher}
    for response in (by_value, by_row):
        assert SECRET_KEY not in response.content.decode()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": ""}, "name: This field is required."),
        ({"recipe": "sft"}, "recipe: Select a valid choice. sft is not one of the available choices."),
        ({"teacher": "global:9"}, "teacher: Select a valid choice. global:9 is not one of the available choices."),
        ({"options": {"epochs": 0}}, "epochs: Ensure this value is greater than or equal to 0.1."),
        ({"options": {"lora_rank": 7}}, "lora_rank: Select a valid choice. 7 is not one of the available choices."),
        (
            {"options": {"divergence": "l2"}},
            "divergence: Select a valid choice. l2 is not one of the available choices.",
        ),
        ({"options": {"learning_rate": 1}}, "options: unknown key(s) learning_rate; known: epochs, token_budget, "),
        ({"options": [1]}, "options: must be an object."),
        (
            {"token_budget": 3000, "pairs_per_chunk": 1},
            'unknown field(s) pairs_per_chunk, token_budget (pairs_per_chunk, token_budget go under "options"); '
            "known: corpus, eval_set, name, options, recipe, spend_cap_usd, teacher.",
        ),
        ({"eval_set": "x.jsonl"}, 'eval_set: must be a non-empty list of {"question", "answer"} objects.'),
        ({"eval_set": []}, 'eval_set: must be a non-empty list of {"question", "answer"} objects.'),
        (
            {"eval_set": [{"question": "Q?", "answer": "A."}, {"question": "Q?", "answer": " "}]},
            'eval_set[1]: needs a "question" and an "answer" (non-empty text).',
        ),
        ({"eval_set": [{"question": "Q?", "answer": "A."}, "Q?"]}, 'eval_set[1]: needs a "question" and an "answer"'),
    ],
)
def test_it_refuses_invalid_jobs_with_400(corpus: Corpus, api: Api, changes: dict[str, Any], message: str) -> None:
    response = create(api, corpus, **changes)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(message), error["message"]
    assert not DistillationJob.objects.exists()


@pytest.mark.parametrize("option", ["epochs", "alpha"])
def test_it_refuses_an_integer_option_too_large_for_a_float(corpus: Corpus, api: Api, option: str) -> None:
    # Was a 500: Django's FloatField calls float(10**400), which raises OverflowError, not ValueError.
    response = create(api, corpus, options={option: 10**400})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == f"{option}: Enter a number."
    assert not DistillationJob.objects.exists()


def test_it_answers_json_to_a_body_over_the_upload_limit(corpus: Corpus, api: Api, settings: Any) -> None:
    # Was Django's HTML 400 page (RequestDataTooBig), not the API's JSON error.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    response = create(api, corpus, name="x" * 200)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "The request body is too large."


def test_it_takes_an_evaluation_set_as_a_list_of_questions_and_answers(
    corpus: Corpus, api: Api, django_capture_on_commit_callbacks: Any
) -> None:
    eval_set = [{"question": "Who approves leave?", "answer": "Your manager."}, {"question": "Q2?", "answer": "A2"}]
    with django_capture_on_commit_callbacks(execute=False):
        response = create(api, corpus, eval_set=eval_set)
    assert response.status_code == 201, response.content
    assert response.json()["eval_set"] is True
    job = DistillationJob.objects.get()
    with default_storage.open(job.eval_set_name) as stored:
        assert [json.loads(line) for line in stored.read().decode().splitlines()] == eval_set


def test_it_stores_no_evaluation_set_for_a_refused_job(
    corpus: Corpus, api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(services, "cross_tokenizer_kd_available", lambda: False)
    refused = create(api, corpus, teacher="global:1", eval_set=[{"question": "Q?", "answer": "A."}])
    assert refused.json()["error"]["code"] == "job_refused"
    assert not [path for path in (tmp_path / "media").rglob("*") if path.is_file()]
    too_many = [{"question": f"Q{n}?", "answer": "A."} for n in range(EVAL_SET_MAX_LINES + 1)]
    response = create(api, corpus, eval_set=too_many)
    assert (
        response.json()["error"]["message"]
        == f"eval_set: The evaluation set has more than {EVAL_SET_MAX_LINES} questions."
    )


def test_it_refuses_a_body_that_is_not_a_json_object(api: Api) -> None:
    for body in ("[1, 2]", "{not json"):
        response = api.client.post(reverse("api:jobs"), body, content_type="application/json", headers=api.headers)
        assert response.status_code == 400
        assert response.json()["error"]["message"] == "The body must be a JSON object."


def test_it_answers_400_with_the_rules_refusal(
    cast: Cast, corpus: Corpus, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "cross_tokenizer_kd_available", lambda: False)
    refused = create(api, corpus, teacher="global:1")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "job_refused"
    assert refused.json()["error"]["message"].startswith("Recipe kd needs a teacher with the student's tokenizer")
    make_job(corpus, JobStatus.QUEUED)
    make_job(corpus, JobStatus.TRAINING)
    limited = create(api, corpus)
    assert limited.status_code == 400
    assert "the most allowed at once (2)" in limited.json()["error"]["message"]
    assert DistillationJob.objects.count() == 2


def test_it_pages_through_the_jobs_newest_first(cast: Cast, corpus: Corpus, api: Api) -> None:
    for number in range(5):
        make_job(corpus, JobStatus.SUCCEEDED if number % 2 else JobStatus.FAILED, name=f"Job {number}")
    make_job(make_corpus(cast.other_org, "Theirs"), JobStatus.SUCCEEDED, name="Their job")
    names, after, pages = [], None, 0
    while True:
        query = {"limit": 2, **({"after": after} if after else {})}
        page = api.get(reverse("api:jobs") + "?" + urlencode(query)).json()
        names += [job["name"] for job in page["data"]]
        pages += 1
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert names == [f"Job {number}" for number in (4, 3, 2, 1, 0)]
    assert pages == 3
    succeeded = api.get(reverse("api:jobs") + "?status=succeeded&limit=1").json()
    assert ([job["name"] for job in succeeded["data"]], succeeded["has_more"]) == (["Job 3"], True)
    for query, message in [
        ("limit=0", "limit: must be a whole number from 1 to 200."),
        ("limit=201", "limit: must be a whole number from 1 to 200."),
        ("limit=x", "limit: must be a whole number from 1 to 200."),
        ("after=%C2%B2", "after: must be a job's id (the last `id` of the previous page)."),
    ]:
        refused = api.get(reverse("api:jobs") + "?" + query)
        assert refused.status_code == 400
        assert refused.json()["error"]["message"] == message


def test_it_lists_the_orgs_jobs_with_a_status_filter(cast: Cast, corpus: Corpus, api: Api) -> None:
    make_job(corpus, JobStatus.SUCCEEDED, name="Done")
    make_job(corpus, JobStatus.TRAINING, name="Running", step=5, total_steps=20, loss=1.5)
    listed = api.get(reverse("api:jobs")).json()
    assert listed["object"] == "list"
    assert [job["name"] for job in listed["data"]] == ["Running", "Done"]
    running = listed["data"][0]
    assert running["progress"] == {
        "step": 5,
        "total_steps": 20,
        "fraction": 0.25,
        "loss": 1.5,
        "tokens_per_s": None,
        "eta_s": None,
        "stage_message": "",
    }
    assert "metrics" not in running
    assert [job["name"] for job in api.get(reverse("api:jobs") + "?status=active").json()["data"]] == ["Running"]
    assert [job["name"] for job in api.get(reverse("api:jobs") + "?status=succeeded").json()["data"]] == ["Done"]


def test_it_shows_a_jobs_progress_metrics_and_usage_but_no_key(cast: Cast, corpus: Corpus, api: Api) -> None:
    teacher = make_endpoint_teacher(cast.org)
    job = make_job(
        corpus,
        JobStatus.SUCCEEDED,
        teacher=teacher,
        teacher_snapshot=teacher.snapshot(),
        metrics={"gap_closed": 0.5, "heldout": {}},
        loss_history=[[1, 2.0], [2, 1.5]],
        artifact_dir="/data/artifacts/job",
        compute_seconds=12.5,
        teacher_tokens_in=100,
        teacher_tokens_out=20,
        teacher_cost_usd="0.0100",
        traceback="secret internals",
    )
    response = api.get(reverse("api:job", args=[job.pk]))
    data = response.json()
    assert data["metrics"] == {"gap_closed": 0.5, "heldout": {}}
    assert data["loss_history"] == [[1, 2.0], [2, 1.5]]
    assert data["artifact_dir"] == "/data/artifacts/job"
    assert data["usage"] == {
        "compute_seconds": 12.5,
        "teacher_tokens_in": 100,
        "teacher_tokens_out": 20,
        "teacher_cost_usd": 0.01,
    }
    assert data["teacher"]["model_name"] == "big-model"
    body = response.content.decode()
    assert "secret internals" not in body
    assert SECRET_KEY not in body
    assert "api_key" not in body


def test_it_cancels_queued_and_running_jobs(cast: Cast, corpus: Corpus, api: Api) -> None:
    queued = make_job(corpus, JobStatus.QUEUED)
    running = make_job(corpus, JobStatus.TRAINING, name="Running")
    assert api.post(reverse("api:job-cancel", args=[queued.pk])).json()["status"] == "cancelled"
    answer = api.post(reverse("api:job-cancel", args=[running.pk])).json()
    assert (answer["status"], answer["cancel_requested"]) == ("training", True)
    again = api.post(reverse("api:job-cancel", args=[queued.pk]))
    assert again.status_code == 409
    assert again.json()["error"]["message"] == "The job already ended (cancelled)."


def test_it_retries_a_failed_job_but_not_a_running_one(
    cast: Cast, corpus: Corpus, api: Api, django_capture_on_commit_callbacks: Any
) -> None:
    failed = make_job(corpus, JobStatus.FAILED, error="boom")
    running = make_job(corpus, JobStatus.TRAINING, name="Running")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        answer = api.post(reverse("api:job-retry", args=[failed.pk]))
    assert answer.status_code == 200
    assert (answer.json()["status"], answer.json()["error"]) == ("queued", None)
    assert len(callbacks) == 1
    refused = api.post(reverse("api:job-retry", args=[running.pk]))
    assert refused.status_code == 409
    assert refused.json()["error"]["message"] == "Only a failed or cancelled job can be retried."


def test_it_lists_teachers_with_the_last_4_of_the_key_only(cast: Cast, api: Api) -> None:
    teacher = make_endpoint_teacher(cast.org, price_input_per_million=1, price_output_per_million=2)
    make_endpoint_teacher(cast.other_org, name="Theirs")
    response = api.get(reverse("api:teachers"))
    data = response.json()["data"]
    assert [item["name"] for item in data] == ["SmolLM2 (packaged)", "Gemma 3 270M (packaged)", "Big model"]
    assert data[0] == {
        "object": "teacher",
        "id": "global:0",
        "name": "SmolLM2 (packaged)",
        "source": "global",
        "kind": "catalog",
        "spec": "packaged:smollm2-135m-instruct",
        "base_url": None,
        "model_name": None,
        "api_key_last4": None,
        "price_input_per_million": None,
        "price_output_per_million": None,
    }
    assert data[2] == {
        "object": "teacher",
        "id": f"org:{teacher.pk}",
        "name": "Big model",
        "source": "org",
        "kind": "endpoint",
        "spec": None,
        "base_url": "https://api.example.com/v1",
        "model_name": "big-model",
        "api_key_last4": "9876",
        "price_input_per_million": 1.0,
        "price_output_per_million": 2.0,
    }
    assert SECRET_KEY not in response.content.decode()
    assert "SECRET" not in response.content.decode()


@pytest.mark.parametrize("corpus_id", [float("inf"), float("nan"), 1.5, 1e300])
def test_it_refuses_a_corpus_id_that_is_not_a_whole_number(api: Api, corpus_id: float) -> None:
    body = {"name": "API expert", "corpus": corpus_id, "teacher": "global:0", "recipe": "kd"}
    response = api.post_json(reverse("api:jobs"), body)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("corpus:")
