"""Membership rules that span several rows (last owner, admins and owners), in one place."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q

from webapp.tenants.models import AuditEvent, Membership, Organization
from webapp.tenants.permissions import Perm, Role


class MembershipError(ValueError):
    """A membership change the rules refuse; the message is shown to the user."""


def _require_may_touch(actor: Membership, role: str) -> None:
    # Admins manage members and admins; only owners grant, change or remove the owner role.
    if role == Role.OWNER and not actor.allows(Perm.MANAGE_OWNERS):
        raise MembershipError("Only an owner can add, change or remove owners.")


def add_member(*, actor: Membership, identifier: str, role: str, ip: str | None = None) -> Membership:
    """Add an existing user, found by username or email, to the actor's organization."""
    _require_may_touch(actor, role)
    identifier = identifier.strip()
    user_model = get_user_model()
    matches = list(user_model.objects.filter(Q(username__iexact=identifier) | Q(email__iexact=identifier))[:2])
    if not matches:
        raise MembershipError(f"No user with username or email “{identifier}”. They need to sign up first.")
    if len(matches) > 1:
        raise MembershipError(f"Several users match “{identifier}”; use their username.")
    user = matches[0]
    org = actor.organization
    if Membership.objects.filter(organization=org, user=user).exists():
        raise MembershipError(f"{user.get_username()} is already a member of {org.name}.")
    membership = Membership.objects.create(organization=org, user=user, role=role)
    AuditEvent.record(
        org,
        actor.user,
        AuditEvent.Action.MEMBER_ADDED,
        target=user.get_username(),
        detail={"role": role},
        ip_address=ip,
    )
    return membership


@transaction.atomic
def change_role(*, actor: Membership, target: Membership, role: str, ip: str | None = None) -> Membership:
    _require_may_touch(actor, target.role)
    _require_may_touch(actor, role)
    if target.role == Role.OWNER and role != Role.OWNER:
        _refuse_losing_last_owner(target.organization)
    old = target.role
    target.role = role
    target.save(update_fields=["role"])
    AuditEvent.record(
        target.organization,
        actor.user,
        AuditEvent.Action.MEMBER_ROLE_CHANGED,
        target=target.user.get_username(),
        detail={"from": old, "to": role},
        ip_address=ip,
    )
    return target


@transaction.atomic
def remove_member(*, actor: Membership, target: Membership, ip: str | None = None) -> None:
    """Remove `target`; anyone may leave, but an org always keeps at least one owner."""
    if target.pk != actor.pk:
        if not actor.allows(Perm.MANAGE_MEMBERS):
            raise MembershipError("Your role cannot remove members.")
        _require_may_touch(actor, target.role)
    if target.role == Role.OWNER:
        _refuse_losing_last_owner(target.organization)
    username = target.user.get_username()
    target.delete()
    AuditEvent.record(target.organization, actor.user, AuditEvent.Action.MEMBER_REMOVED, target=username, ip_address=ip)


def _refuse_losing_last_owner(org: Organization) -> None:
    # Lock the owner rows so two concurrent demotions cannot both see "two owners".
    owners = list(Membership.objects.select_for_update().filter(organization=org, role=Role.OWNER))
    if len(owners) <= 1:
        raise MembershipError("An organization needs at least one owner: make someone else owner first.")


@transaction.atomic
def delete_organization(*, actor: Any, org: Organization, ip: str | None = None) -> None:
    # The org's own audit log goes with it; this org-less row keeps the deletion on record for staff.
    AuditEvent.record(None, actor, AuditEvent.Action.ORG_DELETED, target=f"{org.name} ({org.slug})", ip_address=ip)
    org.delete()
