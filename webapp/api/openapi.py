"""The OpenAPI 3.1 description of Distillery's APIs, served at `/api/v1/openapi.json`.

Two APIs, one bearer token: the REST API (`/api/v1/`: corpora, jobs, teachers, experts) and the OpenAI-compatible
one (`/v1/`: models, chat completions, completions). Client generators (openapi-generator, openapi-python-client)
and API tools (Postman, Bruno) read it.

Kept true by tests (tests/webapp/api/test_openapi.py): the document passes openapi-spec-validator; every route of
the two URL namespaces is described with exactly the methods its view takes; and real answers of each operation
validate against its response schema, where the REST objects allow no undocumented field. The job options are read
off the job form's own fields (bounds, choices, help texts), so they cannot drift from what the API accepts.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from webapp.api.params import MAX_PAGE
from webapp.corpora.models import Corpus, CorpusFile, CorpusVersion
from webapp.experts.models import Expert
from webapp.jobs.forms import DEFAULT_OPTIONS, EVAL_SET_MAX_LINES, JobForm
from webapp.jobs.models import DistillationJob, JobStatus
from webapp.jobs.presenters import STATUS_FILTERS
from webapp.tenants.models import ApiToken

Schema = dict[str, Any]

# ---------------------------------------------------------------- schema helpers


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(properties: dict[str, Schema], *, optional: tuple[str, ...] = (), closed: bool = True, **extra: Any) -> Schema:
    """An object whose properties are all present (but `optional`); `closed`: no others may appear."""
    schema: Schema = {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        **extra,
    }
    if closed:
        schema["additionalProperties"] = False
    return schema


def list_of(item: Schema) -> Schema:
    return obj({"object": {"const": "list"}, "data": {"type": "array", "items": item}})


def paged_list_of(item: Schema) -> Schema:
    schema = list_of(item)
    schema["properties"]["has_more"] = {**BOOLEAN, "description": "More follow: ask for them with `after`."}
    schema["required"].append("has_more")
    return schema


def enum(values: Any) -> Schema:
    return {"type": "string", "enum": [str(value) for value in values]}


STRING, INTEGER, NUMBER, BOOLEAN = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
UNIX_TIME = {"type": "integer", "description": "Seconds since the Unix epoch."}
ANY_OBJECT = {"type": "object"}


# ---------------------------------------------------------------- the job form's options


def _option_schema(field: forms.Field, default: Any) -> Schema:
    """One job option, as the form field that checks it takes it."""
    schema: Schema
    if isinstance(field, forms.BooleanField):
        schema = dict(BOOLEAN)
    elif isinstance(field, forms.TypedChoiceField) and field.coerce is int:
        schema = {"type": "integer", "enum": [int(value) for value, _ in field.choices]}
    elif isinstance(field, forms.ChoiceField):
        schema = enum(value for value, _ in field.choices)
    else:
        # Django's FloatField and DecimalField are subclasses of its IntegerField.
        whole = isinstance(field, forms.IntegerField) and not isinstance(field, forms.FloatField)
        schema = dict(INTEGER if whole else NUMBER)
        bounds = {"minimum": getattr(field, "min_value", None), "maximum": getattr(field, "max_value", None)}
        schema.update({key: float(value) for key, value in bounds.items() if isinstance(value, Decimal)})
        schema.update({key: value for key, value in bounds.items() if isinstance(value, int | float)})
    if default is None:
        schema = nullable(schema)
    return {**schema, "default": default, "description": str(field.help_text)}


def job_options_schema() -> Schema:
    fields = JobForm.base_fields
    properties = {key: _option_schema(fields[key], default) for key, default in DEFAULT_OPTIONS.items()}
    # Before "auto" existed self_reward was a tick box: clients that still send true or false are understood.
    self_reward = properties["self_reward"]
    properties["self_reward"] = {
        "anyOf": [{key: value for key, value in self_reward.items() if key not in ("default", "description")}, BOOLEAN],
        "default": self_reward["default"],
        "description": f"{self_reward['description']} true and false (before auto) mean on and off.",
    }
    return obj(properties, optional=tuple(properties), description="Settings; any left out take these defaults.")


def job_create_schema() -> Schema:
    fields = JobForm.base_fields
    return obj(
        {
            "name": {**STRING, "maxLength": 120, "description": str(fields["name"].help_text)},
            "corpus": {**INTEGER, "description": "A ready corpus's id: the job uses its current version."},
            "teacher": {
                "anyOf": [STRING, INTEGER],
                "description": "A teacher's `id` from GET /api/v1/teachers (`global:0`, `org:7`); an integer "
                "names the organization's teacher with that id.",
            },
            "recipe": {
                **enum(DistillationJob.Recipe.values),
                "default": "kd",
                "description": fields["recipe"].help_text,
            },
            "options": job_options_schema(),
            "spend_cap_usd": {
                **nullable(NUMBER),
                "description": "An endpoint teacher's spending limit: the job stops before it spends more.",
            },
            "eval_set": {
                "type": "array",
                "items": obj({"question": {**STRING, "minLength": 1}, "answer": {**STRING, "minLength": 1}}),
                "minItems": 1,
                "maxItems": EVAL_SET_MAX_LINES,
                "description": "Your own questions with their expected answers: at the end the base, the expert "
                "and the teacher answer them and are scored against yours (ROUGE-L, and the teacher as judge when "
                "it is large enough).",
            },
        },
        optional=("recipe", "options", "spend_cap_usd", "eval_set"),
    )


# ---------------------------------------------------------------- components


def schemas() -> dict[str, Schema]:
    error = obj(
        {
            "error": obj(
                {"message": STRING, "type": STRING, "param": nullable(STRING), "code": nullable(STRING)},
                optional=("param", "code"),
            )
        },
        description="OpenAI's error shape, so the official clients raise readable exceptions.",
    )
    corpus_file = obj(
        {
            "id": INTEGER,
            "name": STRING,
            "status": enum(CorpusFile.Status.values),
            "message": STRING,
            "size": nullable(INTEGER),
            "declared_size": nullable(INTEGER),
            "sha256": nullable(STRING),
            "detected_type": nullable(STRING),
            "csv_columns": nullable({"type": "array", "items": STRING}),
            "csv_text_column": nullable(STRING),
        }
    )
    version_file = obj(
        {
            "id": INTEGER,
            "name": STRING,
            "verdict": STRING,
            "message": STRING,
            "detected_type": STRING,
            "details": {"type": ["object", "array"]},
            "members": {"type": "array"},
            "documents": INTEGER,
            "chunks": INTEGER,
        }
    )
    corpus_version = obj(
        {
            "object": {"const": "corpus.version"},
            "number": INTEGER,
            "status": enum(CorpusVersion.Status.values),
            "files_done": INTEGER,
            "files_total": INTEGER,
            "error": nullable(STRING),
            "stats": {**ANY_OBJECT, "description": "Documents, chunks, tokens, held-out share, languages…"},
            "created_at": UNIX_TIME,
            "finished_at": nullable(UNIX_TIME),
            "files": {"type": "array", "items": version_file},
        },
        optional=("object",),
    )
    corpus_fields: dict[str, Schema] = {
        "object": {"const": "corpus"},
        "id": INTEGER,
        "name": STRING,
        "description": STRING,
        "status": enum(Corpus.Status.values),
        "current_version": nullable(INTEGER),
        "created_at": UNIX_TIME,
    }
    limits = obj(
        {
            name: nullable(INTEGER)
            for name in (
                "max_file_bytes",
                "max_corpus_bytes",
                "max_files",
                "org_quota_bytes",
                "corpus_bytes",
                "org_bytes",
            )
        }
    )
    corpus_detail = obj(
        {
            **corpus_fields,
            "files": {"type": "array", "items": ref("CorpusFile")},
            "latest_version": nullable(ref("CorpusVersion")),
            "limits": limits,
        }
    )
    progress = obj(
        {
            "step": INTEGER,
            "total_steps": INTEGER,
            "fraction": NUMBER,
            "loss": nullable(NUMBER),
            "tokens_per_s": nullable(NUMBER),
            "eta_s": nullable(NUMBER),
            "stage_message": STRING,
        }
    )
    job_fields: dict[str, Schema] = {
        "object": {"const": "distillation_job"},
        "id": INTEGER,
        "name": STRING,
        "status": enum(JobStatus.values),
        "recipe": enum(DistillationJob.Recipe.values),
        "corpus": nullable(INTEGER),
        "corpus_version": nullable(INTEGER),
        "teacher": {**ANY_OBJECT, "description": "The teacher as the job started with it; never its key."},
        "student": STRING,
        "options": ANY_OBJECT,
        "spend_cap_usd": nullable(NUMBER),
        "eval_set": {**BOOLEAN, "description": "Whether it was given an evaluation set."},
        "queue_position": nullable(INTEGER),
        "cancel_requested": BOOLEAN,
        "progress": progress,
        "error": nullable(STRING),
        "expert": nullable(
            obj(
                {"id": INTEGER, "model": STRING, "version": nullable(INTEGER)},
                description="The expert it made (or re-distils) and the version it made, once it succeeded.",
            )
        ),
        "created_at": UNIX_TIME,
        "started_at": nullable(UNIX_TIME),
        "finished_at": nullable(UNIX_TIME),
    }
    job_detail = obj(
        {
            **job_fields,
            "metrics": nullable(ANY_OBJECT),
            "loss_history": {
                "type": "array",
                "description": "One point per optimizer step: [step, objective, cross-entropy per labelled token] "
                "(jobs from before the cross-entropy was recorded: [step, objective]).",
                "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 3},
            },
            "log_tail": {"type": "array"},
            "artifact_dir": nullable(STRING),
            "attempt": INTEGER,
            "retry_of": nullable(INTEGER),
            "usage": obj(
                {
                    "compute_seconds": NUMBER,
                    "teacher_tokens_in": INTEGER,
                    "teacher_tokens_out": INTEGER,
                    "teacher_cost_usd": NUMBER,
                }
            ),
        }
    )
    teacher = obj(
        {
            "object": {"const": "teacher"},
            "id": {**STRING, "description": "The value a new job's `teacher` takes."},
            "name": nullable(STRING),
            "source": nullable(STRING),
            "kind": nullable(STRING),
            "spec": nullable(STRING),
            "base_url": nullable(STRING),
            "model_name": nullable(STRING),
            "api_key_last4": nullable(STRING),
            "price_input_per_million": nullable(NUMBER),
            "price_output_per_million": nullable(NUMBER),
        }
    )
    expert_fields: dict[str, Schema] = {
        "object": {"const": "expert"},
        "id": INTEGER,
        "name": STRING,
        "model": {**STRING, "description": "The name the chat API takes (`org-slug/slug` for another org's)."},
        "owned_by": STRING,
        "own": BOOLEAN,
        "description": STRING,
        "status": enum(Expert.Status.values),
        "shared": BOOLEAN,
        "in_mixture": BOOLEAN,
        "active_version": nullable(INTEGER),
        "gap_closed": {**nullable(NUMBER), "description": "Share of the base → teacher gap closed, in %."},
        "created_at": UNIX_TIME,
    }
    expert_version = obj(
        {
            "number": INTEGER,
            "active": BOOLEAN,
            "recipe": STRING,
            "teacher": STRING,
            "base": obj({"spec": STRING, "content_hash": STRING}),
            "gap_closed": nullable(NUMBER),
            "metrics": {**ANY_OBJECT, "description": "metrics.json; another org's view leaves out example answers."},
            "size_bytes": INTEGER,
            "created_at": UNIX_TIME,
            "job": {**nullable(INTEGER), "description": "The owner org only."},
        },
        optional=("job",),
    )
    expert_detail = obj(
        {
            **expert_fields,
            "samples_shared": BOOLEAN,
            "versions": {"type": "array", "items": ref("ExpertVersion")},
        }
    )
    token = obj(
        {
            "id": INTEGER,
            "object": {"const": "api_token"},
            "name": STRING,
            "prefix": STRING,
            "scope": {
                **enum(ApiToken.Scope.values),
                "description": "full: every route; models: the OpenAI-compatible API (/v1/) only.",
            },
            "created_at": UNIX_TIME,
            "last_used_at": nullable(UNIX_TIME),
            "revoked": BOOLEAN,
        }
    )
    organization = obj(
        {"object": {"const": "organization"}, "id": INTEGER, "slug": STRING, "name": STRING, "members": INTEGER}
    )
    model = obj(
        {"id": STRING, "object": {"const": "model"}, "created": UNIX_TIME, "owned_by": STRING, "version": INTEGER},
        optional=("version",),
        closed=False,
    )
    return {
        "Error": error,
        "Organization": organization,
        "ApiToken": token,
        "Corpus": obj(corpus_fields),
        "CorpusDetail": corpus_detail,
        "CorpusFile": corpus_file,
        "UploadSlot": obj({**corpus_file["properties"], "upload_url": {**STRING, "format": "uri"}}),
        "CorpusVersion": corpus_version,
        "Job": obj(job_fields),
        "JobDetail": job_detail,
        "JobCreate": job_create_schema(),
        "Teacher": teacher,
        "Expert": obj(expert_fields),
        "ExpertDetail": expert_detail,
        "ExpertVersion": expert_version,
        "ExpertChange": obj(
            {
                "status": {**enum(Expert.Status.values), "description": "A disabled expert leaves every mixture."},
                "active_version": {**INTEGER, "description": "The version to serve (any of this expert's)."},
                "shared": {**BOOLEAN, "description": "In every organization's catalog (owners' and admins' tokens)."},
                "share_samples": {
                    **BOOLEAN,
                    "description": "With `shared`: other organizations also see the Q&A data, the best and worst "
                    "answers and the training log.",
                },
            },
            optional=("status", "active_version", "shared", "share_samples"),
            minProperties=1,
            description="The changes to make; all are checked before any is made.",
        ),
        **webhook_schemas(),
        "Model": model,
        "ChatCompletionRequest": chat_request(),
        "CompletionRequest": completion_request(),
        "ChatCompletion": chat_completion(),
        "Completion": completion(),
        "Routing": {
            **ANY_OBJECT,
            "description": "Distillery's addition: the experts that answered, with their weights, and every "
            "candidate's score (`moe` only).",
        },
    }


def sampling_properties() -> dict[str, Schema]:
    return {
        "model": {**STRING, "description": "`moe` (routed), `base`, or an expert's `model` name."},
        "max_tokens": {**INTEGER, "minimum": 1},
        "max_completion_tokens": {**INTEGER, "minimum": 1},
        "temperature": {**NUMBER, "minimum": 0, "maximum": 2, "default": 1},
        "top_p": {**NUMBER, "minimum": 0, "maximum": 1, "default": 1},
        "stop": {"anyOf": [STRING, {"type": "array", "items": STRING}]},
        "seed": INTEGER,
        "n": {"const": 1},
        "stream": {**BOOLEAN, "default": False},
    }


def chat_request() -> Schema:
    message = obj({"role": enum(["system", "developer", "user", "assistant"]), "content": STRING}, closed=False)
    schema = obj(
        {**sampling_properties(), "messages": {"type": "array", "items": message, "minItems": 1}}, closed=False
    )
    return {**schema, "required": ["model", "messages"]}


def completion_request() -> Schema:
    prompt = {"anyOf": [{**STRING, "minLength": 1}, {"type": "array", "items": STRING, "minItems": 1, "maxItems": 1}]}
    schema = obj({**sampling_properties(), "prompt": prompt}, closed=False)
    return {**schema, "required": ["model", "prompt"]}


def _usage() -> Schema:
    return obj({"prompt_tokens": INTEGER, "completion_tokens": INTEGER, "total_tokens": INTEGER}, closed=False)


def chat_completion() -> Schema:
    message = obj(
        {
            "role": {"const": "assistant"},
            "content": STRING,
            "reasoning_content": {**STRING, "description": "A reasoning expert's thinking, apart from its answer."},
        },
        optional=("reasoning_content",),
        closed=False,
    )
    choice = obj({"index": INTEGER, "message": message, "finish_reason": STRING}, closed=False)
    return obj(
        {
            "id": STRING,
            "object": {"const": "chat.completion"},
            "created": UNIX_TIME,
            "model": STRING,
            "choices": {"type": "array", "items": choice},
            "usage": _usage(),
            "routing": nullable(ref("Routing")),
        },
        closed=False,
    )


def completion() -> Schema:
    choice = obj({"index": INTEGER, "text": STRING, "logprobs": {"type": "null"}, "finish_reason": STRING})
    return obj(
        {
            "id": STRING,
            "object": {"const": "text_completion"},
            "created": UNIX_TIME,
            "model": STRING,
            "choices": {"type": "array", "items": choice},
            "usage": _usage(),
            "routing": nullable(ref("Routing")),
        },
        closed=False,
    )


# ---------------------------------------------------------------- operations


ERRORS = {
    "400": "The request is invalid; `error.message` says what to change.",
    "401": "No token, or a revoked or unknown one.",
    "403": "The token's access does not reach this route (a models-only token, outside /v1/).",
    "404": "No such object for this organization (another organization's ids answer the same).",
    "409": "The object's state does not allow it now.",
    "413": "Over a size limit.",
    "429": "Over the organization's rate limit (see `Retry-After`).",
    "503": "The inference engine is away; retry shortly.",
}


def json_content(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def operation(
    operation_id: str,
    summary: str,
    tag: str,
    *,
    ok: tuple[str, Schema] | dict[str, Any],
    errors: tuple[str, ...] = ("401",),
    parameters: list[Schema] | None = None,
    body: dict[str, Any] | None = None,
    description: str = "",
) -> Schema:
    """One operation: `ok` is (status, schema of its JSON) or a whole responses entry."""
    if isinstance(ok, tuple):
        status, schema = ok
        responses: dict[str, Any] = {status: {"description": "OK", "content": json_content(schema)}}
    else:
        responses = dict(ok)
    for code in errors:
        responses[code] = {"description": ERRORS[code], "content": json_content(ref("Error"))}
    op: Schema = {"operationId": operation_id, "summary": summary, "tags": [tag], "responses": responses}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = body
    return op


def path_id(name: str, what: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": INTEGER, "description": f"The {what}'s id."}


def query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def paging(what: str) -> list[Schema]:
    """OpenAI's list paging (webapp/api/params.page): `limit` per page, then `after` the last id."""
    return [
        query("limit", {**INTEGER, "minimum": 1, "maximum": MAX_PAGE, "default": MAX_PAGE}, f"{what} per page."),
        query("after", INTEGER, "The next page: the last `id` of the previous one (while `has_more`)."),
    ]


