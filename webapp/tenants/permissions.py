"""The one permission table: which role may do what inside its organization.

docs/architecture.md renders the same table; a test keeps the two equal.
"""

from __future__ import annotations

from enum import StrEnum

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"


class Perm(StrEnum):
    """An action a role may take; the value is the name the docs table uses."""

    VIEW_ORG = "org.view"
    CHANGE_ORG = "org.change"
    DELETE_ORG = "org.delete"
    MANAGE_QUOTAS = "org.quotas"
    VIEW_MEMBERS = "members.view"
    MANAGE_MEMBERS = "members.manage"
    MANAGE_OWNERS = "members.manage_owners"
    VIEW_TEACHERS = "teachers.view"
    MANAGE_TEACHERS = "teachers.manage"
    MANAGE_TOKENS = "tokens.manage"
    MANAGE_WEBHOOKS = "webhooks.manage"
    PUBLISH_EXPERTS = "experts.publish"
    USE_CORPORA = "corpora.use"
    USE_JOBS = "jobs.use"
    USE_EXPERTS = "experts.use"
    USE_PLAYGROUND = "playground.use"
    VIEW_AUDIT_LOG = "audit.view"


_ALL = frozenset(Role)
_OWNER_ADMIN = frozenset({Role.OWNER, Role.ADMIN})
_OWNER = frozenset({Role.OWNER})

# Owner: everything. Admin: members (not owners), teachers and their secrets, API tokens, webhooks, publishing.
# Member: corpora, jobs, experts, playground, and read-only teachers.
PERMISSIONS: dict[Perm, frozenset[Role]] = {
    Perm.VIEW_ORG: _ALL,
    Perm.CHANGE_ORG: _OWNER,
    Perm.DELETE_ORG: _OWNER,
    Perm.MANAGE_QUOTAS: _OWNER,
    Perm.VIEW_MEMBERS: _ALL,
    Perm.MANAGE_MEMBERS: _OWNER_ADMIN,
    Perm.MANAGE_OWNERS: _OWNER,
    Perm.VIEW_TEACHERS: _ALL,
    Perm.MANAGE_TEACHERS: _OWNER_ADMIN,
    Perm.MANAGE_TOKENS: _OWNER_ADMIN,
    Perm.MANAGE_WEBHOOKS: _OWNER_ADMIN,
    Perm.PUBLISH_EXPERTS: _OWNER_ADMIN,
    Perm.USE_CORPORA: _ALL,
    Perm.USE_JOBS: _ALL,
    Perm.USE_EXPERTS: _ALL,
    Perm.USE_PLAYGROUND: _ALL,
    Perm.VIEW_AUDIT_LOG: _OWNER,
}


def role_allows(role: str | None, perm: Perm) -> bool:
    """True when `role` (None: not a member) may take `perm`."""
    return role is not None and Role(role) in PERMISSIONS[perm]
