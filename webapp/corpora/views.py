"""Corpus pages: list, create, upload (JS with per-file progress, or a plain form), the corpus page, delete.

Uploads from the page take two requests per file: `file_start` records the file (or refuses it, with the
reason, before a byte is sent), then `file_content` streams the raw bytes into storage. Without JavaScript,
the multipart form `file_upload` does both for each file. Every object is looked up through the current org
(`for_org`), so another org's ids answer 404.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRefresh

from webapp.corpora import services
from webapp.corpora.forms import CorpusForm, CsvColumnForm, DeleteCorpusForm, StartUploadForm
from webapp.corpora.models import Chunk, Corpus, CorpusFile, CorpusVersion, Example
from webapp.corpora.presenters import corpus_context, file_json, version_number
from webapp.tenants.current import OrgRequest, org_member_required
from webapp.tenants.permissions import Perm

CHUNKS_PER_PAGE = 20
CORPORA_PER_PAGE = 50  # newest first; older pages are a link away


def _corpus(request: OrgRequest, corpus_id: int) -> Corpus:
    return get_object_or_404(Corpus.objects.for_org(request.organization), pk=corpus_id)


def _file(request: OrgRequest, corpus: Corpus, file_id: int) -> CorpusFile:
    return get_object_or_404(CorpusFile.objects.for_org(request.organization), corpus=corpus, pk=file_id)


@org_member_required(Perm.USE_CORPORA)
@require_GET
def corpus_list(request: OrgRequest) -> HttpResponse:
    # Queries: the page's count, then the page's corpora with their file counts and current version in one query.
    corpora = (
        Corpus.objects.for_org(request.organization)
        .select_related("current_version")
        .annotate(file_count=Count("files", filter=~Q(files__status=CorpusFile.Status.REMOVED)))
        .order_by("-created_at", "-pk")
    )
    page = Paginator(corpora, CORPORA_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "corpora/list.html", {"corpora": page.object_list, "page": page})


@org_member_required(Perm.USE_CORPORA)
@require_http_methods(["GET", "POST"])
def corpus_create(request: OrgRequest) -> HttpResponse:
    form = CorpusForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        corpus = form.save(commit=False)
        corpus.organization = request.organization
        corpus.created_by = request.user
        corpus.save()
        messages.success(request, f"Created “{corpus.name}”. Add its documents below.")
        return redirect("corpora:detail", corpus_id=corpus.pk)
    return render(request, "corpora/create.html", {"form": form})


@org_member_required(Perm.USE_CORPORA)
@require_GET
def corpus_detail(request: OrgRequest, corpus_id: int) -> HttpResponse:
    corpus = _corpus(request, corpus_id)
    context = corpus_context(corpus, request.GET.get("version"))
    # htmx polls the status panel while uploads or an ingest are under way; a full load renders the page.
    if request.htmx and request.htmx.target == "corpus-status":
        if request.GET.get("polling") and not context["busy"]:
            return HttpResponseClientRefresh()  # the work the panel watched ended: show the whole page anew
        return render(request, "corpora/_status.html", {**context, "partial": True})
    return render(request, "corpora/detail.html", context)


@org_member_required(Perm.USE_CORPORA)
@require_POST
def file_start(request: OrgRequest, corpus_id: int) -> JsonResponse:
    corpus = _corpus(request, corpus_id)
    form = StartUploadForm(request.POST)
    if not form.is_valid():
        return JsonResponse({"error": form.errors.get_json_data()}, status=400)
    file = services.start_upload(
        corpus, name=form.cleaned_data["name"], size=form.cleaned_data["size"], user=request.user
    )
    status = 413 if file.status == CorpusFile.Status.REFUSED else 201
    upload_url = reverse("corpora:file-content", args=[corpus.pk, file.pk])
    return JsonResponse({**file_json(file), "upload_url": upload_url}, status=status)


@org_member_required(Perm.USE_CORPORA)
@require_http_methods(["PUT", "POST"])
def file_content(request: OrgRequest, corpus_id: int, file_id: int) -> JsonResponse:
    """The raw bytes of one file (the request body, read in blocks: never `request.body`)."""
    corpus = _corpus(request, corpus_id)
    file = _file(request, corpus, file_id)
    try:
        file = services.receive_upload(file, request)
    except services.CorpusError as error:
        return JsonResponse({**file_json(file), "message": str(error)}, status=409)
    return JsonResponse(file_json(file), status=200 if file.status != CorpusFile.Status.FAILED else 400)


@org_member_required(Perm.USE_CORPORA)
@require_POST
def file_upload(request: OrgRequest, corpus_id: int) -> HttpResponse:
    """The no-JavaScript path: a multipart form of files (spooled to disk by Django, then streamed to storage)."""
    corpus = _corpus(request, corpus_id)
    uploaded = request.FILES.getlist("files")
    if not uploaded:
        messages.error(request, "Choose one or more files to upload.")
    for item in uploaded:
        file = services.upload_file_object(corpus, name=item.name, fileobj=item, size=item.size, user=request.user)
        if file.status == CorpusFile.Status.STORED:
            messages.success(request, f"{file.name}: stored.")
        else:
            messages.error(request, f"{file.name}: {file.message}")
    if uploaded and request.POST.get("ingest") and corpus.live_files.filter(status=CorpusFile.Status.STORED).exists():
        try:
            services.request_ingest(corpus, user=request.user)
        except services.CorpusError as error:
            messages.info(request, str(error))
    return redirect("corpora:detail", corpus_id=corpus.pk)


@org_member_required(Perm.USE_CORPORA)
@require_POST
def file_remove(request: OrgRequest, corpus_id: int, file_id: int) -> HttpResponse:
    corpus = _corpus(request, corpus_id)
    file = _file(request, corpus, file_id)
    if file.status != CorpusFile.Status.REMOVED:
        services.remove_file(file, user=request.user)
        messages.success(request, f"Removed {file.name}. Ingest again to make a version without it.")
    return _back_to_corpus(request, corpus)


@org_member_required(Perm.USE_CORPORA)
@require_POST
def file_csv_column(request: OrgRequest, corpus_id: int, file_id: int) -> HttpResponse:
    corpus = _corpus(request, corpus_id)
    file = _file(request, corpus, file_id)
    form = CsvColumnForm(request.POST)
    if form.is_valid():
        try:
            services.set_csv_column(file, form.cleaned_data["column"])
            messages.success(request, f"{file.name}: the text comes from column “{form.cleaned_data['column']}”.")
        except services.CorpusError as error:
            messages.error(request, str(error))
    return _back_to_corpus(request, corpus)


@org_member_required(Perm.USE_CORPORA)
@require_POST
def corpus_ingest(request: OrgRequest, corpus_id: int) -> HttpResponse:
    corpus = _corpus(request, corpus_id)
    try:
        version = services.request_ingest(corpus, user=request.user)
        messages.success(request, f"Version {version.number} is queued for ingest.")
    except services.CorpusError as error:
        messages.error(request, str(error))
    return _back_to_corpus(request, corpus)


def _back_to_corpus(request: OrgRequest, corpus: Corpus) -> HttpResponse:
    if request.htmx:
        context = corpus_context(corpus, None)
        return render(request, "corpora/_status.html", {**context, "partial": True})
    return redirect("corpora:detail", corpus_id=corpus.pk)


@org_member_required(Perm.USE_CORPORA)
@require_GET
def corpus_chunks(request: OrgRequest, corpus_id: int) -> HttpResponse:
    """A page of the version's chunks, optionally filtered by a search text (htmx swaps the list)."""
    corpus = _corpus(request, corpus_id)
    version = _version(corpus, request.GET.get("version"))
    query = request.GET.get("q", "").strip()[:200]
    chunks = Chunk.objects.none()
    if version is not None:
        chunks = Chunk.objects.filter(version=version).select_related("document")
        if query:
            chunks = chunks.filter(text__icontains=query)
    page = Paginator(chunks.order_by("document_id", "position"), CHUNKS_PER_PAGE).get_page(request.GET.get("page"))
    context: dict[str, Any] = {"corpus": corpus, "version": version, "page": page, "query": query}
    template = "corpora/_chunks.html" if request.htmx else "corpora/chunks.html"
    return render(request, template, context)


