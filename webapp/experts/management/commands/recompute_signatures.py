"""Recompute experts' routing signatures with the platform embedder (after changing MOE_EMBEDDER)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from webapp.experts.models import ExpertVersion


class Command(BaseCommand):
    help = (
        "Recompute the routing signatures made with another embedder than MOE_EMBEDDER (on the cpu queue, or "
        "here with --now). Restart the engine with the same MOE_EMBEDDER."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--all", action="store_true", help="Every version, whatever its embedder.")
        parser.add_argument("--now", action="store_true", help="Compute in this process instead of queueing.")

    def handle(self, *args: Any, **options: Any) -> None:
        from workers.tasks.experts import recompute_signature

        versions = ExpertVersion.objects.order_by("pk")
        chosen = [
            version.pk
            for version in versions.only("pk", "signature")
            if options["all"] or version.signature_embedder != settings.MOE_EMBEDDER
        ]
        for version_id in chosen:
            if options["now"]:
                outcome = recompute_signature(version_id)
                self.stdout.write(f"version {version_id}: {outcome}")
            else:
                recompute_signature.delay(version_id)
        verb = "recomputed" if options["now"] else "queued"
        self.stdout.write(self.style.SUCCESS(f"{len(chosen)} signature(s) {verb} with {settings.MOE_EMBEDDER}."))
