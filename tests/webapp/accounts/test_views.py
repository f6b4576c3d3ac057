from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from django.urls import reverse

from tests.webapp.conftest import PASSWORD, Cast
from webapp.tenants.models import AuditEvent, Membership
from webapp.tenants.permissions import Role

pytestmark = pytest.mark.django_db


def test_it_signs_up_a_user_as_owner_of_a_new_org() -> None:
    client = Client()
    response = client.post(
        reverse("accounts:signup"),
        {
            "username": "dora",
            "email": "dora@example.com",
            "password1": PASSWORD,
            "password2": PASSWORD,
            "organization_name": "Initech",
        },
    )
    assert response.status_code == 302
    membership = Membership.objects.get(user__username="dora")
    assert membership.role == Role.OWNER
    assert membership.organization.name == "Initech"
    assert "Initech" in client.get(reverse("core:home")).content.decode()


def test_it_keeps_the_signup_form_and_names_the_problem(cast: Cast) -> None:
    response = Client().post(
        reverse("accounts:signup"),
        {
            "username": "dora",
            "email": "olivia@example.com",
            "password1": PASSWORD,
            "password2": PASSWORD,
            "organization_name": "Initech",
        },
    )
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert not get_user_model().objects.filter(username="dora").exists()


def test_it_logs_in_and_out_and_audits_both(cast: Cast) -> None:
    client = Client()
    response = client.post(reverse("accounts:login"), {"username": "mia", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get(reverse("tenants:settings")).status_code == 200
    client.post(reverse("accounts:logout"))
    assert client.get(reverse("tenants:settings")).status_code == 302
    actions = list(AuditEvent.objects.for_org(cast.org).filter(actor_name="mia").values_list("action", flat=True))
    assert "auth.login" in actions
    assert "auth.logout" in actions


def test_it_audits_failed_logins_without_an_org(cast: Cast) -> None:
    response = Client().post(reverse("accounts:login"), {"username": "mia", "password": "wrong"})
    assert response.status_code == 200
    event = AuditEvent.objects.get(action=AuditEvent.Action.LOGIN_FAILED)
    assert event.organization is None
    assert event.target == "mia"


def test_it_changes_a_password(cast: Cast) -> None:
    client = cast.client_for("member")
    response = client.post(
        reverse("accounts:password_change"),
        {
            "old_password": PASSWORD,
            "new_password1": "another-long-pass-77",
            "new_password2": "another-long-pass-77",
        },
    )
    assert response.status_code == 302
    assert Client().login(username="mia", password="another-long-pass-77")
    assert AuditEvent.objects.filter(action=AuditEvent.Action.PASSWORD_CHANGED, actor_name="mia").exists()


def test_it_resets_a_password_through_the_emailed_link(cast: Cast) -> None:
    client = Client()
    client.post(reverse("accounts:password_reset"), {"email": "mia@example.com"})
    assert len(mail.outbox) == 1
    link = re.search(r"http://testserver(/accounts/password/reset/\S+)", mail.outbox[0].body)
    assert link is not None
    form_page = client.get(link.group(1), follow=True)
    assert "Choose a new password" in form_page.content.decode()
    client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": "reset-long-pass-99", "new_password2": "reset-long-pass-99"},
    )
    assert Client().login(username="mia", password="reset-long-pass-99")


def test_it_sends_no_reset_email_for_an_unknown_address(cast: Cast) -> None:
    response = Client().post(reverse("accounts:password_reset"), {"email": "nobody@example.com"})
    assert response.status_code == 302  # same answer as for a known address: no account enumeration
    assert mail.outbox == []
