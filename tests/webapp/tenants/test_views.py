"""Every organization view, for owner, admin, member and outsider (owner of another org)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.webapp.conftest import Cast
from webapp.tenants.models import ApiToken, AuditEvent, Membership, Organization
from webapp.tenants.permissions import Role

pytestmark = pytest.mark.django_db


def membership_of(cast: Cast, username: str) -> Membership:
    return Membership.objects.get(organization=cast.org, user__username=username)


# ------------------------------------------------------------------ read-only pages
@pytest.mark.parametrize(
    ("url_name", "allowed"),
    [
        ("tenants:settings", {"owner", "admin", "member", "outsider"}),
        ("tenants:members", {"owner", "admin", "member", "outsider"}),
        ("tenants:tokens", {"owner", "admin", "outsider"}),
        ("tenants:audit", {"owner", "outsider"}),
    ],
)
@pytest.mark.parametrize("who", ["owner", "admin", "member", "outsider"])
def test_it_shows_org_pages_only_to_roles_allowed(cast: Cast, url_name: str, allowed: set[str], who: str) -> None:
    response = cast.client_for(who).get(reverse(url_name))
    assert response.status_code == (200 if who in allowed else 403)


@pytest.mark.parametrize("url_name", ["tenants:settings", "tenants:members", "tenants:tokens", "tenants:audit"])
def test_it_sends_anonymous_visitors_to_login(cast: Cast, url_name: str) -> None:
    response = cast.client_for("anonymous").get(reverse(url_name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("accounts:login"))


def test_it_sends_a_user_without_org_to_create_one(cast: Cast) -> None:
    from django.test import Client

    from tests.webapp.conftest import make_user

    client = Client()
    client.force_login(make_user("newbie"))
    response = client.get(reverse("tenants:members"))
    assert response.status_code == 302
    assert response["Location"] == reverse("tenants:create")


def test_it_lists_only_the_current_orgs_members(cast: Cast) -> None:
    # Queries: session, user, membership (middleware), members list, user's orgs for the switcher (nav).
    page = cast.client_for("outsider").get(reverse("tenants:members")).content.decode()
    assert "oscar" in page
    assert "olivia" not in page
    assert "mia" not in page


def test_it_keeps_the_member_list_query_count_flat(cast: Cast, django_assert_max_num_queries) -> None:  # type: ignore[no-untyped-def]
    client = cast.client_for("owner")
    client.get(reverse("tenants:members"))
    for index in range(5):
        from tests.webapp.conftest import make_user

        Membership.objects.create(organization=cast.org, user=make_user(f"extra{index}"))
    # session, user, current membership, members + users (one join), switcher memberships, savepoints.
    with django_assert_max_num_queries(8):
        assert client.get(reverse("tenants:members")).status_code == 200


# ------------------------------------------------------------------ org settings
@pytest.mark.parametrize(("who", "status"), [("owner", 302), ("admin", 403), ("member", 403)])
def test_it_lets_only_owners_rename_the_org(cast: Cast, who: str, status: int) -> None:
    response = cast.client_for(who).post(reverse("tenants:settings"), {"section": "org", "org-name": "Acme 2"})
    assert response.status_code == status
    cast.org.refresh_from_db()
    assert (cast.org.name == "Acme 2") is (status == 302)


@pytest.mark.parametrize(("who", "status"), [("owner", 302), ("admin", 403), ("member", 403)])
def test_it_lets_only_owners_set_quotas(cast: Cast, who: str, status: int) -> None:
    response = cast.client_for(who).post(
        reverse("tenants:settings"), {"section": "quota", "quota-storage_quota_bytes": "1000"}
    )
    assert response.status_code == status
    cast.org.refresh_from_db()
    assert (cast.org.storage_quota_bytes == 1000) is (status == 302)


def test_it_keeps_the_form_and_explains_a_bad_quota(cast: Cast) -> None:
    response = cast.client_for("owner").post(
        reverse("tenants:settings"), {"section": "quota", "quota-storage_quota_bytes": "lots"}
    )
    assert response.status_code == 200
    assert "“lots” is not a size: write a number and a unit, e.g. 20 GB or 500 MB." in response.content.decode()
    response = cast.client_for("owner").post(
        reverse("tenants:settings"), {"section": "quota", "quota-storage_quota_bytes": "3 parsecs"}
    )
    assert "Unknown unit “parsecs”: use B, KB, MB, GB or TB." in response.content.decode()
    cast.org.refresh_from_db()
    assert cast.org.storage_quota_bytes is None


def test_it_takes_a_quota_in_the_units_the_pages_show_and_shows_it_back(cast: Cast) -> None:
    client = cast.client_for("owner")
    client.post(reverse("tenants:settings"), {"section": "quota", "quota-storage_quota_bytes": "1.5 GB"})
    cast.org.refresh_from_db()
    assert cast.org.storage_quota_bytes == 1536 * 2**20
    page = client.get(reverse("tenants:settings")).content.decode()
    assert 'value="1536 MB"' in page  # the exact size, in a unit it parses back from
    client.post(reverse("tenants:settings"), {"section": "quota", "quota-storage_quota_bytes": ""})
    cast.org.refresh_from_db()
    assert cast.org.storage_quota_bytes is None  # empty: the platform default again


@pytest.mark.parametrize(("who", "status"), [("admin", 403), ("member", 403)])
def test_it_refuses_org_deletion_to_non_owners(cast: Cast, who: str, status: int) -> None:
    response = cast.client_for(who).post(reverse("tenants:delete"), {"confirm_name": "Acme"})
    assert response.status_code == status
    assert Organization.objects.filter(pk=cast.org.pk).exists()


def test_it_deletes_the_org_only_with_its_exact_name(cast: Cast) -> None:
    client = cast.client_for("owner")
    client.post(reverse("tenants:delete"), {"confirm_name": "acme"})
    assert Organization.objects.filter(pk=cast.org.pk).exists()
    client.post(reverse("tenants:delete"), {"confirm_name": "Acme"})
    assert not Organization.objects.filter(pk=cast.org.pk).exists()
    assert AuditEvent.objects.filter(organization=None, action=AuditEvent.Action.ORG_DELETED).exists()


# ------------------------------------------------------------------ members
@pytest.mark.parametrize(("who", "status"), [("owner", 302), ("admin", 302), ("member", 403)])
def test_it_lets_owners_and_admins_add_members(cast: Cast, who: str, status: int) -> None:
    from tests.webapp.conftest import make_user

    make_user("newbie")
    response = cast.client_for(who).post(
        reverse("tenants:members"), {"identifier": "newbie@example.com", "role": "member"}
    )
    assert response.status_code == status
    assert Membership.objects.filter(organization=cast.org, user__username="newbie").exists() is (status == 302)


def test_it_explains_an_unknown_user_when_adding(cast: Cast) -> None:
    response = cast.client_for("owner").post(reverse("tenants:members"), {"identifier": "ghost", "role": "member"})
    assert response.status_code == 200
    assert "No user with username or email" in response.content.decode()


def test_it_forbids_admins_from_adding_owners(cast: Cast) -> None:
    from tests.webapp.conftest import make_user

    make_user("newbie")
    response = cast.client_for("admin").post(reverse("tenants:members"), {"identifier": "newbie", "role": "owner"})
    assert "Only an owner" in response.content.decode()
    assert not Membership.objects.filter(user__username="newbie").exists()


@pytest.mark.parametrize(("who", "status"), [("owner", 302), ("admin", 302), ("member", 403), ("outsider", 404)])
def test_it_changes_roles_for_allowed_roles_and_hides_other_orgs(cast: Cast, who: str, status: int) -> None:
    target = membership_of(cast, "mia")
    response = cast.client_for(who).post(reverse("tenants:member-role", args=[target.pk]), {"role": "admin"})
    assert response.status_code == status
    target.refresh_from_db()
    assert (target.role == Role.ADMIN) is (status == 302)


def test_it_swaps_just_the_row_for_htmx_role_changes(cast: Cast) -> None:
    target = membership_of(cast, "mia")
    response = cast.client_for("owner").post(
        reverse("tenants:member-role", args=[target.pk]), {"role": "admin"}, headers={"HX-Request": "true"}
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert body.lstrip().startswith(f'<tr id="member-{target.pk}"')
    assert "<html" not in body


def test_it_shows_the_rule_in_the_row_when_htmx_demotes_the_last_owner(cast: Cast) -> None:
    target = membership_of(cast, "olivia")
    response = cast.client_for("owner").post(
        reverse("tenants:member-role", args=[target.pk]), {"role": "member"}, headers={"HX-Request": "true"}
    )
    assert "at least one owner" in response.content.decode()
    target.refresh_from_db()
    assert target.role == Role.OWNER


@pytest.mark.parametrize(("who", "status"), [("owner", 302), ("admin", 302), ("member", 403), ("outsider", 404)])
def test_it_removes_members_for_allowed_roles_and_hides_other_orgs(cast: Cast, who: str, status: int) -> None:
    target = membership_of(cast, "mia") if who != "member" else membership_of(cast, "adam")
    response = cast.client_for(who).post(reverse("tenants:member-remove", args=[target.pk]))
    assert response.status_code == status
    assert Membership.objects.filter(pk=target.pk).exists() is (status != 302)


def test_it_lets_a_member_leave(cast: Cast) -> None:
    target = membership_of(cast, "mia")
    response = cast.client_for("member").post(reverse("tenants:member-remove", args=[target.pk]))
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=target.pk).exists()


def test_it_forbids_admins_from_removing_owners(cast: Cast) -> None:
    target = membership_of(cast, "olivia")
    cast.client_for("admin").post(reverse("tenants:member-remove", args=[target.pk]))
    assert Membership.objects.filter(pk=target.pk).exists()


# ------------------------------------------------------------------ switching orgs
def test_it_switches_to_an_org_the_user_belongs_to(cast: Cast) -> None:
    Membership.objects.create(organization=cast.other_org, user=cast.member, role=Role.MEMBER)
    client = cast.client_for("member")
    client.post(reverse("tenants:switch"), {"organization": cast.other_org.pk})
    assert "Globex" in client.get(reverse("tenants:settings")).content.decode()
    client.post(reverse("tenants:switch"), {"organization": cast.org.pk})
    assert "<h1>Acme</h1>" in client.get(reverse("tenants:settings")).content.decode()


def test_it_answers_404_when_switching_to_someone_elses_org(cast: Cast) -> None:
    response = cast.client_for("outsider").post(reverse("tenants:switch"), {"organization": cast.org.pk})
    assert response.status_code == 404


# ------------------------------------------------------------------ tokens
def test_it_shows_a_new_token_once_and_stores_only_its_hash(cast: Cast) -> None:
    client = cast.client_for("admin")
    response = client.post(reverse("tenants:tokens"), {"name": "CI"})
    body = response.content.decode()
    token = ApiToken.objects.get(organization=cast.org, name="CI")
    plaintext = body.split('id="new-token">')[1].split("<")[0]
    assert plaintext.startswith("dst_")
    assert token.token_hash == ApiToken.hash_token(plaintext)
    assert plaintext not in client.get(reverse("tenants:tokens")).content.decode()


def test_it_issues_a_models_only_token_and_lists_each_tokens_access(cast: Cast) -> None:
    client = cast.client_for("admin")
    page = client.get(reverse("tenants:tokens")).content.decode()
    assert 'value="full" id="id_scope_0" checked' in page  # full access unless chosen otherwise
    client.post(reverse("tenants:tokens"), {"name": "Chat app", "scope": "models"})
    client.post(reverse("tenants:tokens"), {"name": "CI"})  # no choice sent: full access
    scopes = dict(ApiToken.objects.filter(organization=cast.org).values_list("name", "scope"))
    assert scopes == {"Chat app": "models", "CI": "full"}
    rows = client.get(reverse("tenants:tokens")).content.decode()
    assert "<td>models only</td>" in rows
    assert "<td>full</td>" in rows
    created = AuditEvent.objects.filter(organization=cast.org, action=AuditEvent.Action.TOKEN_CREATED)
    assert sorted(event.detail["scope"] for event in created) == ["full", "models"]


def test_it_renders_the_token_partial_for_htmx(cast: Cast) -> None:
    response = cast.client_for("owner").post(reverse("tenants:tokens"), {"name": "CI"}, headers={"HX-Request": "true"})
    body = response.content.decode()
    assert 'id="new-token"' in body
    assert "<html" not in body


@pytest.mark.parametrize(("who", "status"), [("owner", 302), ("admin", 302), ("member", 403), ("outsider", 404)])
def test_it_revokes_tokens_for_allowed_roles_and_hides_other_orgs(cast: Cast, who: str, status: int) -> None:
    token, _ = ApiToken.issue(organization=cast.org, name="CI", created_by=cast.owner)
    response = cast.client_for(who).post(reverse("tenants:token-revoke", args=[token.pk]))
    assert response.status_code == status
    token.refresh_from_db()
    assert (token.revoked_at is not None) is (status == 302)


# ------------------------------------------------------------------ audit log
def test_it_records_security_actions_in_the_orgs_audit_log(cast: Cast) -> None:
    client = cast.client_for("owner")
    client.post(reverse("tenants:tokens"), {"name": "CI"})
    token = ApiToken.objects.get(name="CI")
    client.post(reverse("tenants:token-revoke", args=[token.pk]))
    client.post(reverse("tenants:member-role", args=[membership_of(cast, "mia").pk]), {"role": "admin"})
    actions = set(AuditEvent.objects.for_org(cast.org).values_list("action", flat=True))
    assert {"token.created", "token.revoked", "member.role_changed", "org.created"} <= actions
    page = client.get(reverse("tenants:audit")).content.decode()
    assert "Revoked an API token" in page
    assert "Globex" not in page
