"""REST API for distillation jobs and teachers.

    curl -H "Authorization: Bearer $TOKEN" https://host/api/v1/teachers
    curl -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \\
         -d '{"name": "Handbook expert", "corpus": 1, "teacher": "global:0", "recipe": "kd",
              "options": {"epochs": 2, "lora_rank": 16},
              "eval_set": [{"question": "Who approves leave?", "answer": "Your manager."}]}' https://host/api/v1/jobs
    curl -H "Authorization: Bearer $TOKEN" https://host/api/v1/jobs/7
    curl -H "Authorization: Bearer $TOKEN" -X POST https://host/api/v1/jobs/7/cancel

Every lookup is scoped to the token's org: another org's ids answer 404, like ids that do not exist. No answer
ever holds a teacher's API key: teachers show its last 4 characters only.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models import QuerySet
from django.http import JsonResponse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from webapp.api.auth import ApiRequest, api_error, api_token_required, invalid, not_found
from webapp.api.params import json_object, page
from webapp.jobs import services
from webapp.jobs.forms import DEFAULT_OPTIONS, JobForm
from webapp.jobs.models import DistillationJob, self_reward_setting
from webapp.jobs.presenters import job_json, status_filter, teacher_json


def _jobs(request: ApiRequest) -> QuerySet[DistillationJob]:
    jobs = DistillationJob.objects.for_org(request.organization)
    return jobs.select_related("corpus_version", "expert").prefetch_related("expert_versions")


def _job(request: ApiRequest, job_id: int) -> DistillationJob | None:
    return _jobs(request).filter(pk=job_id).first()


TOP_LEVEL_FIELDS = frozenset({"name", "corpus", "teacher", "recipe", "options", "spend_cap_usd", "eval_set"})


def _eval_set_file(items: Any) -> SimpleUploadedFile | str:
    """`eval_set` (a list of {"question", "answer"} objects) as the JSONL file the form checks, or what is wrong
    with it, by index."""
    if not isinstance(items, list) or not items:
        return 'eval_set: must be a non-empty list of {"question", "answer"} objects.'
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(key), str) and item[key].strip() for key in ("question", "answer")
        ):
            return f'eval_set[{index}]: needs a "question" and an "answer" (non-empty text).'
    lines = "".join(json.dumps({"question": item["question"], "answer": item["answer"]}) + "\n" for item in items)
    return SimpleUploadedFile("eval_set.jsonl", lines.encode(), content_type="application/jsonl")


def _form_data(body: dict[str, Any]) -> dict[str, Any] | str:
    """The new-job form's fields from the JSON body (options default as on the page), or what is wrong."""
    unknown = sorted(set(body) - TOP_LEVEL_FIELDS)
    if unknown:  # a setting put beside "options" instead of inside it would otherwise be dropped in silence
        misplaced = [key for key in unknown if key in DEFAULT_OPTIONS]
        hint = f' ({", ".join(misplaced)} go under "options")' if misplaced else ""
        return f"unknown field(s) {', '.join(unknown)}{hint}; known: {', '.join(sorted(TOP_LEVEL_FIELDS))}."
    options = body.get("options") or {}
    if not isinstance(options, dict):
        return "options: must be an object."
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        return f"options: unknown key(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_OPTIONS)}."
    teacher = body.get("teacher")
    if isinstance(teacher, int) and not isinstance(teacher, bool):
        teacher = f"org:{teacher}"  # a teacher row's id, as the teachers list also names it "org:<id>"
    merged = {**DEFAULT_OPTIONS, **options}
    if isinstance(merged.get("self_reward"), bool):  # clients from before `auto` send the box's true or false
        merged["self_reward"] = self_reward_setting(merged["self_reward"])
    data = {key: value for key, value in merged.items() if value is not None}
    data.update(
        name=body.get("name"),
        corpus=body.get("corpus"),
        teacher=teacher,
        recipe=body.get("recipe") or DistillationJob.Recipe.KD,
    )
    if body.get("spend_cap_usd") is not None:
        data["spend_cap_usd"] = body["spend_cap_usd"]
    # A form treats a missing checkbox as off; here a false value must stay false.
    for flag in ("context", "reasoning"):
        if not merged.get(flag):
            data.pop(flag, None)
    return {key: value for key, value in data.items() if value is not None}


@require_http_methods(["GET", "POST"])
@api_token_required
def job_list(request: ApiRequest) -> JsonResponse:
    if request.method == "POST":
        return _create(request)
    paging = page(request, "job")
    if isinstance(paging, JsonResponse):
        return paging
    limit, after = paging
    jobs = _jobs(request).order_by("-pk")  # newest first, and a cursor that no new job can shift
    _, statuses = status_filter(request.GET.get("status"))
    if statuses:
        jobs = jobs.filter(status__in=statuses)
    if after is not None:
        jobs = jobs.filter(pk__lt=after)
    found = list(jobs[: limit + 1])
    data = [job_json(job) for job in found[:limit]]
    return JsonResponse({"object": "list", "data": data, "has_more": len(found) > limit})


def _create(request: ApiRequest) -> JsonResponse:
    body = json_object(request)
    if isinstance(body, JsonResponse):
        return body
    data = _form_data(body)
    if isinstance(data, str):
        return invalid(data)
    files = {}
    if body.get("eval_set") is not None:
        eval_set = _eval_set_file(body["eval_set"])
        if isinstance(eval_set, str):
            return invalid(eval_set)
        files["eval_set"] = eval_set
    form = JobForm(data, files, organization=request.organization)
    if not form.is_valid():
        field, errors = next(iter(form.errors.items()))
        return invalid(f"{field}: {errors[0]}")
    try:
        job = form.create_job(request.api_token.created_by)
    except services.JobError as error:
        return invalid(str(error), code="job_refused")
    return JsonResponse(job_json(job, detail=True), status=201)


@require_GET
@api_token_required
def job_detail(request: ApiRequest, job_id: int) -> JsonResponse:
    job = _job(request, job_id)
    if job is None:
        return not_found("job")
    return JsonResponse(job_json(job, detail=True))


@require_POST
@api_token_required
def job_cancel(request: ApiRequest, job_id: int) -> JsonResponse:
    """Queued: cancelled at once. Running: `cancel_requested` until the worker stops after its step."""
    job = _job(request, job_id)
    if job is None:
        return not_found("job")
    try:
        services.cancel_job(job)
    except services.JobError as error:
        return api_error(str(error), status=409, error_type="invalid_request_error", code="job_ended")
    job.refresh_from_db()
    return JsonResponse(job_json(job, detail=True))


@require_POST
@api_token_required
def job_retry(request: ApiRequest, job_id: int) -> JsonResponse:
    job = _job(request, job_id)
    if job is None:
        return not_found("job")
    try:
        job = services.retry_job(job)
    except services.JobError as error:
        return api_error(str(error), status=409, error_type="invalid_request_error", code="cannot_retry")
    return JsonResponse(job_json(job, detail=True))


@require_GET
@api_token_required
def teacher_list(request: ApiRequest) -> JsonResponse:
    choices = services.teacher_choices(request.organization)
    return JsonResponse({"object": "list", "data": [teacher_json(choice) for choice in choices]})