def json_body(schema: Schema, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": json_content(schema)}


def rest_paths() -> dict[str, Any]:
    corpus_id, file_id = path_id("corpus_id", "corpus"), path_id("file_id", "file")
    job_id, expert_id = path_id("job_id", "job"), path_id("expert_id", "expert")
    new_corpus = obj({"name": {**STRING, "maxLength": 200}, "description": STRING}, optional=("description",))
    upload_slot = obj({"name": STRING, "size": {**INTEGER, "minimum": 0}})
    multipart = {"type": "object", "properties": {"files": {"type": "array", "items": {"type": "string"}}}}
    status_values = [name for name, _, _ in STATUS_FILTERS if name] + list(JobStatus.values)
    return {
        "/api/v1/openapi.json": {
            "get": {
                **operation("getOpenapi", "This document", "Meta", ok=("200", ANY_OBJECT), errors=()),
                "security": [],
            }
        },
        "/api/v1/organization": {
            "get": operation(
                "getOrganization", "The token's organization", "Organization", ok=("200", ref("Organization"))
            )
        },
        "/api/v1/tokens": {
            "get": operation(
                "listTokens", "The organization's API tokens", "Organization", ok=("200", list_of(ref("ApiToken")))
            )
        },
        "/api/v1/tokens/{token_id}": {
            "get": operation(
                "getToken",
                "One API token (never its secret)",
                "Organization",
                ok=("200", ref("ApiToken")),
                errors=("401", "404"),
                parameters=[path_id("token_id", "token")],
            )
        },
        "/api/v1/corpora": {
            "get": operation(
                "listCorpora", "The organization's corpora", "Corpora", ok=("200", list_of(ref("Corpus")))
            ),
            "post": operation(
                "createCorpus",
                "Create a corpus",
                "Corpora",
                ok=("201", ref("CorpusDetail")),
                errors=("400", "401"),
                body={
                    "required": True,
                    "content": {
                        "application/json": {"schema": new_corpus},
                        "application/x-www-form-urlencoded": {"schema": new_corpus},
                        "multipart/form-data": {"schema": new_corpus},
                    },
                },
            ),
        },
        "/api/v1/corpora/{corpus_id}": {
            "get": operation(
                "getCorpus",
                "A corpus with its files, latest version and limits",
                "Corpora",
                ok=("200", ref("CorpusDetail")),
                errors=("401", "404"),
                parameters=[corpus_id],
            ),
            "delete": operation(
                "deleteCorpus",
                "Delete a corpus (refused while a job uses it)",
                "Corpora",
                ok=("200", obj({"object": {"const": "corpus"}, "id": INTEGER, "deleted": {"const": True}})),
                errors=("401", "404", "409"),
                parameters=[corpus_id],
            ),
        },
        "/api/v1/corpora/{corpus_id}/files": {
            "get": operation(
                "listCorpusFiles",
                "A corpus's files",
                "Corpora",
                ok=("200", list_of(ref("CorpusFile"))),
                errors=("401", "404"),
                parameters=[corpus_id],
            ),
            "post": operation(
                "uploadCorpusFiles",
                "Upload files (multipart `files`), or record one large file for a PUT",
                "Corpora",
                description="multipart/form-data with one or more `files` uploads them at once (201, a list). "
                'A JSON `{"name", "size"}` records one file and answers its `upload_url`, which takes the raw '
                "bytes with PUT, streamed to storage.",
                ok={
                    "201": {
                        "description": "The uploaded files, or the recorded file with its `upload_url`.",
                        "content": {
                            "application/json": {"schema": {"anyOf": [list_of(ref("CorpusFile")), ref("UploadSlot")]}}
                        },
                    }
                },
                errors=("400", "401", "404", "413"),
                parameters=[corpus_id],
                body={
                    "required": True,
                    "content": {
                        "multipart/form-data": {"schema": multipart},
                        "application/json": {"schema": upload_slot},
                    },
                },
            ),
        },
        "/api/v1/corpora/{corpus_id}/files/{file_id}": {
            "get": operation(
                "getCorpusFile",
                "One file",
                "Corpora",
                ok=("200", ref("CorpusFile")),
                errors=("401", "404"),
                parameters=[corpus_id, file_id],
            ),
            "delete": operation(
                "removeCorpusFile",
                "Remove a file from the corpus (the next ingest leaves it out)",
                "Corpora",
                ok=("200", ref("CorpusFile")),
                errors=("401", "404"),
                parameters=[corpus_id, file_id],
            ),
        },
        "/api/v1/corpora/{corpus_id}/files/{file_id}/content": {
            "put": operation(
                "putCorpusFileContent",
                "The raw bytes of a recorded file",
                "Corpora",
                ok=("200", ref("CorpusFile")),
                errors=("400", "401", "404", "409"),
                parameters=[corpus_id, file_id],
                body={"required": True, "content": {"application/octet-stream": {"schema": {"type": "string"}}}},
            )
        },
        "/api/v1/corpora/{corpus_id}/ingest": {
            "post": operation(
                "ingestCorpus",
                "Ingest the corpus's files into a new version",
                "Corpora",
                ok=("202", ref("CorpusVersion")),
                errors=("401", "404", "409"),
                parameters=[corpus_id],
            )
        },
        "/api/v1/corpora/{corpus_id}/versions": {
            "get": operation(
                "listCorpusVersions",
                "Every version of a corpus, newest first",
                "Corpora",
                ok=("200", list_of(ref("CorpusVersion"))),
                errors=("401", "404"),
                parameters=[corpus_id],
            )
        },
        "/api/v1/corpora/{corpus_id}/versions/{number}": {
            "get": operation(
                "getCorpusVersion",
                "A version: status, statistics and each file's verdict",
                "Corpora",
                ok=("200", ref("CorpusVersion")),
                errors=("401", "404"),
                parameters=[corpus_id, {**path_id("number", "version"), "description": "The version's number."}],
            )
        },
        "/api/v1/jobs": {
            "get": operation(
                "listJobs",
                "The organization's distillation jobs, newest first, a page at a time",
                "Jobs",
                ok=("200", paged_list_of(ref("Job"))),
                errors=("400", "401"),
                parameters=[
                    query("status", enum(status_values), "A status, or a group: active, queued, …"),
                    *paging("Jobs"),
                ],
            ),
            "post": operation(
                "createJob",
                "Start a distillation job",
                "Jobs",
                ok=("201", ref("JobDetail")),
                errors=("400", "401"),
                body=json_body(ref("JobCreate")),
            ),
        },
        "/api/v1/jobs/{job_id}": {
            "get": operation(
                "getJob",
                "A job with its progress, metrics, log and usage",
                "Jobs",
                ok=("200", ref("JobDetail")),
                errors=("401", "404"),
                parameters=[job_id],
            )
        },
        "/api/v1/jobs/{job_id}/cancel": {
            "post": operation(
                "cancelJob",
                "Cancel: at once when queued, after the current step when running",
                "Jobs",
                ok=("200", ref("JobDetail")),
                errors=("401", "404", "409"),
                parameters=[job_id],
            )
        },
        "/api/v1/jobs/{job_id}/retry": {
            "post": operation(
                "retryJob",
                "Retry a failed or cancelled job from its latest checkpoint",
                "Jobs",
                ok=("200", ref("JobDetail")),
                errors=("401", "404", "409"),
                parameters=[job_id],
            )
        },
        "/api/v1/teachers": {
            "get": operation("listTeachers", "The teachers a job may use", "Jobs", ok=("200", list_of(ref("Teacher"))))
        },
        "/api/v1/experts": {
            "get": operation(
                "listExperts",
                "The organization's experts, then other organizations' shared ones",
                "Experts",
                ok=("200", list_of(ref("Expert"))),
            )
        },
        "/api/v1/experts/{expert_id}": {
            "get": operation(
                "getExpert",
                "An expert with its versions and their metrics",
                "Experts",
                ok=("200", ref("ExpertDetail")),
                errors=("401", "404"),
                parameters=[expert_id],
            ),
            "patch": operation(
                "changeExpert",
                "Enable or disable an expert, choose the version it serves, share it or withdraw it",
                "Experts",
                ok=("200", ref("ExpertDetail")),
                errors=("400", "401", "404"),
                parameters=[expert_id],
                body=json_body(ref("ExpertChange")),
            ),
            "delete": operation(
                "deleteExpert",
                "Delete an expert and its stored versions (a shared one is withdrawn first)",
                "Experts",
                ok=("200", obj({"object": {"const": "expert"}, "id": INTEGER, "deleted": {"const": True}})),
                errors=("401", "404", "409"),
                parameters=[expert_id],
            ),
        },
        "/api/v1/experts/{expert_id}/download": {
            "get": operation(
                "downloadExpert",
                "The PEFT adapter with its card and metadata, as a zip",
                "Experts",
                ok={
                    "200": {
                        "description": "A zip of one folder: adapter_config.json, adapter_model.safetensors, "
                        "README.md (the card), base.json, metrics.json, config.json, signature.json (and, for the "
                        "owner or with shared samples, qa_data.jsonl and training_log.jsonl).",
                        "content": {"application/zip": {"schema": {"type": "string", "contentEncoding": "binary"}}},
                    }
                },
                errors=("401", "404"),
                parameters=[
                    expert_id,
                    query("version", INTEGER, "A version's number (the owner's any version); default the active one."),
                ],
            )
        },
        **webhook_paths(),
    }


def webhook_paths() -> dict[str, Any]:
    tag = "Webhooks"
    endpoint_id = path_id("endpoint_id", "webhook endpoint")
    return {
        "/api/v1/webhooks": {
            "get": operation(
                "listWebhookEndpoints",
                "The organization's webhook endpoints",
                tag,
                ok=("200", list_of(ref("WebhookEndpoint"))),
            ),
            "post": operation(
                "createWebhookEndpoint",
                "Add an endpoint; the answer holds its signing secret, once",
                tag,
                ok=("201", ref("WebhookEndpointWithSecret")),
                errors=("400", "401"),
                body=json_body(ref("WebhookEndpointWrite")),
            ),
        },
        "/api/v1/webhooks/{endpoint_id}": {
            "get": operation(
                "getWebhookEndpoint",
                "One endpoint",
                tag,
                ok=("200", ref("WebhookEndpoint")),
                errors=("401", "404"),
                parameters=[endpoint_id],
            ),
            "patch": operation(
                "changeWebhookEndpoint",
                "Change its URL, description, events, or enable or disable it",
                tag,
                ok=("200", ref("WebhookEndpoint")),
                errors=("400", "401", "404"),
                parameters=[endpoint_id],
                body=json_body({**ref("WebhookEndpointWrite"), "description": "Any of the fields."}),
            ),
            "delete": operation(
                "deleteWebhookEndpoint",
                "Delete an endpoint and its delivery log",
                tag,
                ok=("200", obj({"object": {"const": "webhook_endpoint"}, "id": INTEGER, "deleted": {"const": True}})),
                errors=("401", "404"),
                parameters=[endpoint_id],
            ),
        },
        "/api/v1/webhooks/{endpoint_id}/roll-secret": {
            "post": operation(
                "rollWebhookSecret",
                "A new signing secret, in this answer only; the old one stops verifying",
                tag,
                ok=("200", ref("WebhookEndpointWithSecret")),
                errors=("401", "404"),
                parameters=[endpoint_id],
            )
        },
        "/api/v1/webhooks/{endpoint_id}/test": {
            "post": operation(
                "testWebhookEndpoint",
                "Send a ping event now; its delivery tells the outcome",
                tag,
                ok=("202", ref("WebhookDelivery")),
                errors=("401", "404", "409"),
                parameters=[endpoint_id],
            )
        },
        "/api/v1/webhooks/{endpoint_id}/deliveries": {
            "get": operation(
                "listWebhookDeliveries",
                "The endpoint's deliveries, newest first",
                tag,
                ok=("200", paged_list_of(ref("WebhookDelivery"))),
                errors=("400", "401", "404"),
                parameters=[
                    endpoint_id,
                    *paging("Deliveries"),
                ],
            )
        },
        "/api/v1/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver": {
            "post": operation(
                "redeliverWebhook",
                "Send a delivered or failed event again, with the same webhook_id",
                tag,
                ok=("202", ref("WebhookDelivery")),
                errors=("401", "404", "409"),
                parameters=[endpoint_id, path_id("delivery_id", "delivery")],
            )
        },
    }


def stream_or_json(schema: Schema, what: str) -> dict[str, Any]:
    return {
        "200": {
            "description": f"The {what}; with `stream: true`, server-sent events of chunks, ending `data: [DONE]`.",
            "content": {
                "application/json": {"schema": schema},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        }
    }


def openai_paths() -> dict[str, Any]:
    tag = "OpenAI-compatible"
    model = {"name": "model", "in": "path", "required": True, "schema": STRING, "description": "A model's `id`."}
    return {
        "/v1/models": {
            "get": operation(
                "listModels",
                "The routed mixture (moe), the base, and the mixture's experts",
                tag,
                ok=("200", list_of(ref("Model"))),
            )
        },
        "/v1/models/{model}": {
            "get": operation(
                "getModel", "One model", tag, ok=("200", ref("Model")), errors=("401", "404"), parameters=[model]
            )
        },
        "/v1/chat/completions": {
            "post": operation(
                "createChatCompletion",
                "Chat with the routed mixture, the base or one expert",
                tag,
                ok=stream_or_json(ref("ChatCompletion"), "completion"),
                errors=("400", "401", "404", "503"),
                body=json_body(ref("ChatCompletionRequest")),
            )
        },
        "/v1/completions": {
            "post": operation(
                "createCompletion",
                "Complete a prompt (raw text, no chat template)",
                tag,
                ok=stream_or_json(ref("Completion"), "completion"),
                errors=("400", "401", "404", "503"),
                body=json_body(ref("CompletionRequest")),
            )
        },
    }


def with_token_refusals(paths: dict[str, Any], statuses: tuple[str, ...]) -> dict[str, Any]:
    """What every operation that takes a token may also answer (`webapp/api/auth.py`): 429 past the org's rate
    limit, and on the REST API 403 to a models-only token."""
    for item in paths.values():
        for operation in item.values():
            if operation.get("security") != []:
                for status in statuses:
                    operation["responses"][status] = {
                        "description": ERRORS[status],
                        "content": json_content(ref("Error")),
                    }
    return paths


# ---------------------------------------------------------------- webhooks (requests Distillery sends)

CORPUS_EVENTS = {
    "corpus.ready": "An ingest made a new version of a corpus: a job can distil it now.",
    "corpus.failed": "An ingest failed: `data.version.error` says why, and each file's verdict is listed.",
}
JOB_EVENTS = {
    "job.succeeded": "A job finished and registered its expert: `data.expert.model` is the name the chat API takes.",
    "job.failed": "A job failed: `data.error` says why. It can be retried (POST /api/v1/jobs/{id}/retry).",
    "job.cancelled": "A job was cancelled, queued or running.",
}


def webhook_schemas() -> dict[str, Schema]:
    timestamp = {**STRING, "format": "date-time", "description": "When the event happened (UTC)."}
    subscribable = enum([*CORPUS_EVENTS, *JOB_EVENTS])
    event_types = enum([*CORPUS_EVENTS, *JOB_EVENTS, "ping"])
    endpoint_fields: dict[str, Schema] = {
        "object": {"const": "webhook_endpoint"},
        "id": INTEGER,
        "url": {**STRING, "format": "uri", "description": "Where the events are POSTed."},
        "description": STRING,
        "events": {"type": "array", "items": subscribable, "description": "The events it receives."},
        "enabled": {**BOOLEAN, "description": "A disabled endpoint receives nothing."},
        "disabled_reason": {
            **nullable(STRING),
            "description": "Why the server disabled it: every delivery failed for `WEBHOOK_DISABLE_AFTER_DAYS` "
            "(5 by default). Null when enabled or disabled by a person; enabling it clears this.",
        },
        "created_at": UNIX_TIME,
    }
    secret = {
        **STRING,
        "description": "The signing secret (`whsec_…`): in the answer of a create or a roll only, never again.",
    }
    return {
        "WebhookEndpoint": obj(endpoint_fields),
        "WebhookEndpointWithSecret": obj({**endpoint_fields, "secret": secret}),
        "WebhookEndpointWrite": obj(
            {
                "url": {**STRING, "format": "uri", "description": "An http(s) URL the server may reach."},
                "description": STRING,
                "events": {"type": "array", "items": subscribable, "minItems": 1},
                "enabled": BOOLEAN,
            },
            optional=("description", "enabled"),
            description="A new endpoint; a change (PATCH) gives any of these fields and keeps the others.",
        ),
        "WebhookDelivery": obj(
            {
                "object": {"const": "webhook_delivery"},
                "id": INTEGER,
                "endpoint": INTEGER,
                "webhook_id": {**STRING, "description": "The `webhook-id` header: the same on every attempt."},
                "type": event_types,
                "status": enum(["pending", "succeeded", "failed"]),
                "attempts": INTEGER,
                "max_attempts": INTEGER,
                "response_status": {**nullable(INTEGER), "description": "The receiver's last HTTP status."},
                "error": {**nullable(STRING), "description": "Why the last attempt failed."},
                "next_attempt_at": {**nullable(UNIX_TIME), "description": "While pending: when it is tried."},
                "created_at": UNIX_TIME,
            }
        ),
        "CorpusEvent": obj(
            {
                "type": enum(list(CORPUS_EVENTS)),
                "timestamp": timestamp,
                "data": obj(
                    {
                        "corpus": obj({"id": INTEGER, "name": STRING}),
                        "version": ref("CorpusVersion"),
                    }
                ),
            },
            description="An ingest ended: the corpus, and the version as `GET /api/v1/corpora/{id}/versions/{n}` "
            "gives it.",
        ),
        "JobEvent": obj(
            {"type": enum(list(JOB_EVENTS)), "timestamp": timestamp, "data": ref("Job")},
            description="A job ended: the job as `GET /api/v1/jobs/{id}` gives it (without its details).",
        ),
        "PingEvent": obj(
            {
                "type": enum(["ping"]),
                "timestamp": timestamp,
                "data": obj(
                    {
                        "object": enum(["ping"]),
                        "endpoint": {**INTEGER, "description": "The endpoint's id."},
                        "organization": {**STRING, "description": "The organization's slug."},
                        "sent_by": {**STRING, "description": "Who pressed “Send test event”."},
                    }
                ),
            },
            description="A test event, sent from the endpoint's page.",
        ),
    }


WEBHOOK_HEADERS = {
    "webhook-id": "The event's id (`msg_…`): the same on every attempt and redelivery; de-duplicate on it.",
    "webhook-timestamp": "Unix seconds of this attempt; refuse one far from your clock (replays).",
    "webhook-signature": "`v1,` and the base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` keyed "
    "with the endpoint's secret (its base64 part after `whsec_`), as Standard Webhooks define it.",
}


def webhooks() -> dict[str, Any]:
    """The events an org's webhook endpoints receive, as OpenAPI 3.1 describes requests an API sends."""
    parameters = [
        {"name": name, "in": "header", "required": True, "schema": STRING, "description": description}
        for name, description in WEBHOOK_HEADERS.items()
    ]
    responses = {
        "2XX": {"description": "Delivered. Any other answer, a redirect or none within the timeout is retried."}
    }

    def event(name: str, summary: str, schema: str) -> Schema:
        return {
            "post": {
                "operationId": "webhook_" + name.replace(".", "_"),
                "summary": summary,
                "tags": ["Webhooks"],
                "parameters": parameters,
                "requestBody": json_body(ref(schema)),
                "responses": responses,
            }
        }

    events = {name: event(name, summary, "CorpusEvent") for name, summary in CORPUS_EVENTS.items()}
    events.update({name: event(name, summary, "JobEvent") for name, summary in JOB_EVENTS.items()})
    events["ping"] = event("ping", "A test event, sent from the endpoint's page.", "PingEvent")
    return events


def document(server_url: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Distillery API",
            "version": "1",
            "description": "Corpora, distillation jobs and experts (`/api/v1/`), and an OpenAI-compatible API "
            "to query them (`/v1/`). One bearer token for both: create it under API tokens (a models-only token "
            "reaches `/v1/` alone). Every id is scoped to the token's organization; another organization's ids "
            "answer 404.",
        },
        "servers": [{"url": server_url}],
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": name}
            for name in ("Corpora", "Jobs", "Experts", "OpenAI-compatible", "Organization", "Meta", "Webhooks")
        ],
        "paths": {
            **with_token_refusals(rest_paths(), ("403", "429")),
            **with_token_refusals(openai_paths(), ("429",)),
        },
        "webhooks": webhooks(),
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "dst_…"}},
            "schemas": schemas(),
        },
    }


@require_GET
def openapi_json(request: HttpRequest) -> JsonResponse:
    """The description itself; public (it holds no data), so tools can fetch it without a token."""
    return JsonResponse(document(request.build_absolute_uri("/").rstrip("/")))
