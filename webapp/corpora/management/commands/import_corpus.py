"""Headless bulk import: `python manage.py import_corpus --org SLUG --name NAME PATHS...`.

Files and folders (walked recursively) go through the same upload rules as the browser (limits, verdicts,
duplicates), each with a byte progress bar; then an ingest is queued (or run here with `--wait`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from webapp.corpora import services
from webapp.corpora.models import Corpus, CorpusFile, CorpusVersion
from webapp.tenants.models import Organization


class _Progress:
    """A file object that advances a tqdm bar as the storage backend reads it."""

    def __init__(self, handle: Any, bar: tqdm) -> None:
        self.handle, self.bar = handle, bar

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.bar.update(len(data))
        return data


class Command(BaseCommand):
    help = "Import files and folders into a corpus of an organization and ingest them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", type=Path, help="Files or folders (walked recursively).")
        parser.add_argument("--org", required=True, help="The organization's slug.")
        parser.add_argument(
            "--name", required=True, help="Corpus name; an existing corpus of that name gets the files."
        )
        parser.add_argument("--description", default="")
        parser.add_argument("--no-ingest", action="store_true", help="Only upload; ingest later.")
        parser.add_argument(
            "--wait", action="store_true", help="Run the ingest in this process instead of queuing it for a worker."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        org = Organization.objects.filter(slug=options["org"]).first()
        if org is None:
            raise CommandError(f"No organization with slug {options['org']!r}.")
        # The paths are checked before the corpus is made: a mistyped path leaves no empty corpus behind.
        items = list(self._files(options["paths"]))
        if not items:
            raise CommandError("No files found under the given paths.")
        corpus, created = Corpus.objects.get_or_create(
            organization=org, name=options["name"], defaults={"description": options["description"]}
        )
        self.stdout.write(f"{'Created' if created else 'Adding to'} corpus {corpus.name!r} (id {corpus.pk}).")
        failed = 0
        for path, name in tqdm(items, desc="files", unit="file", disable=len(items) < 2):
            size = path.stat().st_size
            with (
                path.open("rb") as handle,
                tqdm(total=size, desc=name[-40:], unit="B", unit_scale=True, leave=False) as bar,
            ):
                file = services.upload_file_object(
                    corpus, name=name, fileobj=_Progress(handle, bar), size=size, user=None
                )
            if file.status != CorpusFile.Status.STORED:
                failed += 1
                self.stdout.write(f"  {name}: {file.status}: {file.message}")
        self.stdout.write(f"Uploaded {len(items) - failed} of {len(items)} files.")
        if options["no_ingest"]:
            return
        try:
            version = services.request_ingest(corpus, user=None)
        except services.CorpusError as error:
            raise CommandError(str(error)) from error
        if not options["wait"]:
            self.stdout.write(f"Version {version.number} queued for ingest; a cpu worker will pick it up.")
            return
        from workers.tasks.ingest import ingest_corpus_version

        ingest_corpus_version(version.pk)
        version.refresh_from_db()
        if version.status != CorpusVersion.Status.READY:
            raise CommandError(f"Ingest failed: {version.error}")
        stats = version.stats
        self.stdout.write(
            f"Version {version.number} ready: {stats['documents']} documents, {stats['chunks']} chunks, "
            f"{stats['tokens']} tokens ({stats['heldout_documents']} documents held out)."
        )

    @staticmethod
    def _files(paths: list[Path]) -> Any:
        for path in paths:
            if path.is_dir():
                for child in sorted(p for p in path.rglob("*") if p.is_file()):
                    yield child, f"{path.name}/{child.relative_to(path).as_posix()}"
            elif path.is_file():
                yield path, path.name
            else:
                raise CommandError(f"{path} does not exist.")
