"""The expert registry and each organization's mixture.

- `Expert`: a named expert of one org (its slug is what the API's `model` names). It has versions; the mixture
  serves its *active* version, and rolling back makes an earlier version active again. An owner or admin can
  publish it as *shared*: other orgs then see its card, metrics and adapter in the catalog and may include it in
  their mixture — never its training text, unless the owner ticks `share_samples`.
- `ExpertVersion`: what one finished distillation job made — the exact base it was trained on, teacher, recipe,
  metrics, routing signature, and where its files lie (`artifact_location`: a directory on the shared data volume,
  or `s3://bucket/key` with S3 storage). The inference engine knows a version by `engine_id`.
- `Mixture`: an org's router settings and the shared experts of other orgs it opted into. Its own active
  experts are members without asking.
- `UsageCounter`: tokens in and out per org, expert and day (the API and the playground meter every request).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.conf import settings
from django.db import models
from django.utils.text import slugify

from webapp.tenants.models import Organization, TenantOwnedModel

# Model names the API reserves: an expert never takes them as its slug.
RESERVED_SLUGS = frozenset({"moe", "base", "auto"})


class Expert(TenantOwnedModel):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DISABLED = "disabled", "Disabled"

    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=80, help_text="The name API clients pass as `model`.")
    description = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE, db_index=True)
    active_version = models.ForeignKey(
        "ExpertVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    shared = models.BooleanField(default=False, db_index=True, help_text="Listed in the catalog of every org.")
    shared_at = models.DateTimeField(null=True, blank=True)
    share_samples = models.BooleanField(
        default=False,
        help_text="When shared, also show the Q&A data it was taught and its best/worst samples.",
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["organization", "slug"], name="expert_slug_unique_per_org")]

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE

    @property
    def servable(self) -> bool:
        """Active, with an active version the engine can load."""
        return self.is_active and self.active_version_id is not None

    @classmethod
    def unique_slug(cls, organization: Organization, name: str) -> str:
        base = slugify(name)[:70] or "expert"
        if base in RESERVED_SLUGS:
            base = f"{base}-expert"
        slug, suffix = base, 2
        while cls.objects.filter(organization=organization, slug=slug).exists():
            slug, suffix = f"{base}-{suffix}", suffix + 1
        return slug

    def api_name(self, viewer: Organization) -> str:
        """The `model` name an org's API clients use: the slug for its own, `org-slug/slug` for shared ones."""
        if self.organization_id == viewer.pk:
            return self.slug
        return f"{self.organization.slug}/{self.slug}"


class ExpertVersion(TenantOwnedModel):
    expert = models.ForeignKey(Expert, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    job = models.ForeignKey(
        "jobs.DistillationJob", on_delete=models.SET_NULL, null=True, blank=True, related_name="expert_versions"
    )
    base_spec = models.CharField(max_length=500)
    base_hash = models.CharField(max_length=128, help_text="Content hash of the base weights it was trained on.")
    teacher_label = models.CharField(max_length=500, blank=True)
    recipe = models.CharField(max_length=8)
    metrics = models.JSONField(default=dict, blank=True)
    # The routing signature (embedder, dim, centroids, counts) as signature.json holds it.
    signature = models.JSONField(default=dict, blank=True)
    # Changes whenever the signature does: the engine re-reads a signature whose fingerprint it has not seen.
    signature_hash = models.CharField(max_length=64, blank=True)
    artifact_location = models.CharField(max_length=700, help_text="Directory path, or s3://bucket/key.")
    size_bytes = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-number"]
        constraints = [models.UniqueConstraint(fields=["expert", "number"], name="expert_version_number_unique")]

    def __str__(self) -> str:
        return f"{self.expert} v{self.number}"

    @property
    def engine_id(self) -> str:
        """The id the inference engine and the router know this version by (stable, never reused)."""
        return f"ev{self.pk}"

    def engine_ref(self, weight: float = 1.0) -> dict[str, Any]:
        return {
            "id": self.engine_id,
            "location": self.artifact_location,
            "weight": weight,
            "signature": self.signature_hash,
        }

    def set_signature(self, signature: dict[str, Any]) -> None:
        self.signature = signature
        encoded = json.dumps(signature, sort_keys=True, separators=(",", ":")).encode()
        self.signature_hash = hashlib.sha256(encoded).hexdigest()[:16] if signature else ""

    @property
    def signature_embedder(self) -> str:
        return str(self.signature.get("embedder", "")) if self.signature else ""


class Mixture(TenantOwnedModel):
    """An org's router settings and the shared experts it opted into (one per org, made on first use)."""

    top_k = models.PositiveSmallIntegerField(default=1, help_text="How many experts answer a query together.")
    temperature = models.FloatField(
        default=0.05, help_text="Softmax temperature over the cosine scores: lower gives the best expert more weight."
    )
    # The router's measured default (bench/route.py: 95 % of off-topic questions fall back, 10 % of on-topic).
    threshold = models.FloatField(
        default=0.26, help_text="Below this best cosine the query is off-topic for every expert."
    )
    fallback_to_base = models.BooleanField(
        default=True, help_text="Off-topic queries go to the base model (otherwise the closest experts answer)."
    )
    shared_experts = models.ManyToManyField(Expert, through="MixtureSharedExpert", related_name="+", blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization"], name="one_mixture_per_org")]

    def __str__(self) -> str:
        return f"Mixture of {self.organization}"

    def router_settings(self) -> dict[str, Any]:
        return {
            "top_k": self.top_k,
            "temperature": self.temperature,
            "threshold": self.threshold,
            "fallback_to_base": self.fallback_to_base,
        }


class MixtureSharedExpert(models.Model):
    mixture = models.ForeignKey(Mixture, on_delete=models.CASCADE, related_name="shared_memberships")
    expert = models.ForeignKey(Expert, on_delete=models.CASCADE, related_name="included_by")
    added_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["mixture", "expert"], name="shared_expert_once_per_mixture")]

    def __str__(self) -> str:
        return f"{self.expert} in {self.mixture}"


class UsageCounter(TenantOwnedModel):
    """Requests and tokens of one org on one day, per expert (`bucket` 'base' or 'expert:<id>')."""

    day = models.DateField()
    bucket = models.CharField(max_length=40)
    expert = models.ForeignKey(Expert, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-day", "bucket"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "day", "bucket"], name="one_usage_row_per_bucket_day")
        ]
