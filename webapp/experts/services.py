"""The registry's rules: registering a finished job's expert, versions, sharing, the org's mixture, metering.

Everything here reads and writes rows and files through the storage API; nothing loads a model (the inference
engine does, from `ExpertVersion.artifact_location`).
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from webapp.experts import privacy
from webapp.experts.models import Expert, ExpertVersion, Mixture, MixtureSharedExpert, UsageCounter
from webapp.tenants.models import AuditEvent, Organization

logger = logging.getLogger(__name__)

# What an expert version's storage folder holds and a download zip carries. Sample data (the Q&A pairs the
# teacher wrote, the training log's text) only goes out to the owner, or to others when the owner shares it.
PUBLIC_FILES = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "README.md",
    "base.json",
    "metrics.json",
    "config.json",
    "signature.json",
)
SAMPLE_FILES = ("qa_data.jsonl", "training_log.jsonl")


class ExpertError(Exception):
    """A request the rules refuse; the message is shown to the user as is."""


# ---------------------------------------------------------------- registration


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def storage_prefix(version: ExpertVersion) -> str:
    return f"experts/org-{version.organization_id}/expert-{version.expert_id}/v{version.number}"


def artifact_location(prefix: str) -> str:
    """Where the engine finds a stored folder: a path on the shared data volume, or s3://bucket/key."""
    if settings.STORAGE_BACKEND == "s3":
        location = getattr(default_storage, "location", "") or ""
        key = f"{location.strip('/')}/{prefix}" if location else prefix
        return f"s3://{settings.AWS_STORAGE_BUCKET_NAME}/{key}"
    return str(Path(default_storage.path(prefix)))


def _copy_to_storage(source: Path, prefix: str) -> int:
    total = 0
    for name in (*PUBLIC_FILES, *SAMPLE_FILES):
        path = source / name
        if not path.is_file():
            continue
        target = f"{prefix}/{name}"
        if default_storage.exists(target):
            default_storage.delete(target)
        with path.open("rb") as handle:
            default_storage.save(target, File(handle, name=name))
        total += path.stat().st_size
    return total


@transaction.atomic
def register_from_job(job: Any) -> ExpertVersion:
    """Make the expert version of a succeeded job (idempotent: a second call returns the same version).

    The job's `expert` (a re-distillation) gets a new version, made active; otherwise a new expert named after
    the job. The files are copied from the job's output to the storage API, so deleting or re-running the job
    never changes a registered version.
    """
    existing = ExpertVersion.objects.filter(job=job).select_related("expert").first()
    if existing is not None:
        return existing
    source = Path(job.artifact_dir)
    base = _read_json(source / "base.json")
    if not (source / "adapter_model.safetensors").is_file() or not base.get("content_hash"):
        raise ExpertError(f"The job's output at {source} has no complete adapter to register.")
    expert = job.expert
    if expert is None:
        expert = Expert.objects.create(
            organization=job.organization,
            name=job.name,
            slug=Expert.unique_slug(job.organization, job.name),
            created_by=job.created_by,
        )
        type(job).objects.filter(pk=job.pk).update(expert=expert)
    expert = Expert.objects.select_for_update().get(pk=expert.pk)
    number = (expert.versions.order_by("-number").values_list("number", flat=True).first() or 0) + 1
    version = ExpertVersion.objects.create(
        organization=expert.organization,
        expert=expert,
        number=number,
        job=job,
        base_spec=str(base.get("spec", job.student)),
        base_hash=str(base["content_hash"]),
        teacher_label=str(job.teacher_snapshot.get("name") or ""),
        recipe=job.recipe,
        metrics=_read_json(source / "metrics.json") or dict(job.metrics or {}),
        artifact_location="",
    )
    version.set_signature(_read_json(source / "signature.json"))
    prefix = storage_prefix(version)
    size = _copy_to_storage(source, prefix)
    version.artifact_location = artifact_location(prefix)
    version.size_bytes = size
    version.save(update_fields=["artifact_location", "size_bytes", "signature", "signature_hash"])
    expert.active_version = version
    expert.save(update_fields=["active_version", "updated_at"])
    AuditEvent.record(expert.organization, job.created_by, AuditEvent.Action.EXPERT_REGISTERED, target=str(version))
    return version