@org_member_required(Perm.USE_CORPORA)
@require_GET
def corpus_examples(request: OrgRequest, corpus_id: int) -> HttpResponse:
    corpus = _corpus(request, corpus_id)
    version = _version(corpus, request.GET.get("version"))
    examples = Example.objects.filter(version=version) if version else Example.objects.none()
    page = Paginator(examples.select_related("document"), CHUNKS_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "corpora/examples.html", {"corpus": corpus, "version": version, "page": page})


def _version(corpus: Corpus, number: str | None) -> CorpusVersion | None:
    versions = corpus.versions.all()
    wanted = version_number(number)
    if wanted is not None:
        return versions.filter(number=wanted).first()
    return corpus.current_version or versions.first()


@org_member_required(Perm.USE_CORPORA)
@require_http_methods(["GET", "POST"])
def corpus_delete(request: OrgRequest, corpus_id: int) -> HttpResponse:
    corpus = _corpus(request, corpus_id)
    form = DeleteCorpusForm(request.POST or None, corpus=corpus)
    blocking = corpus.blocking_jobs()
    if request.method == "POST" and form.is_valid():
        try:
            services.delete_corpus(corpus, user=request.user)
        except services.CorpusError as error:
            messages.error(request, str(error))
            return redirect("corpora:detail", corpus_id=corpus.pk)
        messages.success(request, f"Deleted “{corpus.name}”, its versions and its files.")
        return redirect("corpora:list")
    return render(request, "corpora/delete.html", {"corpus": corpus, "form": form, "blocking": blocking})
