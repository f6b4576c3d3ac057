"""`manage.py import_corpus`: files and folders into a corpus, through the same rules as the browser."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from tests.webapp.conftest import Cast
from tests.webapp.corpora.conftest import stored_files
from webapp.corpora.models import Corpus, CorpusVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """handbook/leave.md, handbook/policies/expenses.txt, handbook/empty.txt."""
    root = tmp_path / "import" / "handbook"
    (root / "policies").mkdir(parents=True)
    (root / "leave.md").write_bytes(b"# Leave\n\n25 days a year.\n")
    (root / "policies" / "expenses.txt").write_bytes(b"Expenses are reimbursed monthly.\n")
    (root / "empty.txt").write_bytes(b"")
    return root


def run(*args: str) -> str:
    out = StringIO()
    call_command("import_corpus", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_it_imports_a_folder_keeping_its_folder_names(cast: Cast, docs: Path, media_root: Path) -> None:
    single = docs.parent / "faq.txt"
    single.write_bytes(b"Ask HR.\n")
    output = run("--org", cast.org.slug, "--name", "X", "--no-ingest", str(docs), str(single))
    corpus = Corpus.objects.get(name="X")
    assert corpus.organization == cast.org
    files = {f.name: f for f in corpus.files.all()}
    assert {name: f.status for name, f in files.items()} == {
        "handbook/empty.txt": "failed",
        "handbook/leave.md": "stored",
        "handbook/policies/expenses.txt": "stored",
        "faq.txt": "stored",
    }
    assert stored_files(media_root) == {
        files["handbook/leave.md"].storage_name: b"# Leave\n\n25 days a year.\n",
        files["handbook/policies/expenses.txt"].storage_name: b"Expenses are reimbursed monthly.\n",
        files["faq.txt"].storage_name: b"Ask HR.\n",
    }
    assert f"Created corpus 'X' (id {corpus.pk})." in output
    assert "  handbook/empty.txt: failed: The file is empty." in output
    assert "Uploaded 3 of 4 files." in output
    assert not CorpusVersion.objects.exists()


def test_it_adds_to_an_existing_corpus_of_that_name(cast: Cast, corpus: Corpus, docs: Path) -> None:
    output = run("--org", cast.org.slug, "--name", corpus.name, "--no-ingest", str(docs / "leave.md"))
    assert f"Adding to corpus 'Handbook' (id {corpus.pk})." in output
    assert list(corpus.files.values_list("name", "status")) == [("leave.md", "stored")]
    assert Corpus.objects.count() == 1


def test_it_queues_an_ingest_unless_told_not_to(
    cast: Cast, docs: Path, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        output = run("--org", cast.org.slug, "--name", "X", str(docs))
    version = CorpusVersion.objects.get()
    assert (version.number, version.status, version.files_total) == (1, "queued", 2)
    assert len(callbacks) == 1
    assert "Version 1 queued for ingest; a cpu worker will pick it up." in output


def test_it_refuses_an_unknown_org(cast: Cast, docs: Path) -> None:
    with pytest.raises(CommandError) as raised:
        run("--org", "nope", "--name", "X", "--no-ingest", str(docs))
    assert str(raised.value) == "No organization with slug 'nope'."
    assert not Corpus.objects.exists()


def test_it_refuses_a_path_that_does_not_exist(cast: Cast, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(CommandError) as raised:
        run("--org", cast.org.slug, "--name", "X", "--no-ingest", str(missing))
    assert str(raised.value) == f"{missing} does not exist."
    assert not Corpus.objects.exists()


def test_it_refuses_a_folder_without_files(cast: Cast, tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    with pytest.raises(CommandError) as raised:
        run("--org", cast.org.slug, "--name", "X", "--no-ingest", str(tmp_path / "nothing"))
    assert str(raised.value) == "No files found under the given paths."
    assert not Corpus.objects.exists()
