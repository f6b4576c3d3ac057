"""Organizations (the tenants), their members, API tokens and audit log."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.text import slugify

from webapp.tenants.permissions import Perm, Role, role_allows


class Organization(models.Model):
    """A company using Distillery. Everything a tenant owns points here (see TenantOwnedModel)."""

    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=140, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # None: the platform default from settings applies. Only owners change these.
    storage_quota_bytes = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Storage limit for this organization; empty uses the platform default.",
    )
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="organizations")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @classmethod
    @transaction.atomic
    def create_with_owner(cls, *, name: str, owner: Any) -> Organization:
        org = cls.objects.create(name=name, slug=cls._unique_slug(name))
        Membership.objects.create(organization=org, user=owner, role=Role.OWNER)
        AuditEvent.record(org, owner, AuditEvent.Action.ORG_CREATED, target=org.name)
        return org

    @classmethod
    def _unique_slug(cls, name: str) -> str:
        base = slugify(name)[:120] or "org"
        slug, suffix = base, 2
        while cls.objects.filter(slug=slug).exists():
            slug, suffix = f"{base}-{suffix}", suffix + 1
        return slug

    def role_of(self, user: Any) -> str | None:
        if not getattr(user, "is_authenticated", False):
            return None
        return self.memberships.filter(user=user).values_list("role", flat=True).first()

    def owner_count(self) -> int:
        return self.memberships.filter(role=Role.OWNER).count()


class TenantQuerySet(QuerySet):
    def for_org(self, organization: Organization | None) -> TenantQuerySet:
        """The one scoping helper: only rows of `organization` (none when there is no current org)."""
        if organization is None:
            return self.none()
        return self.filter(organization=organization)


class TenantOwnedModel(models.Model):
    """Base of every tenant-owned model: it carries its org and scopes with `.objects.for_org(org)`."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")

    objects = TenantQuerySet.as_manager()

    class Meta:
        abstract = True


class Membership(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "user"], name="one_membership_per_org")]
        ordering = ["user__username"]

    def __str__(self) -> str:
        return f"{self.user} ({self.role}) in {self.organization}"

    def allows(self, perm: Perm) -> bool:
        return role_allows(self.role, perm)


class ApiToken(TenantOwnedModel):
    """A per-org bearer token for the REST API. Only its SHA-256 is stored; the plaintext is shown once.

    Tokens are 256-bit random strings, so an unsalted SHA-256 cannot be brute-forced and lets the API find a
    token with one indexed lookup (the scheme GitHub and Stripe use), unlike a slow salted password hash.
    """

    PREFIX = "dst_"
    # last_used_at is written at most this often, so a busy API client does not write on every request.
    LAST_USED_RESOLUTION = timedelta(minutes=1)

    class Scope(models.TextChoices):
        # Least privilege for what ships inside an app: a leaked models-only token reads or changes no corpus,
        # job or expert (OpenAI's restricted keys, GitHub's fine-grained tokens).
        FULL = "full", "Full access: corpora, jobs, experts and the models"
        MODELS = "models", "Models only: chat and completions, for an app that queries the experts"

    name = models.CharField(max_length=100)
    scope = models.CharField(
        max_length=16,
        choices=Scope.choices,
        default=Scope.FULL,
        help_text="What the token may call: everything, or only the OpenAI-compatible API (/v1/).",
    )
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    # The first characters, shown in lists so a user can tell tokens apart; useless for authentication.
    display_prefix = models.CharField(max_length=16, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.display_prefix}…)"

    @staticmethod
    def hash_token(plaintext: str) -> str:
        return hashlib.sha256(plaintext.encode()).hexdigest()

    @classmethod
    def issue(
        cls, *, organization: Organization, name: str, created_by: Any, scope: str = Scope.FULL
    ) -> tuple[ApiToken, str]:
        """Create a token; returns the row and the plaintext, which is never retrievable again."""
        plaintext = cls.PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            organization=organization,
            name=name,
            scope=scope,
            created_by=created_by,
            token_hash=cls.hash_token(plaintext),
            display_prefix=plaintext[:10],
        )
        AuditEvent.record(
            organization, created_by, AuditEvent.Action.TOKEN_CREATED, target=token.name, detail={"scope": scope}
        )
        return token, plaintext

    @classmethod
    def authenticate(cls, plaintext: str) -> ApiToken | None:
        """The live token with this plaintext, or None. Records the use (throttled)."""
        if not plaintext.startswith(cls.PREFIX):
            return None
        token = (
            cls.objects.select_related("organization")
            .filter(token_hash=cls.hash_token(plaintext), revoked_at__isnull=True)
            .first()
        )
        if token is not None:
            now = timezone.now()
            if token.last_used_at is None or now - token.last_used_at > cls.LAST_USED_RESOLUTION:
                cls.objects.filter(pk=token.pk).update(last_used_at=now)
                token.last_used_at = now
        return token

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def revoke(self, *, by: Any) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])
            AuditEvent.record(self.organization, by, AuditEvent.Action.TOKEN_REVOKED, target=self.name)


class AuditEvent(models.Model):
    """A security-relevant action. Org-less rows (failed logins, deleted orgs) are visible to staff only."""

    class Action(models.TextChoices):
        LOGIN = "auth.login", "Signed in"
        LOGIN_FAILED = "auth.login_failed", "Failed sign-in"
        LOGOUT = "auth.logout", "Signed out"
        PASSWORD_CHANGED = "auth.password_changed", "Changed password"
        ORG_CREATED = "org.created", "Created the organization"
        ORG_UPDATED = "org.updated", "Changed organization settings"
        ORG_DELETED = "org.deleted", "Deleted the organization"
        MEMBER_ADDED = "member.added", "Added a member"
        MEMBER_ROLE_CHANGED = "member.role_changed", "Changed a member's role"
        MEMBER_REMOVED = "member.removed", "Removed a member"
        TOKEN_CREATED = "token.created", "Created an API token"
        TOKEN_REVOKED = "token.revoked", "Revoked an API token"
        WEBHOOK_CREATED = "webhook.created", "Added a webhook endpoint"
        WEBHOOK_CHANGED = "webhook.changed", "Changed a webhook endpoint"
        WEBHOOK_DELETED = "webhook.deleted", "Deleted a webhook endpoint"
        SECRET_CHANGED = "secret.changed", "Changed a secret"
        EXPERT_PUBLISHED = "expert.published", "Published an expert"
        EXPERT_WITHDRAWN = "expert.withdrawn", "Withdrew a shared expert"
        EXPERT_REGISTERED = "expert.registered", "Registered an expert version"
        EXPERT_CHANGED = "expert.changed", "Changed an expert"
        EXPERT_DELETED = "expert.deleted", "Deleted an expert"
        DELETED = "object.deleted", "Deleted an object"

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, null=True, blank=True, related_name="audit_events"
    )
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    # Kept as text so the record survives the actor's deletion.
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=40, choices=Action.choices)
    target = models.CharField(max_length=200, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor_name} {self.action} {self.target}"

    @classmethod
    def record(
        cls,
        organization: Organization | None,
        actor: Any,
        action: AuditEvent.Action,
        *,
        target: str = "",
        detail: dict[str, Any] | None = None,
        ip_address: str | None = None,
    ) -> AuditEvent:
        is_user = getattr(actor, "is_authenticated", False)
        return cls.objects.create(
            organization=organization,
            actor=actor if is_user else None,
            actor_name=actor.get_username() if is_user else "",
            action=action,
            target=target[:200],
            detail=detail or {},
            ip_address=ip_address,
        )
