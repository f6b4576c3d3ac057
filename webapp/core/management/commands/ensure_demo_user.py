"""Create (or refresh) the demo login of a local run and print its credentials."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from webapp.tenants.models import Membership, Organization
from webapp.tenants.permissions import Role

DEMO_USERNAME = "demo"
DEMO_ORG_NAME = "Demo Company"


class Command(BaseCommand):
    help = "Create the demo user (staff, owner of a demo organization) and print its credentials."

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.IS_PRODUCTION:
            raise CommandError("Refusing to create a demo login in production.")
        password = self._password()
        user_model = get_user_model()
        user, created = user_model.objects.get_or_create(username=DEMO_USERNAME, defaults={"email": "demo@example.com"})
        # Staff, so the demo can open the health page and the admin.
        user.is_staff = True
        user.is_superuser = True
        user.set_password(password)
        user.save()
        if not Membership.objects.filter(user=user).exists():
            Organization.create_with_owner(name=DEMO_ORG_NAME, owner=user)
        Membership.objects.filter(user=user, organization__name=DEMO_ORG_NAME).update(role=Role.OWNER)
        self.stdout.write(
            self.style.SUCCESS(
                f"\n  Demo login {'created' if created else 'ready'}:  username: {DEMO_USERNAME}"
                f"   password: {password}\n"
            )
        )

    @staticmethod
    def _password() -> str:
        # Stable across restarts (so a browser's saved password keeps working), private to this DATA_DIR.
        path = settings.DATA_DIR / "demo-password.txt"
        if path.exists():
            return path.read_text().strip()
        password = secrets.token_urlsafe(12)
        path.write_text(password + "\n")
        path.chmod(0o600)
        return password
