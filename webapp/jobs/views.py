"""Teachers and jobs pages: teachers (list for every member, management for owners and admins), the new-job form
with its live estimate, the jobs list with the org's usage, the job page with its polled status panel, and
the notifications page.

Views are thin: the rules live in `services`, what a page shows in `presenters`. Every object is looked up
through the current org (`for_org`), so another org's ids answer 404. htmx requests get a partial template,
other requests the full page, so every page also works without JavaScript.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from webapp.core.http import client_ip
from webapp.jobs import presenters, services
from webapp.jobs.connection import check_catalog_spec, try_connection
from webapp.jobs.forms import JobForm, TeacherForm, clone_initial
from webapp.jobs.models import ACTIVE_STATUSES, DistillationJob, JobStatus, Notification, Teacher
from webapp.tenants.current import OrgRequest, org_member_required
from webapp.tenants.models import AuditEvent
from webapp.tenants.permissions import Perm

JOBS_PER_PAGE = 50  # newest first; older pages are a link away


def _job(request: OrgRequest, job_id: int) -> DistillationJob:
    jobs = DistillationJob.objects.for_org(request.organization).select_related("corpus", "corpus_version", "expert")
    return get_object_or_404(jobs, pk=job_id)


def _teacher(request: OrgRequest, teacher_id: int) -> Teacher:
    return get_object_or_404(Teacher.objects.for_org(request.organization), pk=teacher_id)


# ---------------------------------------------------------------- teachers


@org_member_required(Perm.VIEW_TEACHERS)
@require_GET
def teacher_list(request: OrgRequest) -> HttpResponse:
    shared = [
        {"choice": choice, "check": check_catalog_spec(choice.snapshot["spec"])}
        for choice in services.global_teachers()
    ]
    teachers = Teacher.objects.for_org(request.organization)
    return render(request, "jobs/teachers.html", {"teachers": teachers, "shared": shared})


@org_member_required(Perm.MANAGE_TEACHERS)
@require_http_methods(["GET", "POST"])
def teacher_create(request: OrgRequest) -> HttpResponse:
    form = TeacherForm(request.POST or None, organization=request.organization)
    if request.method == "POST" and form.is_valid():
        key_change = form.key_change
        teacher = form.save(commit=False)
        teacher.created_by = request.user
        teacher.save()
        _audit_teacher(request, teacher, "created", fields=[], key_change=key_change)
        messages.success(request, f"Added the teacher “{teacher.name}”.")
        return redirect("jobs:teachers")
    return render(request, "jobs/teacher_form.html", {"form": form, "teacher": None})


@org_member_required(Perm.MANAGE_TEACHERS)
@require_http_methods(["GET", "POST"])
def teacher_edit(request: OrgRequest, teacher_id: int) -> HttpResponse:
    teacher = _teacher(request, teacher_id)
    form = TeacherForm(request.POST or None, instance=teacher, organization=request.organization)
    if request.method == "POST" and form.is_valid():
        key_change = form.key_change
        fields = [name for name in form.changed_data if name not in ("api_key", "clear_key")]
        teacher = form.save()
        _audit_teacher(request, teacher, "changed", fields=fields, key_change=key_change)
        messages.success(request, f"Saved the teacher “{teacher.name}”.")
        return redirect("jobs:teachers")
    return render(request, "jobs/teacher_form.html", {"form": form, "teacher": teacher})


def _audit_teacher(
    request: OrgRequest, teacher: Teacher, event: str, *, fields: list[str], key_change: str | None
) -> None:
    """A teacher is org configuration (ORG_UPDATED); a key set or cleared is also a SECRET_CHANGED event."""
    target = f"teacher “{teacher.name}”"
    ip = client_ip(request)
    if event == "created" or fields:
        detail = {"object": "teacher", "id": teacher.pk, "event": event, "kind": teacher.kind, "fields": fields}
        AuditEvent.record(
            request.organization,
            request.user,
            AuditEvent.Action.ORG_UPDATED,
            target=target,
            detail=detail,
            ip_address=ip,
        )
    if key_change:
        detail = {"object": "teacher", "id": teacher.pk, "event": f"api key {key_change}"}
        AuditEvent.record(
            request.organization,
            request.user,
            AuditEvent.Action.SECRET_CHANGED,
            target=target,
            detail=detail,
            ip_address=ip,
        )


@org_member_required(Perm.MANAGE_TEACHERS)
@require_http_methods(["GET", "POST"])
def teacher_delete(request: OrgRequest, teacher_id: int) -> HttpResponse:
    teacher = _teacher(request, teacher_id)
    # The worker reads the key from the teacher row when the job runs: a queued or running job needs it.
    blocking = list(teacher.jobs.filter(status__in=ACTIVE_STATUSES).values_list("name", flat=True))
    if request.method == "POST" and not blocking:
        name = teacher.name
        teacher.delete()
        AuditEvent.record(
            request.organization,
            request.user,
            AuditEvent.Action.DELETED,
            target=f"teacher “{name}”",
            detail={"object": "teacher", "id": teacher_id},
            ip_address=client_ip(request),
        )
        messages.success(request, f"Deleted the teacher “{name}”. Jobs that used it keep their record.")
        return redirect("jobs:teachers")
    return render(request, "jobs/teacher_delete.html", {"teacher": teacher, "blocking": blocking})


@org_member_required(Perm.MANAGE_TEACHERS)
@require_POST
def teacher_test(request: OrgRequest, teacher_id: int) -> HttpResponse:
    """One one-token request to the endpoint (or a look at the catalog spec): OK, or the error without the key."""
    teacher = _teacher(request, teacher_id)
    result = try_connection(teacher)
    if request.htmx:
        return render(request, "jobs/_connection.html", {"teacher": teacher, "result": result})
    (messages.success if result.ok else messages.error)(request, f"{teacher.name}: {result.message}")
    return redirect("jobs:teacher-edit", teacher_id=teacher.pk)


# ---------------------------------------------------------------- jobs


@org_member_required(Perm.USE_JOBS)
@require_GET
def job_list(request: OrgRequest) -> HttpResponse:
    chosen, statuses = presenters.status_filter(request.GET.get("status"))
    jobs = DistillationJob.objects.for_org(request.organization).select_related("corpus")
    if statuses:
        jobs = jobs.filter(status__in=statuses)
    page = Paginator(jobs, JOBS_PER_PAGE).get_page(request.GET.get("page"))
    rows = presenters.job_rows(list(page.object_list))
    context: dict[str, Any] = {
        "rows": rows,
        "page": page,
        "chosen": chosen,
        # The list's address up to its page number, the filter kept: the pager's links and the poll share it.
        "page_url": reverse("jobs:list") + (f"?status={chosen}&page=" if chosen else "?page="),
        "filters": presenters.STATUS_FILTERS,
        "any_active": any(row.job.is_active for row in rows),
    }
    # The filter links and the table's own poll swap only the table; a full load renders the page.
    if request.htmx and request.htmx.target == "jobs-table":
        return render(request, "jobs/_table.html", context)
    context["usage"] = presenters.usage(request.organization)
    return render(request, "jobs/list.html", context)


@org_member_required(Perm.USE_JOBS)
@require_http_methods(["GET", "POST"])
def job_create(request: OrgRequest) -> HttpResponse:
    org = request.organization
    if request.method == "POST":
        form = JobForm(request.POST, request.FILES, organization=org)
        if form.is_valid():
            job = _create(request, form)
            if job is not None:
                messages.success(request, f"Job “{job.name}” is queued.")
                return redirect("jobs:detail", job_id=job.pk)
    else:
        initial: dict[str, Any] = {}
        clone_id = request.GET.get("clone", "")
        # isascii: str.isdigit() also takes "²", which int() refuses; 18 digits fit a bigint id.
        if clone_id.isascii() and clone_id.isdigit() and len(clone_id) <= 18:
            initial = clone_initial(_job(request, int(clone_id)), org)
        form = JobForm(initial=initial, organization=org)
    return render(request, "jobs/create.html", {"form": form, "estimate": _estimate(form)})


def _create(request: OrgRequest, form: JobForm) -> DistillationJob | None:
    """The job, or None with the refusal added to the form (no job, no stored evaluation set)."""
    try:
        return form.create_job(request.user)
    except services.JobError as error:
        form.add_error(None, str(error))
        return None


def _estimate(form: JobForm) -> dict[str, Any]:
    """What the estimate panel shows for the form's current values (the fields that are valid so far)."""
    if not form.is_bound:
        return {"ready": False}
    form.is_valid()  # fills cleaned_data with the valid fields; the errors are the form's business
    data = getattr(form, "cleaned_data", {})
    corpus, snapshot = data.get("corpus"), form.teacher_snapshot()
    if corpus is None or not snapshot:
        return {"ready": False}
    recipe = data.get("recipe") or DistillationJob.Recipe.KD
    options = {key: data.get(key) for key in ("epochs", "token_budget", "pairs_per_chunk", "reasoning", "self_reward")}
    options = {key: value for key, value in options.items() if value is not None}
    estimate = services.estimate(corpus, recipe, options, snapshot)
    refusal = services.kd_refusal(snapshot, settings.MOE_BASE_MODEL) if recipe == "kd" else None
    refusal = refusal or (services.qa_refusal(snapshot) if recipe == "qa" else None)
    return {
        "ready": estimate is not None,
        "estimate": estimate,
        "eta": presenters.humanize_seconds(estimate.eta_seconds) if estimate else None,
        "teacher": snapshot,
        "priced": bool(snapshot.get("price_input_per_million") or snapshot.get("price_output_per_million")),
        "refusal": refusal or services.limit_refusal(form.organization),
        "advice": services.qa_teacher_advice(snapshot)
        if recipe == "qa"
        else services.kd_teacher_advice(snapshot, settings.MOE_BASE_MODEL),
    }


