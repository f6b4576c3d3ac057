"""Corpora: a tenant's uploaded files, and the immutable versions its ingests make of them.

- `Corpus` is the working set a user edits: files are added and removed at any time.
- `CorpusFile` exists from the moment its upload starts (status `uploading`), so a cut-off upload shows as
  failed, never as a half-stored success. Its bytes live in the storage API under a tenant-namespaced path.
- `CorpusVersion` is what one ingest made of the working set at that moment: its own documents, chunks,
  examples and per-file verdicts. A new ingest makes a new version and leaves the old ones intact, so a job
  pinned to a version never sees its data change. The version row is the record of the ingest task (status,
  attempt fencing, lease, progress), not Celery's result backend.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import F, Q, Sum
from django.utils import timezone

from webapp.tenants.models import Organization, TenantOwnedModel


class Corpus(TenantOwnedModel):
    class Status(models.TextChoices):
        UPLOADING = "uploading", "Uploading"
        QUEUED = "queued", "Queued"
        INGESTING = "ingesting", "Ingesting"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # The status the corpus page shows: the latest version's, or `uploading` before any ingest / after changes.
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UPLOADING)
    # The newest version that finished ready: what a new job uses by default.
    current_version = models.ForeignKey(
        "CorpusVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "corpora"

    def __str__(self) -> str:
        return self.name

    @property
    def live_files(self) -> models.QuerySet[CorpusFile]:
        return self.files.exclude(status=CorpusFile.Status.REMOVED)

    def stored_bytes(self) -> int:
        return int(self.files.filter(status__in=CorpusFile.COUNTS_AGAINST_QUOTA).aggregate(n=Sum("size"))["n"] or 0)

    def latest_version(self) -> CorpusVersion | None:
        return self.versions.order_by("-number").first()

    def has_unversioned_changes(self) -> bool:
        """Whether the working set differs from what the latest version was made of."""
        latest = self.latest_version()
        wanted = set(self.files.filter(status=CorpusFile.Status.STORED).values_list("pk", flat=True))
        if latest is None:
            return bool(wanted)
        return wanted != set(latest.files.values_list("pk", flat=True))

    def blocking_jobs(self) -> list[str]:
        """Descriptions of queued or running jobs that use this corpus (deleting it is refused while any exist).

        The jobs app registers its query here once it exists; until then no job can use a corpus.
        """
        return [description for users_of in CORPUS_USERS for description in users_of(self)]


# Callables `(corpus) -> list[str]`, registered by apps whose running work reads a corpus (jobs): each returns
# descriptions of the queued or running work that uses the corpus, empty when none does.
CORPUS_USERS: list[Any] = []


class CorpusFile(TenantOwnedModel):
    class Status(models.TextChoices):
        UPLOADING = "uploading", "Uploading"
        STORED = "stored", "Stored"
        FAILED = "failed", "Failed"
        REFUSED = "refused", "Refused"
        DUPLICATE = "duplicate", "Duplicate"
        REMOVED = "removed", "Removed"

    # Files whose bytes are (or are about to be) in storage: they count against the limits.
    COUNTS_AGAINST_QUOTA = (Status.UPLOADING, Status.STORED)

    corpus = models.ForeignKey(Corpus, on_delete=models.CASCADE, related_name="files")
    # The path the user gave, folders included ("handbook/leave.md"): shown, and used to name documents.
    name = models.CharField(max_length=500)
    declared_size = models.BigIntegerField(help_text="Size the client announced before sending the bytes.")
    size = models.BigIntegerField(default=0, help_text="Bytes received and stored.")
    sha256 = models.CharField(max_length=64, blank=True, db_index=True)
    storage_name = models.CharField(max_length=700, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UPLOADING)
    message = models.CharField(max_length=500, blank=True)
    detected_type = models.CharField(max_length=16, blank=True)
    # Per-file ingest options (e.g. {"csv_text_column": "body"}) and facts found at upload (CSV columns).
    options = models.JSONField(default=dict, blank=True)
    facts = models.JSONField(default=dict, blank=True)
    duplicate_of = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "pk"]
        indexes = [models.Index(fields=["corpus", "status"])]

    def __str__(self) -> str:
        return self.name

    @property
    def is_stalled(self) -> bool:
        """An upload that stopped sending (browser closed, server restarted): shown and swept as failed."""
        stall = timedelta(seconds=settings.UPLOAD_STALL_SECONDS)
        return self.status == self.Status.UPLOADING and self.updated_at < timezone.now() - stall

    @property
    def can_resend(self) -> bool:
        return self.status in (self.Status.FAILED, self.Status.UPLOADING)


def organization_usage(organization: Organization) -> int:
    """Bytes of every org's stored (or in-flight, as announced) files: what the storage quota counts."""
    stored = CorpusFile.objects.for_org(organization).filter(status=CorpusFile.Status.STORED).aggregate(n=Sum("size"))
    uploading = (
        CorpusFile.objects.for_org(organization)
        .filter(status=CorpusFile.Status.UPLOADING)
        .aggregate(n=Sum("declared_size"))
    )
    return int(stored["n"] or 0) + int(uploading["n"] or 0)