# ---------------------------------------------------------------- lifecycle


def set_status(expert: Expert, status: str, *, user: Any, ip_address: str | None = None) -> None:
    """Enable or disable: a disabled expert leaves every mixture until it is enabled again."""
    if status not in Expert.Status.values:
        raise ExpertError(f"Unknown status {status!r}: choose {' or '.join(Expert.Status.values)}.")
    expert.status = status
    expert.save(update_fields=["status", "updated_at"])
    AuditEvent.record(
        expert.organization,
        user,
        AuditEvent.Action.EXPERT_CHANGED,
        target=expert.name,
        detail={"object": "expert", "id": expert.pk, "event": status},
        ip_address=ip_address,
    )


def rollback(expert: Expert, version: ExpertVersion, *, user: Any) -> None:
    """Serve `version` again (any version of this expert; the newer ones are kept)."""
    if version.expert_id != expert.pk:
        raise ExpertError("That version belongs to another expert.")
    expert.active_version = version
    expert.save(update_fields=["active_version", "updated_at"])
    AuditEvent.record(
        expert.organization, user, AuditEvent.Action.EXPERT_CHANGED, target=f"{expert} → v{version.number}"
    )


@transaction.atomic
def publish(expert: Expert, *, user: Any, share_samples: bool = False) -> None:
    expert.shared = True
    expert.shared_at = timezone.now()
    expert.share_samples = share_samples
    expert.save(update_fields=["shared", "shared_at", "share_samples", "updated_at"])
    AuditEvent.record(expert.organization, user, AuditEvent.Action.EXPERT_PUBLISHED, target=expert.name)


@transaction.atomic
def withdraw(expert: Expert, *, user: Any) -> None:
    """Stop sharing: other orgs' mixtures drop it at once (re-publishing does not bring it back to them)."""
    expert.shared = False
    expert.shared_at = None
    expert.share_samples = False
    expert.save(update_fields=["shared", "shared_at", "share_samples", "updated_at"])
    MixtureSharedExpert.objects.filter(expert=expert).delete()
    AuditEvent.record(expert.organization, user, AuditEvent.Action.EXPERT_WITHDRAWN, target=expert.name)


def _delete_stored(prefix: str) -> None:
    try:
        _, files = default_storage.listdir(prefix)
    except (FileNotFoundError, OSError):
        return
    for name in files:
        default_storage.delete(f"{prefix}/{name}")


def delete_expert(expert: Expert, *, user: Any) -> None:
    """Delete the expert, its versions and their stored files (jobs keep their own output)."""
    prefixes = [storage_prefix(version) for version in expert.versions.all()]
    name = expert.name
    organization = expert.organization
    expert.delete()
    for prefix in prefixes:
        _delete_stored(prefix)
    AuditEvent.record(organization, user, AuditEvent.Action.EXPERT_DELETED, target=name)


# ---------------------------------------------------------------- the mixture


def mixture_for(organization: Organization) -> Mixture:
    mixture = Mixture.objects.filter(organization=organization).first()
    if mixture is not None:
        return mixture
    try:
        with transaction.atomic():
            return Mixture.objects.create(organization=organization)
    except IntegrityError:  # a concurrent first request made it
        return Mixture.objects.get(organization=organization)


def shared_catalog(organization: Organization) -> QuerySet[Expert]:
    """Shared experts of other orgs that have something to serve."""
    return (
        Expert.objects.filter(shared=True, status=Expert.Status.ACTIVE, active_version__isnull=False)
        .exclude(organization=organization)
        .select_related("organization", "active_version")
    )


def include_shared(organization: Organization, expert: Expert) -> None:
    if not shared_catalog(organization).filter(pk=expert.pk).exists():
        raise ExpertError("That expert is not shared.")
    MixtureSharedExpert.objects.get_or_create(mixture=mixture_for(organization), expert=expert)


def exclude_shared(organization: Organization, expert: Expert) -> None:
    MixtureSharedExpert.objects.filter(mixture__organization=organization, expert=expert).delete()


