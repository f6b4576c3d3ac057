"""REST API for corpora: create, upload (multipart, or record-then-PUT for large files), ingest, inspect, delete.

    curl -H "Authorization: Bearer $TOKEN" -F name=Handbook https://host/api/v1/corpora
    curl -H "Authorization: Bearer $TOKEN" -F files=@a.pdf -F files=@b.zip https://host/api/v1/corpora/1/files
    curl -H "Authorization: Bearer $TOKEN" -X POST https://host/api/v1/corpora/1/ingest

Every lookup is scoped to the token's org: another org's ids answer 404, like ids that do not exist.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import HttpRequest, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from webapp.api.auth import ApiRequest, api_error, api_token_required, not_found
from webapp.corpora import services
from webapp.corpora.forms import CorpusForm, StartUploadForm
from webapp.corpora.models import Corpus, CorpusFile
from webapp.corpora.presenters import file_json, version_json


def _payload(request: HttpRequest) -> dict[str, Any]:
    """Form fields, or a JSON object body."""
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}
    return request.POST.dict()


# What reading a form or multipart body can raise; Django would answer its HTML 400 page, not the API's JSON.
UNREADABLE_BODY = (MultiPartParserError, RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent)


def _unreadable(error: Exception) -> JsonResponse:
    return api_error(
        f"The request body could not be read ({error or type(error).__name__}): send a JSON object, a form or "
        "multipart/form-data with its boundary.",
        status=400,
        error_type="invalid_request_error",
        code="invalid_body",
    )


def _invalid(errors: Any) -> JsonResponse:
    first = next(iter(errors.items()), ("", ["invalid"]))
    return api_error(f"{first[0]}: {first[1][0]}", status=400, error_type="invalid_request_error", code="invalid")


def corpus_json(corpus: Corpus, *, detail: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "object": "corpus",
        "id": corpus.pk,
        "name": corpus.name,
        "description": corpus.description,
        "status": corpus.status,
        "current_version": corpus.current_version.number if corpus.current_version else None,
        "created_at": int(corpus.created_at.timestamp()),
    }
    if detail:
        latest = corpus.latest_version()
        data["files"] = [file_json(file) for file in corpus.live_files]
        data["latest_version"] = version_json(latest) if latest else None
        limits = services.Limits.for_corpus(corpus)
        data["limits"] = {
            "max_file_bytes": limits.max_file_bytes,
            "max_corpus_bytes": limits.max_corpus_bytes,
            "max_files": limits.max_files,
            "org_quota_bytes": limits.org_quota_bytes,
            "corpus_bytes": limits.corpus_bytes,
            "org_bytes": limits.org_bytes,
        }
    return data


def _corpus(request: ApiRequest, corpus_id: int) -> Corpus | None:
    return Corpus.objects.for_org(request.organization).filter(pk=corpus_id).first()


@require_http_methods(["GET", "POST"])
@api_token_required
def corpus_list(request: ApiRequest) -> JsonResponse:
    if request.method == "POST":
        try:
            form = CorpusForm(_payload(request))
        except UNREADABLE_BODY as error:
            return _unreadable(error)
        if not form.is_valid():
            return _invalid(form.errors)
        corpus = form.save(commit=False)
        corpus.organization = request.organization
        corpus.created_by = request.api_token.created_by
        corpus.save()
        return JsonResponse(corpus_json(corpus, detail=True), status=201)
    corpora = Corpus.objects.for_org(request.organization).select_related("current_version")
    return JsonResponse({"object": "list", "data": [corpus_json(corpus) for corpus in corpora]})


@require_http_methods(["GET", "DELETE"])
@api_token_required
def corpus_detail(request: ApiRequest, corpus_id: int) -> JsonResponse:
    corpus = _corpus(request, corpus_id)
    if corpus is None:
        return not_found("corpus")
    if request.method == "DELETE":
        try:
            services.delete_corpus(corpus, user=request.api_token.created_by)
        except services.CorpusError as error:
            return api_error(str(error), status=409, error_type="invalid_request_error", code="corpus_in_use")
        return JsonResponse({"object": "corpus", "id": corpus_id, "deleted": True})
    return JsonResponse(corpus_json(corpus, detail=True))


@require_http_methods(["GET", "POST"])
@api_token_required
def file_list(request: ApiRequest, corpus_id: int) -> JsonResponse:
    """GET: the files. POST multipart `files`: upload them. POST {name, size}: record one file for a PUT."""
    corpus = _corpus(request, corpus_id)
    if corpus is None:
        return not_found("corpus")
    if request.method == "GET":
        return JsonResponse({"object": "list", "data": [file_json(file) for file in corpus.live_files]})
    user = request.api_token.created_by
    try:
        uploaded = request.FILES.getlist("files") if request.content_type == "multipart/form-data" else []
        payload = {} if uploaded else _payload(request)
    except UNREADABLE_BODY as error:
        return _unreadable(error)
    if uploaded:
        results = [
            file_json(services.upload_file_object(corpus, name=item.name, fileobj=item, size=item.size, user=user))
            for item in uploaded
        ]
        return JsonResponse({"object": "list", "data": results}, status=201)
    form = StartUploadForm(payload)
    if not form.is_valid():
        return _invalid(form.errors)
    file = services.start_upload(corpus, name=form.cleaned_data["name"], size=form.cleaned_data["size"], user=user)
    if file.status == CorpusFile.Status.REFUSED:
        return api_error(file.message, status=413, error_type="invalid_request_error", code="limit_exceeded")
    upload_url = request.build_absolute_uri(reverse("api:corpus-file-content", args=[corpus.pk, file.pk]))
    return JsonResponse({**file_json(file), "upload_url": upload_url}, status=201)


@require_http_methods(["GET", "DELETE"])
@api_token_required
def file_detail(request: ApiRequest, corpus_id: int, file_id: int) -> JsonResponse:
    corpus = _corpus(request, corpus_id)
    file = CorpusFile.objects.for_org(request.organization).filter(corpus=corpus, pk=file_id).first()
    if corpus is None or file is None:
        return not_found("file")
    if request.method == "DELETE" and file.status != CorpusFile.Status.REMOVED:
        # Removing twice changes nothing (and must not mark the corpus as changed again).
        services.remove_file(file, user=request.api_token.created_by)
    return JsonResponse(file_json(file))


@require_http_methods(["PUT"])
@api_token_required
def file_content(request: ApiRequest, corpus_id: int, file_id: int) -> JsonResponse:
    """The raw bytes of a recorded file, streamed into storage."""
    corpus = _corpus(request, corpus_id)
    file = CorpusFile.objects.for_org(request.organization).filter(corpus=corpus, pk=file_id).first()
    if corpus is None or file is None:
        return not_found("file")
    try:
        file = services.receive_upload(file, request)
    except services.CorpusError as error:
        return api_error(str(error), status=409, error_type="invalid_request_error", code="not_uploading")
    if file.status == CorpusFile.Status.FAILED:
        return api_error(file.message, status=400, error_type="invalid_request_error", code="upload_failed")
    return JsonResponse(file_json(file))


@require_http_methods(["POST"])
@api_token_required
def corpus_ingest(request: ApiRequest, corpus_id: int) -> JsonResponse:
    corpus = _corpus(request, corpus_id)
    if corpus is None:
        return not_found("corpus")
    try:
        version = services.request_ingest(corpus, user=request.api_token.created_by)
    except services.CorpusError as error:
        return api_error(str(error), status=409, error_type="invalid_request_error", code="cannot_ingest")
    return JsonResponse({"object": "corpus.version", **version_json(version)}, status=202)


@require_http_methods(["GET"])
@api_token_required
def version_list(request: ApiRequest, corpus_id: int) -> JsonResponse:
    """Every version of the corpus, newest first: what each ingest made, and which one a job would pin."""
    corpus = _corpus(request, corpus_id)
    if corpus is None:
        return not_found("corpus")
    versions = corpus.versions.order_by("-number")
    return JsonResponse({"object": "list", "data": [{"object": "corpus.version", **version_json(v)} for v in versions]})


@require_http_methods(["GET"])
@api_token_required
def version_detail(request: ApiRequest, corpus_id: int, number: int) -> JsonResponse:
    corpus = _corpus(request, corpus_id)
    version = corpus.versions.filter(number=number).first() if corpus else None
    if version is None:
        return not_found("corpus version")
    return JsonResponse({"object": "corpus.version", **version_json(version)})