def organization_quota(organization: Organization) -> int:
    if organization.storage_quota_bytes is not None:
        return int(organization.storage_quota_bytes)
    return int(settings.ORG_STORAGE_QUOTA_BYTES)


class CorpusVersion(TenantOwnedModel):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        INGESTING = "ingesting", "Ingesting"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    corpus = models.ForeignKey(Corpus, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    files = models.ManyToManyField(CorpusFile, through="VersionFile", related_name="versions")
    # Chunking and split as used (copied from settings when the version is made: a re-run reproduces it).
    config = models.JSONField(default=dict)
    # Fenced claims: every write of a run is conditioned on its attempt number.
    attempt = models.PositiveIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    files_done = models.PositiveIntegerField(default=0)
    files_total = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    stats = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-number"]
        constraints = [models.UniqueConstraint(fields=["corpus", "number"], name="one_version_number_per_corpus")]

    def __str__(self) -> str:
        return f"{self.corpus} v{self.number}"

    @property
    def is_active(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.INGESTING)

    @property
    def progress_fraction(self) -> float:
        return 0.0 if not self.files_total else min(1.0, self.files_done / self.files_total)

    @classmethod
    def claim(cls, version_id: int, lease_seconds: int) -> int | None:
        """Take the version for one run: from queued, or from ingesting whose lease expired (a dead worker).

        One conditional UPDATE, so two workers never both win; returns the new attempt number, or None.
        """
        now = timezone.now()
        claimable = Q(status=cls.Status.QUEUED) | Q(status=cls.Status.INGESTING, lease_expires_at__lt=now)
        updated = cls.objects.filter(claimable, pk=version_id).update(
            status=cls.Status.INGESTING,
            attempt=F("attempt") + 1,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=now,
            files_done=0,
            error="",
        )
        if updated == 0:
            return None
        return int(cls.objects.values_list("attempt", flat=True).get(pk=version_id))

    def fenced(self, attempt: int) -> models.QuerySet[CorpusVersion]:
        """This version's row, only while `attempt` still holds it (for conditional updates)."""
        return CorpusVersion.objects.filter(pk=self.pk, attempt=attempt, status=self.Status.INGESTING)


class VersionFile(models.Model):
    """One file as one version saw it: its verdict from that ingest."""

    class Verdict(models.TextChoices):
        PENDING = "pending", "Pending"
        OK = "ok", "OK"
        PARTIAL = "partial", "Partly used"
        FAILED = "failed", "Failed"
        DUPLICATE = "duplicate", "Duplicate"

    version = models.ForeignKey(CorpusVersion, on_delete=models.CASCADE, related_name="version_files")
    file = models.ForeignKey(CorpusFile, on_delete=models.CASCADE, related_name="version_entries")
    verdict = models.CharField(max_length=16, choices=Verdict.choices, default=Verdict.PENDING)
    message = models.CharField(max_length=1000, blank=True)
    detected_type = models.CharField(max_length=16, blank=True)
    details = models.JSONField(default=dict, blank=True)
    # Reports of an archive's members (nested), as the ingest library returned them.
    members = models.JSONField(default=list, blank=True)
    documents = models.PositiveIntegerField(default=0)
    chunks = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["file__name", "pk"]
        constraints = [models.UniqueConstraint(fields=["version", "file"], name="one_entry_per_file_per_version")]

    def __str__(self) -> str:
        return f"{self.file} in {self.version}: {self.verdict}"


class Document(models.Model):
    class Split(models.TextChoices):
        TRAIN = "train", "Train"
        HELDOUT = "heldout", "Held out"

    version = models.ForeignKey(CorpusVersion, on_delete=models.CASCADE, related_name="documents")
    file = models.ForeignKey(CorpusFile, on_delete=models.SET_NULL, null=True, related_name="+")
    name = models.CharField(max_length=1000)
    kind = models.CharField(max_length=16)
    split = models.CharField(max_length=8, choices=Split.choices, default=Split.TRAIN)
    characters = models.PositiveIntegerField(default=0)
    tokens = models.PositiveIntegerField(default=0)
    chunk_count = models.PositiveIntegerField(default=0)
    language = models.CharField(max_length=8, blank=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return self.name


class Chunk(models.Model):
    version = models.ForeignKey(CorpusVersion, on_delete=models.CASCADE, related_name="chunks")
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    position = models.PositiveIntegerField()
    text = models.TextField()
    tokens = models.PositiveIntegerField()
    # Denormalised from the document so a job reads one split with one indexed query.
    split = models.CharField(max_length=8, choices=Document.Split.choices, default=Document.Split.TRAIN)

    class Meta:
        ordering = ["document_id", "position"]
        constraints = [models.UniqueConstraint(fields=["document", "position"], name="one_chunk_per_document_position")]
        indexes = [models.Index(fields=["version", "split", "document", "position"])]

    def __str__(self) -> str:
        return f"{self.document} #{self.position}"


class Example(models.Model):
    """A question/answer or chat example found in JSONL: shown on the corpus page, usable as an eval set."""

    version = models.ForeignKey(CorpusVersion, on_delete=models.CASCADE, related_name="examples")
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="examples")
    kind = models.CharField(max_length=24)
    prompt = models.TextField()
    response = models.TextField()

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"{self.kind}: {self.prompt[:60]}"