def visible_experts(organization: Organization) -> QuerySet[Expert]:
    """Experts an org may look at: its own, and every shared one (the catalog's cards)."""
    servable_shared = Q(shared=True, status=Expert.Status.ACTIVE, active_version__isnull=False)
    return Expert.objects.filter(Q(organization=organization) | servable_shared).select_related(
        "organization", "active_version"
    )


def member_experts(organization: Organization) -> list[Expert]:
    """The mixture's members: the org's own servable experts, then the shared ones it included (still shared)."""
    own = Expert.objects.for_org(organization).filter(status=Expert.Status.ACTIVE, active_version__isnull=False)
    shared = shared_catalog(organization).filter(included_by__mixture__organization=organization)
    members = list(own.select_related("organization", "active_version").order_by("name"))
    members += list(shared.order_by("name"))
    return members


@dataclass(frozen=True)
class ResolvedModel:
    """What an API `model` name means for an org: the routed mixture, the base, or one expert."""

    kind: str  # "moe" | "base" | "expert"
    name: str
    expert: Expert | None = None

    @property
    def version(self) -> ExpertVersion | None:
        return self.expert.active_version if self.expert else None


def resolve_model(organization: Organization, name: str) -> ResolvedModel | None:
    """`moe`/`auto` (routed), `base`, an own expert's slug, or `org-slug/slug` of an included shared expert.

    None for anything else — unknown, disabled, another org's expert that is not shared and included — so the
    caller answers 404 without telling which.
    """
    name = (name or "").strip()
    if name in {"moe", "auto"}:
        return ResolvedModel("moe", "moe")
    if name == "base":
        return ResolvedModel("base", "base")
    for expert in member_experts(organization):
        if expert.api_name(organization) == name:
            return ResolvedModel("expert", name, expert)
    return None


def route_candidates(organization: Organization) -> list[dict[str, Any]]:
    """The engine refs of the mixture's members: the only experts the router may choose for this org."""
    return [expert.active_version.engine_ref() for expert in member_experts(organization) if expert.active_version]


def expert_by_engine_id(organization: Organization, engine_ids: Iterable[str]) -> dict[str, Expert]:
    """Members of the org's mixture by the engine id of their active version (to name the router's choice)."""
    wanted = set(engine_ids)
    return {
        expert.active_version.engine_id: expert
        for expert in member_experts(organization)
        if expert.active_version and expert.active_version.engine_id in wanted
    }


# ---------------------------------------------------------------- metering


def record_usage(
    organization: Organization, experts: Iterable[Expert | None], *, prompt_tokens: int, completion_tokens: int
) -> None:
    """Count one request's tokens for the org, once per expert that answered (None: the base)."""
    day = timezone.localdate()
    for expert in list(experts) or [None]:
        bucket = f"expert:{expert.pk}" if expert is not None else "base"
        for _ in range(2):
            updated = UsageCounter.objects.filter(organization=organization, day=day, bucket=bucket).update(
                requests=F("requests") + 1,
                prompt_tokens=F("prompt_tokens") + prompt_tokens,
                completion_tokens=F("completion_tokens") + completion_tokens,
            )
            if updated:
                break
            try:
                with transaction.atomic():
                    UsageCounter.objects.create(
                        organization=organization,
                        day=day,
                        bucket=bucket,
                        expert=expert,
                        requests=1,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                    )
                break
            except IntegrityError:  # a concurrent request created the row: add to it
                continue


# ---------------------------------------------------------------- downloads


def can_see_samples(expert: Expert, organization: Organization) -> bool:
    return expert.organization_id == organization.pk or (expert.shared and expert.share_samples)


def download_files(version: ExpertVersion, organization: Organization) -> list[str]:
    names = list(PUBLIC_FILES)
    if can_see_samples(version.expert, organization):
        names += SAMPLE_FILES
    prefix = storage_prefix(version)
    return [name for name in names if default_storage.exists(f"{prefix}/{name}")]