@org_member_required(Perm.USE_JOBS)
@require_GET
def job_estimate(request: OrgRequest) -> HttpResponse:
    """The estimate for the form's values: the htmx panel, or (no JavaScript) the form page showing it."""
    bound = JobForm(request.GET, organization=request.organization)
    estimate = _estimate(bound)
    if request.htmx:
        return render(request, "jobs/_estimate.html", {"estimate": estimate})
    # The page shows the values as typed, without error messages for fields not filled in yet.
    initial: dict[str, Any] = {**request.GET.dict(), "context": "context" in request.GET}
    form = JobForm(initial=initial, organization=request.organization)
    return render(request, "jobs/create.html", {"form": form, "estimate": estimate})


@org_member_required(Perm.USE_JOBS)
@require_GET
def job_detail(request: OrgRequest, job_id: int) -> HttpResponse:
    job = _job(request, job_id)
    context = presenters.job_context(job)
    # htmx polls the status panel every 2 s while the job is active; a full load renders the page.
    if request.htmx and request.htmx.target == "job-status":
        return render(request, "jobs/_status.html", {**context, "partial": True})
    return render(request, "jobs/detail.html", context)


@org_member_required(Perm.USE_JOBS)
@require_POST
def job_cancel(request: OrgRequest, job_id: int) -> HttpResponse:
    job = _job(request, job_id)
    try:
        services.cancel_job(job)
        job.refresh_from_db()
        if job.status == JobStatus.CANCELLED:
            messages.success(request, "Cancelled.")
        else:
            messages.success(request, "Cancel requested: the job stops after its current step.")
    except services.JobError as error:
        messages.error(request, str(error))
    return _back_to_job(request, job)


@org_member_required(Perm.USE_JOBS)
@require_POST
def job_retry(request: OrgRequest, job_id: int) -> HttpResponse:
    job = _job(request, job_id)
    try:
        job = services.retry_job(job)
        messages.success(request, "Queued again: the job resumes from its last checkpoint.")
    except services.JobError as error:
        messages.error(request, str(error))
    return _back_to_job(request, job)


def _back_to_job(request: OrgRequest, job: DistillationJob) -> HttpResponse:
    if request.htmx:
        job = _job(request, job.pk)
        return render(request, "jobs/_status.html", {**presenters.job_context(job), "partial": True})
    return redirect("jobs:detail", job_id=job.pk)


# ---------------------------------------------------------------- notifications


@org_member_required(Perm.VIEW_ORG)
@require_GET
def notification_list(request: OrgRequest) -> HttpResponse:
    """The user's notes in this org, newest first; opening the page marks them read."""
    notes = Notification.objects.for_org(request.organization).filter(recipient=request.user)
    shown = list(notes[:100])
    unread = [note.pk for note in shown if note.read_at is None]
    if unread:
        Notification.objects.filter(pk__in=unread).update(read_at=timezone.now())
    return render(request, "jobs/notifications.html", {"notes": shown, "unread": set(unread)})
