from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.webapp.conftest import Cast
from webapp.tenants.models import ApiToken, AuditEvent, Membership, Organization

pytestmark = pytest.mark.django_db


def test_it_stores_only_the_hash_of_a_token(cast: Cast) -> None:
    token, plaintext = ApiToken.issue(organization=cast.org, name="CI", created_by=cast.owner)
    stored = ApiToken.objects.filter(pk=token.pk).values().get()
    assert plaintext not in {str(value) for value in stored.values()}
    assert stored["token_hash"] == ApiToken.hash_token(plaintext)
    assert plaintext.startswith(stored["display_prefix"])


def test_it_authenticates_a_live_token_and_refuses_a_revoked_one(cast: Cast) -> None:
    token, plaintext = ApiToken.issue(organization=cast.org, name="CI", created_by=cast.owner)
    assert ApiToken.authenticate(plaintext) == token
    token.revoke(by=cast.owner)
    assert ApiToken.authenticate(plaintext) is None


def test_it_refuses_unknown_and_malformed_tokens(cast: Cast) -> None:
    ApiToken.issue(organization=cast.org, name="CI", created_by=cast.owner)
    assert ApiToken.authenticate("dst_not-a-real-token") is None
    assert ApiToken.authenticate("") is None
    assert ApiToken.authenticate("Bearer something") is None


def test_it_records_last_use_at_most_once_a_minute(cast: Cast) -> None:
    token, plaintext = ApiToken.issue(organization=cast.org, name="CI", created_by=cast.owner)
    assert token.last_used_at is None
    first = ApiToken.authenticate(plaintext)
    assert first is not None
    first_use = first.last_used_at
    assert first_use is not None
    assert ApiToken.authenticate(plaintext).last_used_at == first_use  # type: ignore[union-attr]
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now() - timedelta(minutes=5))
    assert ApiToken.authenticate(plaintext).last_used_at > first_use  # type: ignore[union-attr]


def test_it_scopes_querysets_to_one_org(cast: Cast) -> None:
    ApiToken.issue(organization=cast.org, name="A", created_by=cast.owner)
    ApiToken.issue(organization=cast.other_org, name="B", created_by=cast.outsider)
    assert list(ApiToken.objects.for_org(cast.org).values_list("name", flat=True)) == ["A"]
    assert not ApiToken.objects.for_org(None).exists()


def test_it_gives_each_org_a_unique_slug(cast: Cast) -> None:
    twin = Organization.create_with_owner(name="Acme", owner=cast.member)
    assert twin.slug != cast.org.slug
    assert twin.slug.startswith("acme")
    assert Membership.objects.get(organization=twin).user == cast.member


def test_it_keeps_audit_records_after_the_actor_is_deleted(cast: Cast) -> None:
    ApiToken.issue(organization=cast.org, name="CI", created_by=cast.admin)
    cast.admin.delete()
    event = AuditEvent.objects.get(action=AuditEvent.Action.TOKEN_CREATED)
    assert event.actor is None
    assert event.actor_name == "adam"