def download_version(expert: Expert, organization: Organization, wanted: str = "") -> ExpertVersion:
    """The version a download of `expert` by `organization` gets: version `wanted` (a number; the owner may take
    any, another org the active one only), or the active one. ExpertError says why there is none."""
    if not wanted:
        if expert.active_version is None:
            raise ExpertError("This expert has no version to download.")
        return expert.active_version
    # isascii: str.isdigit() also takes "²", which int() refuses; a version number has at most 9 digits.
    if not (wanted.isascii() and wanted.isdigit() and len(wanted) <= 9):
        raise ExpertError("No such version.")
    version = ExpertVersion.objects.filter(expert=expert, number=int(wanted)).first()
    if version is None or (expert.organization_id != organization.pk and version.pk != expert.active_version_id):
        raise ExpertError("No such version.")
    return version


def iter_zip(version: ExpertVersion, organization: Organization) -> Iterator[bytes]:
    """The version's files as a zip, produced in pieces (the adapter can be tens of MB)."""
    prefix = storage_prefix(version)
    folder = f"{version.expert.slug}-v{version.number}"
    rewrites = rewritten_files(version, organization)
    buffer = _ZipSink()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in download_files(version, organization):
            if name in rewrites:
                archive.writestr(f"{folder}/{name}", rewrites[name]())
                yield buffer.take()
                continue
            with default_storage.open(f"{prefix}/{name}", "rb") as source, archive.open(f"{folder}/{name}", "w") as out:
                while block := source.read(1 << 20):
                    out.write(block)
                    yield buffer.take()
    yield buffer.take()


class _ZipSink(io.RawIOBase):
    """A write-only stream that hands out what was written so far (zipfile writes without seeking to it)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._chunks.append(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def store_signature(version: ExpertVersion, signature: dict[str, Any]) -> None:
    """Replace a version's routing signature (recomputed with another embedder): row and stored file."""
    name = f"{storage_prefix(version)}/signature.json"
    if default_storage.exists(name):
        default_storage.delete(name)
    default_storage.save(name, ContentFile((json.dumps(signature) + "\n").encode()))
    version.set_signature(signature)
    version.save(update_fields=["signature", "signature_hash"])


def read_stored_text(version: ExpertVersion, name: str, limit: int | None = None) -> str:
    """A stored text file (its first `limit` bytes), "" when there is none."""
    try:
        with default_storage.open(f"{storage_prefix(version)}/{name}", "rb") as handle:
            return handle.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""


def public_view(version: ExpertVersion, organization: Organization, config: Any = None) -> privacy.PublicView | None:
    """How `version` reads to `organization`: None for its owner org (every file as stored). `config`: the
    version's config.json when the caller already read it."""
    if version.expert.organization_id == organization.pk:
        return None
    if config is None:
        config = read_stored_json(version, "config.json")
    return privacy.PublicView(samples=can_see_samples(version.expert, organization), urls=privacy.endpoint_urls(config))


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()


def rewritten_files(version: ExpertVersion, organization: Organization) -> dict[str, Callable[[], bytes]]:
    """The files another org gets in their public form (`privacy`): the card and metrics without the example
    answers unless the owner shared the samples, config.json without the server's paths, and no endpoint URL."""
    if version.expert.organization_id == organization.pk:
        return {}
    config = read_stored_json(version, "config.json")  # read once: it names the URL to withhold, and is sent
    view = public_view(version, organization, config)
    assert view is not None
    return {
        "README.md": lambda: view.card(read_stored_text(version, "README.md")).encode(),
        "metrics.json": lambda: _json_bytes(view.metrics(read_stored_json(version, "metrics.json"))),
        "config.json": lambda: _json_bytes(view.config(config)),
    }


def read_stored_json(version: ExpertVersion, name: str) -> Any:
    try:
        with default_storage.open(f"{storage_prefix(version)}/{name}", "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError):
        return None


def read_stored_jsonl(version: ExpertVersion, name: str, limit: int = 200) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        with default_storage.open(f"{storage_prefix(version)}/{name}", "rb") as handle:
            for line in io.TextIOWrapper(handle, encoding="utf-8"):
                if len(rows) >= limit:
                    break
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    rows.append(value)
    except OSError:
        return []
    return rows
