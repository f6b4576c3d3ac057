"""Re-encrypt every stored secret under the first (newest) of FIELD_ENCRYPTION_KEYS.

Run it after putting a new key in front of the list; afterwards the old keys can be dropped. Idempotent.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from webapp.core.encryption import rotate


class Command(BaseCommand):
    help = "Re-encrypt stored secrets (teacher API keys) under the newest FIELD_ENCRYPTION_KEYS key."

    def handle(self, *args: Any, **options: Any) -> None:
        from webapp.jobs.models import Teacher

        rotated = 0
        with transaction.atomic():
            for teacher in Teacher.objects.select_for_update().exclude(api_key_encrypted=""):
                teacher.api_key_encrypted = rotate(teacher.api_key_encrypted)
                teacher.save(update_fields=["api_key_encrypted"])
                rotated += 1
        self.stdout.write(f"Re-encrypted {rotated} secret(s) under the newest key.")
